"""Training augmentation: the camera changes it makes, and what it must leave alone."""

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from drdemo.data.augment import REAL_AUGMENTATION, Augmentation, KeepSurround, UnevenIllumination
from drdemo.preprocess import fundus_mask


def _fundus(size=96):
    ys, xs = np.mgrid[0:size, 0:size]
    disc = (xs - size / 2) ** 2 + (ys - size / 2) ** 2 < (0.45 * size) ** 2
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[disc] = (180, 90, 40)
    return Image.fromarray(pixels), disc


def test_colour_changes_leave_the_camera_surround_black():
    image, disc = _fundus()
    torch.manual_seed(0)
    jittered = np.asarray(KeepSurround([T.ColorJitter(brightness=0.5, contrast=(0.3, 0.3))])(image))
    assert (jittered[~disc] == 0).all() and jittered[disc].mean() > 20
    unprotected = np.asarray(T.ColorJitter(contrast=(0.3, 0.3))(image))
    assert unprotected[~disc].min() > 0          # what KeepSurround is for: contrast lifts the black


def test_uneven_illumination_is_a_ramp_that_keeps_the_mean():
    image = Image.new("RGB", (64, 64), (100, 100, 100))
    torch.manual_seed(1)
    lit = np.asarray(UnevenIllumination(0.3)(image), dtype=float)[..., 0]
    assert lit.max() - lit.min() > 5 and abs(lit.mean() - 100) < 2


def test_clipping_the_field_of_view_blacks_out_top_and_bottom_only():
    image, disc = _fundus()
    torch.manual_seed(2)
    clipped = np.asarray(Augmentation(fov_clip=0.2, fov_clip_probability=1.0).build()(image)[0])
    band = int(np.argmax(clipped[:, 48].max(axis=1) > 0))
    assert 0 < band <= 0.2 * 96 and (clipped[:band] == 0).all() and (clipped[96 - band:] == 0).all()
    assert (clipped[40:56] == np.asarray(image)[40:56]).all()


def test_the_real_recipe_keeps_a_field_of_view_the_preprocessing_finds():
    image, disc = _fundus()
    augment = REAL_AUGMENTATION.build()
    for seed in range(8):
        torch.manual_seed(seed)
        out = np.asarray(augment(image)[0])
        inside = fundus_mask(out)
        assert 0.3 < inside.mean() < 0.9 and (out[~inside].max(axis=1) <= 12).mean() > 0.95


def test_lesion_masks_move_with_the_image_and_stay_binary():
    pixels = np.zeros((96, 96, 3), np.uint8)
    pixels[20:30, 60:70] = 255                       # a bright "lesion" off-centre
    masks = np.zeros((2, 96, 96), bool)
    masks[0, 20:30, 60:70] = True
    augment = Augmentation(rotation_degrees=180, scale=(0.9, 1.1), translate=0.05, horizontal_flip=True,
                           vertical_flip=True, fov_clip=0.1, fov_clip_probability=0.5).build()
    for seed in range(6):
        torch.manual_seed(seed)
        image, moved = augment(Image.fromarray(pixels), masks)
        bright = np.asarray(image)[..., 0] > 127
        assert moved.dtype == bool and moved.shape == masks.shape and not moved[1].any()
        overlap = (bright & moved[0]).sum() / max(1, (bright | moved[0]).sum())
        assert overlap > 0.7, (seed, overlap)
