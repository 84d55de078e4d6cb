"""Data set layouts: detection, loading, their error messages, task targets and the torch Dataset."""

import pytest
from PIL import Image
from real_data import IDRID_GRADING, needs_real_data

from drdemo.data import (
    DatasetError,
    FundusDataset,
    Sample,
    class_counts,
    detect_layout,
    load_samples,
    patient_of,
)


def _image(path, colour=(120, 60, 30), size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header] + [f"{a},{b}" for a, b in rows]) + "\n", encoding="utf-8")
    return path


def make_eyepacs(root, rows=(("10_left", 0), ("10_right", 2), ("13_left", 4)), folder="train", ext=".jpeg"):
    _csv(root / "trainLabels.csv", "image,level", rows)
    for image_id, _ in rows:
        _image(root / folder / f"{image_id}{ext}" if folder else root / f"{image_id}{ext}")
    return root


def make_aptos(root, rows=(("000c1434d8d7", 2), ("001639a390f0", 4), ("0024cdab0c1e", 1))):
    _csv(root / "train.csv", "id_code,diagnosis", rows)
    for image_id, _ in rows:
        _image(root / "train_images" / f"{image_id}.png")
    return root


def make_imagefolder(root, files=(("0", "a_left.png"), ("0", "a_right.jpg"), ("3", "b.png"))):
    for grade, name in files:
        _image(root / grade / name)
    return root


def make_synthetic(root, rows=(("00000_left", 1), ("00000_right", 1), ("00001_left", 3))):
    _csv(root / "labels.csv", "image,level", rows)
    for image_id, _ in rows:
        _image(root / "images" / f"{image_id}.jpeg")
    (root / "masks").mkdir()
    (root / "generator.json").write_text('{"generator": "drdemo.data.synthetic", "version": 1}')
    return root


# ------------------------------------------------------------------------------------------- layouts

def test_eyepacs_layout_is_detected_and_loaded(tmp_path):
    make_eyepacs(tmp_path)
    assert detect_layout(tmp_path) == "eyepacs"
    samples = load_samples(tmp_path)
    assert [s.image_id for s in samples] == ["10_left", "10_right", "13_left"]
    assert [s.grade for s in samples] == [0, 2, 4]
    assert [s.patient for s in samples] == ["10", "10", "13"]
    assert samples[0].path == tmp_path / "train" / "10_left.jpeg"


@pytest.mark.parametrize("folder", ["images", ""])
def test_eyepacs_images_may_sit_in_images_or_the_folder_itself(tmp_path, folder):
    make_eyepacs(tmp_path, folder=folder, ext=".png")
    assert len(load_samples(tmp_path, "eyepacs")) == 3


def test_eyepacs_accepts_any_csv_with_image_and_level(tmp_path):
    _csv(tmp_path / "notes.csv", "who,what", [("a", "b")])
    _csv(tmp_path / "testLabels.csv", "image,level,Usage", [])
    (tmp_path / "testLabels.csv").write_text("image,level,Usage\n1_left,3,Public\n")
    _image(tmp_path / "test" / "1_left.jpeg")
    _image(tmp_path / "1_left.tif")
    assert detect_layout(tmp_path) == "eyepacs"
    assert [(s.image_id, s.grade) for s in load_samples(tmp_path)] == [("1_left", 3)]


def test_eyepacs_prefers_train_labels(tmp_path):
    make_eyepacs(tmp_path)
    _csv(tmp_path / "aaa.csv", "image,level", [("99_left", 1)])
    assert len(load_samples(tmp_path)) == 3


def test_aptos_layout_is_detected_and_loaded(tmp_path):
    make_aptos(tmp_path)
    assert detect_layout(tmp_path) == "aptos"
    samples = load_samples(tmp_path)
    assert [(s.image_id, s.grade) for s in samples] == [("000c1434d8d7", 2), ("001639a390f0", 4),
                                                         ("0024cdab0c1e", 1)]
    assert all(s.patient == s.image_id for s in samples)
    assert samples[0].path.parent.name == "train_images"


def test_imagefolder_layout_is_detected_and_loaded(tmp_path):
    make_imagefolder(tmp_path)
    (tmp_path / "3" / "readme.txt").write_text("not an image")
    assert detect_layout(tmp_path) == "imagefolder"
    samples = load_samples(tmp_path)
    assert [(s.image_id, s.grade, s.patient) for s in samples] == [("a_left", 0, "a"), ("a_right", 0, "a"),
                                                                    ("b", 3, "b")]


def test_synthetic_layout_wins_over_eyepacs(tmp_path):
    make_synthetic(tmp_path)
    assert detect_layout(tmp_path) == "synthetic"
    samples = load_samples(tmp_path)
    assert [s.patient for s in samples] == ["00000", "00000", "00001"]
    assert load_samples(tmp_path, "eyepacs") == samples  # same csv format, images/ is searched too


def test_csv_layouts_win_over_grade_folders(tmp_path):
    make_aptos(tmp_path)
    _image(tmp_path / "2" / "x.png")
    assert detect_layout(tmp_path) == "aptos"


def test_unlisted_images_are_ignored(tmp_path):
    make_eyepacs(tmp_path)
    _image(tmp_path / "train" / "77_left.jpeg")
    assert "77_left" not in {s.image_id for s in load_samples(tmp_path)}


def test_csv_ids_with_an_extension_are_tolerated(tmp_path):
    make_eyepacs(tmp_path, rows=(("10_left", 1),))
    _csv(tmp_path / "trainLabels.csv", "image,level", [("10_left.jpeg", 1)])
    assert [s.image_id for s in load_samples(tmp_path)] == ["10_left"]


def test_patient_rule():
    assert patient_of("10_left") == "10" and patient_of("10_RIGHT") == "10"
    assert patient_of("left") == "left" and patient_of("a_lefty") == "a_lefty"


# ------------------------------------------------------------------------------------------- errors

def test_nothing_detected_says_what_was_found_and_what_is_needed(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "list.csv").write_text("file,grade\nx,1\n")
    with pytest.raises(DatasetError) as error:
        detect_layout(tmp_path)
    message = str(error.value)
    assert "photos/" in message and "list.csv (columns file,grade)" in message
    for needs in ("image,level", "id_code,diagnosis", "0 to 4", "generator.json"):
        assert needs in message


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DatasetError, match="empty"):
        detect_layout(tmp_path)
    with pytest.raises(DatasetError, match="no such folder"):
        load_samples(tmp_path / "nope")
    with pytest.raises(DatasetError, match="unknown layout"):
        load_samples(tmp_path, "kaggle")


@pytest.mark.parametrize("level, expected", [("5", "line 3: grade 5 is outside 0 to 4"),
                                             ("-1", "line 3: grade -1 is outside"),
                                             ("2.0", "line 3: grade '2.0' is not an integer"),
                                             ("", "line 3: grade '' is not an integer")])
def test_bad_grades_name_the_line(tmp_path, level, expected):
    make_eyepacs(tmp_path)
    _csv(tmp_path / "trainLabels.csv", "image,level", [("10_left", 0), ("10_right", level)])
    with pytest.raises(DatasetError, match=expected):
        load_samples(tmp_path)


def test_duplicate_ids(tmp_path):
    make_eyepacs(tmp_path)
    _csv(tmp_path / "trainLabels.csv", "image,level", [("10_left", 0), ("10_right", 1), ("10_left", 0)])
    with pytest.raises(DatasetError, match="line 4: duplicate id '10_left' \\(first on line 2\\)"):
        load_samples(tmp_path)


def test_duplicate_ids_across_grade_folders(tmp_path):
    make_imagefolder(tmp_path, files=(("0", "a.png"), ("2", "a.jpeg")))
    with pytest.raises(DatasetError, match="same image id 'a' twice"):
        load_samples(tmp_path)


def test_missing_images_are_counted_and_named(tmp_path):
    rows = [(f"{i}_left", 0) for i in range(5)]
    make_eyepacs(tmp_path, rows=rows[:1])
    _csv(tmp_path / "trainLabels.csv", "image,level", rows)
    with pytest.raises(DatasetError) as error:
        load_samples(tmp_path)
    message = str(error.value)
    assert "4 listed image(s) not found" in message and "1_left, 2_left, 3_left" in message
    assert "4_left" not in message and str(tmp_path / "train") in message


def test_empty_dataset(tmp_path):
    _csv(tmp_path / "trainLabels.csv", "image,level", [])
    with pytest.raises(DatasetError, match="has no images"):
        load_samples(tmp_path)
    (tmp_path / "trainLabels.csv").unlink()
    (tmp_path / "0").mkdir()
    with pytest.raises(DatasetError, match="imagefolder data set has no images"):
        load_samples(tmp_path)


def test_unreadable_csv(tmp_path):
    (tmp_path / "train.csv").write_bytes(b"id_code,diagnosis\n\xff\xfe\x00bad,1\n")
    with pytest.raises(DatasetError, match="cannot read the labels CSV"):
        load_samples(tmp_path, "aptos")


def test_short_row(tmp_path):
    make_aptos(tmp_path)
    (tmp_path / "train.csv").write_text("id_code,diagnosis\n000c1434d8d7\n")
    with pytest.raises(DatasetError, match="line 2: 1 fields"):
        load_samples(tmp_path)


def test_other_subfolders_of_an_image_folder_are_named(tmp_path):
    make_imagefolder(tmp_path)
    (tmp_path / "5").mkdir()
    (tmp_path / "extra").mkdir()
    with pytest.raises(DatasetError, match="subfolders 5, extra are not ICDR grades"):
        load_samples(tmp_path)


# ------------------------------------------------------------------------------------------- targets

def test_class_counts(tmp_path):
    samples = [Sample(str(g), tmp_path, g, str(g)) for g in (0, 0, 1, 2, 4)]
    assert class_counts(samples, "icdr5") == [2, 1, 1, 0, 1]
    assert class_counts(samples, "binary") == [2, 3]
    assert class_counts(samples, "referable") == [3, 2]


# ------------------------------------------------------------------------------------------- torch

def test_fundus_dataset_items_and_targets(tmp_path):
    make_imagefolder(tmp_path, files=(("0", "a.png"), ("3", "b.png")))
    (tmp_path / "0" / "a.png").unlink()
    Image.new("L", (8, 6), 200).save(tmp_path / "0" / "a.png")  # greyscale: converted to RGB
    dataset = FundusDataset(load_samples(tmp_path), transform=lambda im: (im.mode, im.size), task="referable")
    assert len(dataset) == 2 and dataset.targets == [0, 1]
    assert dataset[0] == (("RGB", (8, 6)), 0)
    assert dataset[1] == (("RGB", (12, 10)), 1)
    with pytest.raises(ValueError, match="unknown task"):
        FundusDataset([], None, task="five")


def test_corrupt_image_names_the_file(tmp_path):
    make_imagefolder(tmp_path, files=(("1", "a.png"),))
    (tmp_path / "1" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    dataset = FundusDataset(load_samples(tmp_path), transform=None)
    with pytest.raises(DatasetError, match="a.png: cannot read the image"):
        dataset[0]


# ---------------------------------------------------------------------------------------------- IDRiD

IDRID_TRAIN_CSV = ("Image name,Retinopathy grade,Risk of macular edema ,,,,,,,,,\r\n"
                   "IDRiD_001,3,2,,,,,,,,,\r\nIDRiD_002,0,0,,,,,,,,,\r\nIDRiD_003,2,1,,,,,,,,,\r\n\r\n")
IDRID_TEST_CSV = "Image name,Retinopathy grade,Risk of macular edema \r\nIDRiD_001,4,0\r\nIDRiD_002,1,0\r\n"


def make_idrid(root, train_csv=IDRID_TRAIN_CSV, test_csv=IDRID_TEST_CSV):
    """IDRiD's disease grading folder as published: numbered folders, CRLF CSVs with a trailing-space header
    and (training) nine empty trailing columns and a blank last line."""
    labels = root / "2. Groundtruths"
    labels.mkdir(parents=True)
    (labels / "a. IDRiD_Disease Grading_Training Labels.csv").write_bytes(train_csv.encode())
    (labels / "b. IDRiD_Disease Grading_Testing Labels.csv").write_bytes(test_csv.encode())
    for folder, ids in (("a. Training Set", ("001", "002", "003")), ("b. Testing Set", ("001", "002"))):
        for number in ids:
            _image(root / "1. Original Images" / folder / f"IDRiD_{number}.jpg")
    (root / "CC-BY-4.0.txt").write_text("licence")
    return root


def test_idrid_layout_is_detected_and_its_parts_load_apart(tmp_path):
    root = make_idrid(tmp_path / "B. Disease Grading")
    assert detect_layout(root) == "idrid"
    train = load_samples(root, part="train")
    assert [(s.image_id, s.grade) for s in train] == [("IDRiD_001", 3), ("IDRiD_002", 0), ("IDRiD_003", 2)]
    assert all(s.path.parent.name == "a. Training Set" and s.patient == s.image_id for s in train)
    test = load_samples(root, part="test")
    assert [(s.image_id, s.grade, s.path.parent.name) for s in test] == [
        ("IDRiD_001", 4, "b. Testing Set"), ("IDRiD_002", 1, "b. Testing Set")]


def test_idrid_needs_a_part_so_test_photos_never_slip_into_training(tmp_path):
    root = make_idrid(tmp_path / "grading")
    with pytest.raises(DatasetError, match="official split: choose part train or test"):
        load_samples(root)
    with pytest.raises(DatasetError, match="choose part train or test"):
        load_samples(root, part="val")
    with pytest.raises(DatasetError, match="no official parts"):
        load_samples(make_eyepacs(tmp_path / "eyepacs"), part="train")


def test_idrid_missing_photo_and_bad_grade_are_named(tmp_path):
    root = make_idrid(tmp_path / "grading")
    (root / "1. Original Images" / "a. Training Set" / "IDRiD_002.jpg").unlink()
    with pytest.raises(DatasetError, match="1 listed image.*IDRiD_002"):
        load_samples(root, part="train")
    bad = make_idrid(tmp_path / "bad",
                     test_csv="Image name,Retinopathy grade,Risk of macular edema \r\nIDRiD_001,7,0\r\n")
    with pytest.raises(DatasetError, match="grade 7 is outside 0 to 4"):
        load_samples(bad, part="test")


def test_idrid_parent_and_segmentation_folders_say_which_folder_to_pass(tmp_path):
    make_idrid(tmp_path / "idrid" / "B. Disease Grading")
    with pytest.raises(DatasetError, match="B. Disease Grading"):
        detect_layout(tmp_path / "idrid")
    segmentation = tmp_path / "A. Segmentation"
    (segmentation / "1. Original Images").mkdir(parents=True)
    (segmentation / "2. All Segmentation Groundtruths").mkdir()
    with pytest.raises(DatasetError, match="lesion masks but no grades"):
        detect_layout(segmentation)


def test_ungraded_photos_leave_vessel_and_field_of_view_masks_out(tmp_path):
    from drdemo.data import load_photos
    drive = tmp_path / "drive"
    for part in ("training", "testing"):
        _image(drive / part / "images" / f"21_{part}.png")
        _image(drive / part / "mask" / f"21_{part}_mask.png")
        _image(drive / part / "1st_manual" / "21_manual1.png")
    chase = tmp_path / "chase"
    for name in ("Image_01L.jpg", "Image_01L_1stHO.png", "Image_01L_2ndHO.png", "Image_01R.jpg"):
        _image(chase / name)
    assert [s.image_id for s in load_photos(drive)] == ["testing/images/21_testing", "training/images/21_training"]
    assert [s.image_id for s in load_photos(chase)] == ["Image_01L", "Image_01R"]
    assert all(s.grade == -1 for s in load_photos(chase))
    with pytest.raises(DatasetError, match="no photos"):
        load_photos(tmp_path / "drive" / "training" / "mask")


@needs_real_data
def test_the_real_idrid_files_load_as_published():
    counts = {part: class_counts(load_samples(IDRID_GRADING, part=part), "icdr5") for part in ("train", "test")}
    assert counts == {"train": [134, 20, 136, 74, 49], "test": [34, 5, 32, 19, 13]}
