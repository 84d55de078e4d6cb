"""Channel statistics over the field of view, after the training preprocessing."""

import json

import numpy as np
import pytest
from PIL import Image

from drdemo.data import DatasetError, Sample, channel_stats, load_samples
from drdemo.data.stats import main as stats_main


def _disc(path, colour, size=(200, 160), radius=70):
    """A uniform disc on black, hard-edged: the only grey pixels are the resize's blur at its border."""
    yy, xx = np.mgrid[:size[1], :size[0]]
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[(xx - size[0] / 2) ** 2 + (yy - size[1] / 2) ** 2 <= radius ** 2] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return Sample(path.stem, path, 0, path.stem)


def test_uniform_disc_gives_its_colour_and_no_spread(tmp_path):
    mean, std = channel_stats([_disc(tmp_path / "a.png", (100, 50, 20))], input_size=96)
    # Border pixels blurred by the resize pull the mean down by ~1% and give a small spread.
    np.testing.assert_allclose(mean, np.array([100, 50, 20]) / 255, rtol=0.03)
    assert max(std) < 0.04


def test_black_surround_is_excluded(tmp_path):
    disc = _disc(tmp_path / "a.png", (100, 50, 20), size=(400, 400), radius=80)  # ~88% black in the file
    mean, _ = channel_stats([disc], input_size=96, crop_fov=False)  # even without the crop
    # All pixels would give 0.126 * 100/255; the disc alone gives 100/255 less its blurred border (~4% here).
    assert mean[0] == pytest.approx(100 / 255, rel=0.06)


def test_two_colours_stream_into_one_mean_and_std(tmp_path):
    samples = [_disc(tmp_path / "a.png", (100, 50, 20)), _disc(tmp_path / "b.png", (200, 100, 40))]
    mean, std = channel_stats(samples, input_size=96)
    np.testing.assert_allclose(mean, np.array([150, 75, 30]) / 255, rtol=0.03)
    np.testing.assert_allclose(std, np.array([50, 25, 10]) / 255, rtol=0.05)


def test_limit_takes_a_seeded_subset(tmp_path):
    samples = [_disc(tmp_path / f"{i}.png", (40 * i + 60, 50, 20), size=(40, 40), radius=15) for i in range(5)]
    one = channel_stats(samples, input_size=32, limit=1, seed=3)
    assert channel_stats(samples, input_size=32, limit=1, seed=3) == one
    reds = {round(channel_stats(samples, input_size=32, limit=1, seed=s)[0][0], 2) for s in range(6)}
    assert len(reds) > 1
    with pytest.raises(ValueError, match="limit must be positive"):
        channel_stats(samples, limit=0)


def test_all_black_images_are_an_error(tmp_path):
    path = tmp_path / "black.png"
    Image.new("RGB", (30, 30)).save(path)
    with pytest.raises(DatasetError, match="has a field of view"):
        channel_stats([Sample("black", path, 0, "black")], input_size=32)


def test_cli_prints_json(tmp_path, capsys):
    for grade, name in ((0, "a_left"), (2, "a_right")):
        _disc(tmp_path / str(grade) / f"{name}.png", (100, 50, 20))
    assert len(load_samples(tmp_path)) == 2
    assert stats_main(["--data", str(tmp_path), "--input-size", "64", "--limit", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 1 and len(result["mean"]) == 3 and len(result["std"]) == 3
    assert result["mean"][0] == pytest.approx(100 / 255, rel=0.03)


def test_cli_exits_2_on_bad_arguments(tmp_path, capsys):
    _disc(tmp_path / "0" / "a.png", (100, 50, 20))
    assert stats_main(["--data", str(tmp_path), "--limit", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: limit must be positive") and "Traceback" not in err
