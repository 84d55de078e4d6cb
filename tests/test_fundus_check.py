"""The fundus check's second opinion: the served model's feature score, and borderless crops never accepted silently."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from drdemo.data.synthetic import generate_fundus
from drdemo.intake.fundus_check import assess, second_opinion


def _borderless_warm_photo(seed: int = 0, size: int = 480) -> Image.Image:
    """An everyday photo made here: a warm, fur- or wood-like texture with dark streaks that fills the frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    streaks = np.sin(40 * (x + 0.3 * np.sin(6 * y)) + rng.normal(0, 0.3, (size, size))) > 0.8
    base = np.stack([200 - 40 * y, 110 - 30 * y, 50 - 10 * y], axis=-1) + rng.normal(0, 8, (size, size, 3))
    base[streaks] *= 0.45
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def _cropped_fundus() -> Image.Image:
    """A synthetic fundus photo cropped inside its field of view: a crop without the camera's border."""
    image = Image.fromarray(generate_fundus(np.random.SeedSequence([77, 1]), 2, size=512).image)
    return image.crop((150, 150, 362, 362)).resize((424, 424))


def test_a_borderless_everyday_photo_is_never_accepted_silently():
    assessment = assess(_borderless_warm_photo())
    for score, threshold in ((None, None), (3.0, 1.0)):
        checked = second_opinion(assessment, score, threshold)
        assert checked.outcome in ("warned", "refused")
        assert not checked.is_fundus


def test_a_borderless_crop_without_a_score_is_warned_and_asked_for_as_the_full_photo():
    assessment = assess(_cropped_fundus())
    if assessment.field_of_view != "no border" or assessment.outcome == "refused":
        pytest.skip(f"the crop was read as {assessment.field_of_view}, {assessment.outcome}")
    checked = second_opinion(assessment, None, None)
    assert checked.outcome == "warned" and "full photo" in checked.reason
    in_distribution = second_opinion(assessment, 0.8, 1.0)
    assert in_distribution.outcome == assessment.outcome and "feature distance 0.80" in in_distribution.details


def test_a_photo_far_from_the_training_photos_is_warned_whatever_the_rules_said():
    photo = Image.fromarray(generate_fundus(np.random.SeedSequence([77, 2]), 0, size=512).image)
    assessment = assess(photo)
    assert assessment.outcome != "refused"
    far = second_opinion(assessment, 2.5, 1.0)
    assert far.outcome == "warned" and "does not look like the photos this model learned from" in far.reason
    assert far.measurements["feature_distance"] == 2.5
    near = second_opinion(assessment, 0.5, 1.0)
    assert near.outcome == assessment.outcome and near.warnings == assessment.warnings


def test_a_refusal_stays_a_refusal():
    refused = assess(Image.new("RGB", (300, 300), (128, 128, 128)))
    assert refused.outcome == "refused"
    assert second_opinion(refused, 0.1, 1.0) is refused


def test_a_framed_photo_gets_more_room_than_a_borderless_crop_before_it_is_called_unlike_the_training_photos():
    """Between the threshold and FRAMED_MARGIN times it, a photo with the camera's frame stays as the rules said,
    while a crop without a border is warned and asked for as the full photo."""
    from drdemo.intake.fundus_check import FRAMED_MARGIN
    framed = assess(Image.fromarray(generate_fundus(np.random.SeedSequence([77, 2]), 0, size=512).image))
    assert framed.field_of_view != "no border" and framed.outcome != "refused"
    between = (1 + FRAMED_MARGIN) / 2
    kept = second_opinion(framed, between, 1.0)
    assert kept.outcome == framed.outcome and kept.measurements["feature_threshold"] == FRAMED_MARGIN
    assert second_opinion(framed, FRAMED_MARGIN + 0.1, 1.0).outcome == "warned"
    crop = replace(framed, field_of_view="no border")
    warned = second_opinion(crop, between, 1.0)
    assert warned.outcome == "warned" and "full photo" in warned.reason
    assert warned.measurements["feature_threshold"] == 1.0


def test_a_lines_orientation_is_read_at_its_strongest_scale_the_finest_of_equals():
    from drdemo.intake.measures import _orientation
    ones = np.ones((1, 3), np.float32)
    strength = [np.array([[1.0, 2.0, 5.0]], np.float32), np.array([[3.0, 2.0, 1.0]], np.float32)]
    # scale 0: a horizontal gradient pair (angle 0); scale 1: twice_dxy = dxx - dyy (angle pi/8)
    scales = [(strength[0], 0 * ones, ones), (strength[1], ones, ones)]
    angles = _orientation(scales, np.array([0, 1, 2]))
    assert np.allclose(angles, [np.pi / 8, 0.0, 0.0])
    assert np.allclose(_orientation(scales, np.array([0])), [np.pi / 8])



def test_a_crop_the_learned_check_confirmed_is_judged_by_the_model_score_as_a_framed_photo_is():
    """Once drdemo.intake.learned_check has measured a crop's fundus likelihood (and let it through), the model's own
    feature score only warns it beyond FRAMED_MARGIN times its threshold, as for a photo with the camera's frame."""
    from drdemo.intake.fundus_check import FRAMED_MARGIN
    framed = assess(Image.fromarray(generate_fundus(np.random.SeedSequence([77, 2]), 0, size=512).image))
    confirmed = replace(framed, field_of_view="no border",
                        measurements={**framed.measurements, "fundus_likelihood": 0.97})
    assert second_opinion(confirmed, None, None).outcome == framed.outcome
    kept = second_opinion(confirmed, (1 + FRAMED_MARGIN) / 2, 1.0)
    assert kept.outcome == framed.outcome and kept.measurements["feature_threshold"] == FRAMED_MARGIN


def test_a_refusal_is_the_most_cautious_check():
    from drdemo.intake.fundus_check import most_cautious
    framed = assess(Image.fromarray(generate_fundus(np.random.SeedSequence([77, 2]), 0, size=512).image))
    warned = replace(framed, outcome="warned", warnings=("one", "two"))
    refused = replace(framed, outcome="refused", warnings=())
    assert most_cautious([warned, refused, framed]) is refused
    assert most_cautious([framed, warned]) is warned


def test_a_crop_whose_red_is_clipped_is_not_called_uniform():
    """DRIVE's and CHASE_DB1's cameras clip red on a well-exposed retina: a crop of one has a flat brightest channel,
    but its green and blue still vary, so it is not refused as nearly uniform."""
    rng = np.random.default_rng(3)
    green = np.clip(90 + 25 * rng.standard_normal((300, 300)), 0, 255)
    picture = np.stack([np.full((300, 300), 255.0), green, green / 3], axis=-1).astype(np.uint8)
    assessment = assess(Image.fromarray(picture))
    assert "nearly uniform" not in assessment.reason
    assert assessment.measurements["brightness_spread"] > 10
    assert "nearly uniform" in assess(Image.new("RGB", (300, 300), (255, 90, 30))).reason


def test_an_assessment_carries_the_learned_check_s_view_and_compares_without_it():
    framed = assess(Image.fromarray(generate_fundus(np.random.SeedSequence([77, 2]), 0, size=512).image))
    assert framed.view is not None and framed.view.shape == (224, 224, 3)
    assert replace(framed, view=None) == framed
    assert assess(Image.new("RGB", (300, 300), (128, 128, 128))).view is None   # refused: nothing to look at
