"""Photos with lesion masks (IDRiD's segmentation layout, synthetic masks/): loading, absent parts, alignment."""

import numpy as np
import pytest
from PIL import Image
from real_data import IDRID_OVERLAP, IDRID_SEGMENTATION, needs_real_data

from drdemo.data import DatasetError, open_image
from drdemo.data.lesions import grading_copies, lesion_stack, lesion_union, load_lesion_samples, split_by_copies
from drdemo.data.synthetic import write_dataset
from drdemo.preprocess import prepare_image, prepare_mask

TRUTHS = "2. All Segmentation Groundtruths"
FOLDERS = {"MA": "1. Microaneurysms", "HE": "2. Haemorrhages", "EX": "3. Hard Exudates", "SE": "4. Soft Exudates",
           "OD": "5. Optic Disc"}


def _photo(path, size=(96, 64)):
    """A dark frame with a bright disc (a field of view) off-centre, so cropping moves the pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    ys, xs = np.mgrid[0:size[1], 0:size[0]]
    pixels[(xs - 40) ** 2 + (ys - 32) ** 2 < 28 ** 2] = (200, 90, 40)
    Image.fromarray(pixels).save(path)


def _mask(path, box, size=(96, 64)):
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    Image.fromarray(mask).save(path)  # mode "1", as IDRiD's .tif files are


def make_segmentation(root, lesions):
    """IDRiD's segmentation layout: {(split, image number): {lesion suffix: box}}."""
    for (split, number), masks in lesions.items():
        _photo(root / "1. Original Images" / split / f"IDRiD_{number}.jpg")
        for suffix, box in masks.items():
            _mask(root / TRUTHS / split / FOLDERS[suffix] / f"IDRiD_{number}_{suffix}.tif", box)
    return root


def test_idrid_masks_are_found_per_lesion_and_the_optic_disc_is_left_out(tmp_path):
    root = make_segmentation(tmp_path / "A. Segmentation", {
        ("a. Training Set", "01"): {"MA": (30, 30, 32, 32), "EX": (40, 20, 44, 24), "OD": (10, 10, 20, 20)},
        ("a. Training Set", "02"): {"OD": (10, 10, 20, 20)},             # no lesion: not a sample
        ("b. Testing Set", "55"): {"HE": (36, 30, 46, 40)}})
    samples = load_lesion_samples(root)
    assert [(s.image_id, sorted(s.masks), s.part) for s in samples] == [
        ("IDRiD_01", ["hard_exudate", "microaneurysm"], "train"), ("IDRiD_55", ["haemorrhage"], "test")]
    assert [s.image_id for s in load_lesion_samples(root, part="test")] == ["IDRiD_55"]
    union = lesion_union(samples[0], (96, 64))
    assert union.sum() == 4 + 16 and not union[10:20, 10:20].any()   # MA and EX, not the optic disc


def test_absent_lesion_folders_and_splits_mean_no_such_lesions(tmp_path):
    root = make_segmentation(tmp_path / "seg", {("a. Training Set", "01"): {"HE": (36, 30, 46, 40)}})
    _photo(root / "1. Original Images" / "b. Testing Set" / "IDRiD_55.jpg")   # a split without ground truths
    assert [s.image_id for s in load_lesion_samples(root)] == ["IDRiD_01"]
    with pytest.raises(DatasetError, match="no photo of the test part has a lesion mask"):
        load_lesion_samples(root, part="test")
    with pytest.raises(DatasetError, match="needs lesion masks"):
        load_lesion_samples(tmp_path / "seg" / "1. Original Images")


def test_the_stack_has_one_layer_per_lesion_type_in_order_and_refuses_masks_of_two_sizes(tmp_path):
    root = make_segmentation(tmp_path / "seg", {("a. Training Set", "01"): {"EX": (40, 20, 44, 24),
                                                                            "MA": (30, 30, 32, 32)}})
    sample = load_lesion_samples(root)[0]
    stack = lesion_stack(sample)
    assert stack.shape == (4, 64, 96) and stack.dtype == bool
    assert [int(layer.sum()) for layer in stack] == [4, 0, 16, 0]   # microaneurysm, haemorrhage, hard, soft exudate
    assert (stack.any(axis=0) == lesion_union(sample)).all()
    _mask(root / TRUTHS / "a. Training Set" / FOLDERS["MA"] / "IDRiD_01_MA.tif", (1, 1, 2, 2), size=(48, 32))
    with pytest.raises(DatasetError, match="differ in size"):
        lesion_stack(sample)


def test_a_mask_of_another_size_is_refused(tmp_path):
    root = make_segmentation(tmp_path / "seg", {("a. Training Set", "01"): {"MA": (1, 1, 2, 2)}})
    _mask(root / TRUTHS / "a. Training Set" / FOLDERS["MA"] / "IDRiD_01_MA.tif", (1, 1, 2, 2), size=(48, 32))
    sample = load_lesion_samples(root)[0]
    with pytest.raises(DatasetError, match="mask is 48 x 32 but its photo is 96 x 64"):
        lesion_union(sample, (96, 64))


def test_masks_stay_on_their_lesions_through_the_models_crop_and_resize(tmp_path):
    root = make_segmentation(tmp_path / "seg", {("a. Training Set", "01"): {"EX": (44, 28, 52, 36)}})
    photo = root / "1. Original Images" / "a. Training Set" / "IDRiD_01.png"
    (root / "1. Original Images" / "a. Training Set" / "IDRiD_01.jpg").unlink()
    _photo(photo)
    pixels = np.array(Image.open(photo))
    pixels[28:36, 44:52] = (250, 250, 60)        # the exudate the mask marks, drawn into the photo
    Image.fromarray(pixels).save(photo)
    sample = load_lesion_samples(root)[0]
    with Image.open(sample.path) as image:
        image.load()
    moved = prepare_mask(lesion_union(sample, image.size), image, 56)
    green = np.asarray(prepare_image(image, 56))[..., 1].astype(int)
    # the crop moves the disc (and the exudate) by 12 px; the mask moves with it, onto the yellow pixels
    assert moved.any() and green[moved].mean() > 200 and green[~moved].max() < 200


def test_masks_follow_a_photo_decoded_at_reduced_scale(tmp_path):
    """A camera-size photo is decoded smaller (drdemo.intake.decode, as the app does); its full-size masks
    are reduced with it, and a lesion of a few pixels is kept rather than averaged away."""
    size = (2600, 1800)
    root = make_segmentation(tmp_path / "seg", {})
    photo = root / "1. Original Images" / "a. Training Set" / "IDRiD_01.png"
    photo.parent.mkdir(parents=True)
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[400:1400, 800:1800] = (200, 90, 40)
    Image.fromarray(pixels).save(photo)
    _mask(root / TRUTHS / "a. Training Set" / FOLDERS["MA"] / "IDRiD_01_MA.tif", (1201, 901, 1203, 903), size)
    sample = load_lesion_samples(root)[0]
    image = open_image(sample.path)
    assert image.size == (1300, 900) and image.info["stored_size"] == size
    union = lesion_union(sample, image.size, image.info["stored_size"])
    assert union.shape == (900, 1300) and np.argwhere(union).tolist() == [[450, 600], [450, 601], [451, 600],
                                                                           [451, 601]]
    with pytest.raises(DatasetError, match="mask is 2600 x 1800 but its photo is 1300 x 900"):
        lesion_union(sample, image.size)


def test_synthetic_masks_load_as_lesion_samples(tmp_path):
    data = write_dataset(tmp_path / "synthetic", n=4, seed=3, size=128, workers=1, progress=False)
    samples = load_lesion_samples(data)
    assert samples and all(s.grade >= 1 and s.masks for s in samples)
    assert all(lesion_union(s).any() for s in samples)


@needs_real_data
def test_the_real_segmentation_set_and_its_overlap_table():
    samples = load_lesion_samples(IDRID_SEGMENTATION)
    copies, others = split_by_copies(samples, grading_copies(IDRID_OVERLAP))
    assert (len(samples), len(copies), len(others)) == (81, 59, 22)
    sample = samples[0]
    with Image.open(sample.path) as image:
        union = lesion_union(sample, image.size)
    assert union.shape == (850, 1280) and 0 < union.mean() < 0.2
