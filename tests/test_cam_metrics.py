"""CAM scores on hand-made maps and masks, where the right answer is known."""

import numpy as np
import pytest

from drdemo.cam.metrics import energy_share, is_flat, pointing_hit, pointing_tolerance, random_map


def _mask(shape=(40, 40), box=(10, 20, 10, 20)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    top, bottom, left, right = box
    mask[top:bottom, left:right] = True
    return mask


def _peak(row: int, col: int, shape=(40, 40)) -> np.ndarray:
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    return np.exp(-((rows - row) ** 2 + (cols - col) ** 2) / 8.0)


def test_a_map_peaked_inside_the_mask_scores_1_outside_0():
    mask = _mask()
    assert pointing_hit(_peak(15, 15), mask) is True
    assert pointing_hit(_peak(35, 35), mask) is False


def test_tolerance_counts_a_near_miss_as_a_hit():
    mask = _mask()
    near = _peak(15, 24)  # 5 px right of the mask's last column (19)
    assert pointing_hit(near, mask, tolerance=0) is False
    assert pointing_hit(near, mask, tolerance=5) is True
    assert pointing_hit(near, mask, tolerance=4) is False


def test_a_flat_map_points_nowhere():
    mask = _mask()
    assert is_flat(np.zeros((40, 40))) and pointing_hit(np.zeros((40, 40)), mask) is False
    assert pointing_hit(np.full((40, 40), 0.3), mask) is False


def test_uniform_map_gets_the_masks_area_share():
    mask = _mask()
    assert energy_share(np.ones((40, 40)), mask) == pytest.approx(100 / 1600)
    assert energy_share(np.zeros((40, 40)), mask) == pytest.approx(100 / 1600)  # a zero map counts as uniform


def test_energy_inside_and_outside():
    mask = _mask()
    inside = np.where(mask, 1.0, 0.0)
    assert energy_share(inside, mask) == pytest.approx(1.0)
    assert energy_share(1.0 - inside, mask) == pytest.approx(0.0)
    half = np.where(mask, 1.0, 100 / 1500)   # equal mass inside (100) and outside (1500 * 100/1500)
    assert energy_share(half, mask) == pytest.approx(0.5)
    assert energy_share(inside - 5.0 * (1 - inside), mask) == pytest.approx(1.0)  # negative values carry no mass


def test_tolerance_scales_with_the_input_size():
    assert pointing_tolerance(224) == 15 and pointing_tolerance(448) == 30 and pointing_tolerance(192) == 13


def test_random_maps_are_smooth_seeded_and_in_range():
    a = random_map((50, 60), np.random.default_rng(1))
    b = random_map((50, 60), np.random.default_rng(1))
    assert a.shape == (50, 60) and np.array_equal(a, b) and 0 <= a.min() and a.max() <= 1
    assert np.abs(np.diff(a, axis=1)).max() < 0.2   # coarse noise, upsampled: no pixel-level jumps


def test_shapes_and_types_are_checked():
    with pytest.raises(ValueError, match="one shape"):
        energy_share(np.ones((4, 4)), np.ones((5, 5), bool))
    with pytest.raises(ValueError, match="boolean"):
        pointing_hit(np.ones((4, 4)), np.ones((4, 4)))


def test_the_centre_map_peaks_at_the_centre_of_the_field_of_view():
    from drdemo.cam.metrics import centre_map
    inside = np.zeros((60, 80), bool)
    inside[10:50, 30:70] = True                       # a field of view right of the frame's centre
    peak = np.unravel_index(int(np.argmax(centre_map((60, 80), inside))), (60, 80))
    assert peak == (29, 49) or peak == (30, 50)
    plain = centre_map((60, 80))
    assert np.unravel_index(int(np.argmax(plain)), (60, 80)) in {(29, 39), (29, 40), (30, 39), (30, 40)}
    assert plain.max() <= 1 and plain.min() > 0
