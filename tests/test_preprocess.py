"""Preprocessing: field-of-view crop, resize and normalisation (decoding is tests/test_decode.py)."""

import numpy as np
import torch
from PIL import Image

from drdemo.preprocess import crop_to_fundus, field_of_view_box, prepare_image, to_model_input


def test_normalisation_uses_the_given_statistics():
    image = Image.new("RGB", (300, 200), (255, 0, 128))
    batch = to_model_input(image, 64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    assert batch.shape == (1, 3, 64, 64)
    expected = torch.tensor([(1 - 0.5) / 0.25, (0 - 0.5) / 0.5, (128 / 255 - 0.5) / 1.0])
    assert torch.allclose(batch[0, :, 32, 32], expected, atol=1e-5)


def _fundus_like(size=(640, 480), centre=(330, 240), radius=200, colour=(180, 80, 40), background=(3, 2, 1)):
    """A bright disc (the field of view) on a near-black, slightly noisy surround."""
    rng = np.random.default_rng(0)
    pixels = np.clip(rng.normal(0, 2, (size[1], size[0], 3)) + background, 0, 255)
    yy, xx = np.mgrid[:size[1], :size[0]]
    pixels[(xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius ** 2] = colour
    return Image.fromarray(pixels.astype(np.uint8))


def test_field_of_view_box_finds_the_disc_within_a_probe_pixel():
    left, top, right, bottom = field_of_view_box(_fundus_like())
    tolerance = 640 / 256 + 1  # one pixel of the downscaled probe, plus rounding
    assert abs(left - 130) <= tolerance and abs(right - 531) <= tolerance
    assert abs(top - 40) <= tolerance and abs(bottom - 441) <= tolerance


def test_crop_to_fundus_makes_the_disc_fill_a_square():
    cropped = crop_to_fundus(_fundus_like())
    assert abs(cropped.width - 401) <= 4 and cropped.width == cropped.height
    centre = np.asarray(cropped)[cropped.height // 2, cropped.width // 2]
    assert tuple(centre) == (180, 80, 40)


def test_dark_photos_are_cropped_like_bright_ones():
    bright = field_of_view_box(_fundus_like())
    dark = field_of_view_box(_fundus_like(colour=(40, 18, 9)))
    assert all(abs(a - b) <= 640 / 256 + 1 for a, b in zip(dark, bright))  # within one probe pixel


def test_a_circle_clipped_at_top_and_bottom_is_padded_not_stretched():
    clipped = _fundus_like(size=(700, 400), centre=(350, 200), radius=260)  # the field of view overflows vertically
    cropped = crop_to_fundus(clipped)
    assert cropped.width == cropped.height
    array = np.asarray(cropped)
    assert array[2, cropped.width // 2].max() < 20        # black padding above the clipped circle
    assert tuple(array[cropped.height // 2, cropped.width // 2]) == (180, 80, 40)


def test_images_without_a_border_and_blank_frames_are_only_padded():
    borderless = Image.new("RGB", (300, 200), (150, 70, 30))
    assert crop_to_fundus(borderless).size == (300, 300)
    black = Image.new("RGB", (120, 90))
    assert field_of_view_box(black) is None
    assert crop_to_fundus(black).size == (120, 120)


def test_prepare_image_crops_only_when_asked():
    image = _fundus_like()
    cropped = np.asarray(prepare_image(image, 64, crop_fov=True))
    plain = np.asarray(prepare_image(image, 64, crop_fov=False))
    assert cropped.shape == plain.shape == (64, 64, 3)
    assert (cropped.max(axis=2) > 100).mean() > (plain.max(axis=2) > 100).mean() + 0.2


def _fundus(cast=(1.0, 1.0, 1.0), gain=1.0, size=160):
    """A textured orange disc on black; `cast` and `gain` scale the channels as another camera might."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:size, 0:size]
    disc = (xs - size / 2) ** 2 + (ys - size / 2) ** 2 < (0.45 * size) ** 2
    base = np.array([170.0, 80.0, 30.0]) * np.array(cast) * gain
    spots = (rng.random((size, size)) < 0.01)[..., None] * np.array([-60.0, -40.0, -10.0])
    pixels = np.where(disc[..., None], base + spots, 0.0)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), disc


def test_local_contrast_keeps_the_lesions_and_drops_the_camera():
    from drdemo.preprocess import local_contrast
    plain, disc = _fundus()
    bluish, _ = _fundus(cast=(0.8, 1.1, 1.6), gain=0.85)
    enhanced, other = (np.asarray(local_contrast(im, 0.0167), dtype=float) for im in (plain, bluish))
    inner = disc & (np.hypot(*np.mgrid[0:160, 0:160] - 80) < 60)
    # the colour cast and exposure are gone: the two cameras differ by < 1/10 of what the lesions change
    assert np.abs(enhanced - other)[inner].mean() < 0.1 * np.abs(enhanced - 128)[inner].max()
    assert np.abs(enhanced[inner].mean(axis=0) - 128).max() < 6      # the retina sits at mid-grey
    assert (enhanced[~disc] == 128).all()                            # so does the surround, with no rim
    assert enhanced[inner].min() < 60                                # the dark spots stand out


def test_local_contrast_off_is_the_plain_input():
    from drdemo.preprocess import local_contrast
    image, _ = _fundus()
    assert local_contrast(image, 0.0) is image
    with_contrast = to_model_input(image, 64, (0.5,) * 3, (0.2,) * 3, local_contrast_sigma=0.0167)
    without = to_model_input(image, 64, (0.5,) * 3, (0.2,) * 3)
    assert with_contrast.shape == without.shape and not torch.allclose(with_contrast, without)


def test_training_evaluation_and_the_app_feed_the_model_the_same_tensor():
    from drdemo.checkpoint import CheckpointConfig
    from drdemo.data.augment import eval_transform
    from drdemo.models import create_model
    from drdemo.predictor import Predictor
    from drdemo.preprocess import normalise, preprocess_kwargs
    image, _ = _fundus(size=200)
    config = CheckpointConfig.for_architecture(
        "resnet50", input_size=64, mean=(0.5, 0.5, 0.5), std=(0.1, 0.1, 0.1),
        preprocessing={"interpolation": "bicubic", "crop_fov": True, "local_contrast": 0.02})
    evaluation = to_model_input(image, **preprocess_kwargs(config))[0]
    kwargs = preprocess_kwargs(config)
    training = eval_transform(**kwargs)(image)
    predictor = Predictor(create_model("resnet50", num_classes=5), config)
    app = normalise(predictor.model_view(image), config.mean, config.std, config.preprocessing["local_contrast"])
    assert torch.equal(evaluation, training) and torch.equal(evaluation, app)
