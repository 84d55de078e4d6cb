"""The synthetic fundus generator: deterministic files, ICDR-consistent lesions, EyePACS layout, CLI errors."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drdemo.data.lesions import lesion_stack, load_lesion_samples
from drdemo.data.synthetic import (
    CLASS_BALANCES,
    LESION_TYPES,
    SyntheticDataError,
    generate_fundus,
    image_ids,
    main,
    sample_grades,
    write_dataset,
)

SIZE = 256
N = 11  # odd: the last patient has one eye
BEYOND_MILD = [t for t in LESION_TYPES if t != "microaneurysm"]
SEVERE = ("venous_beading", "irma")
PROLIFERATIVE = ("neovascularisation", "preretinal_haemorrhage")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("synth") / "a", N, seed=3, size=SIZE, workers=1, progress=False)


@pytest.fixture(scope="module")
def samples() -> list:
    """Three images of every grade, both eyes, generated directly (no files)."""
    return [generate_fundus(np.random.SeedSequence([11, g, i]), g, SIZE, ("left", "right")[i % 2])
            for g in range(5) for i in range(3)]


def test_same_seed_same_bytes_for_any_number_of_workers(dataset, tmp_path):
    again = write_dataset(tmp_path / "b", N, seed=3, size=SIZE, workers=2, progress=False)
    first, second = _files(dataset), _files(again)
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)


def test_different_seed_different_images(dataset, tmp_path):
    other = write_dataset(tmp_path / "c", 2, seed=4, size=SIZE, workers=1, progress=False)
    for image_id in image_ids(2):
        path = Path("images") / f"{image_id}.jpeg"
        assert (other / path).read_bytes() != (dataset / path).read_bytes()


def test_labels_csv_and_generator_json_layout(dataset):
    with open(dataset / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "level"]
    ids = [r[0] for r in rows[1:]]
    assert ids == image_ids(N) and ids[:2] == ["00001_left", "00001_right"] and ids[-1] == "00006_left"
    assert [int(r[1]) for r in rows[1:]] == sample_grades(N, 3, "uniform")
    assert sorted(p.stem for p in (dataset / "images").glob("*.jpeg")) == sorted(ids)
    info = json.loads((dataset / "generator.json").read_text())
    assert info["generator"] == "drdemo.data.synthetic" and info["version"] == 1
    assert (info["seed"], info["n"], info["size"], info["class_balance"]) == (3, N, SIZE, "uniform")
    assert info["lesion_types"] == list(LESION_TYPES)
    assert sum(info["grade_counts"].values()) == N
    for folder in (dataset / "masks").iterdir():
        assert folder.name in LESION_TYPES and any(folder.iterdir())  # only lesion types that occur


def test_written_masks_match_labels_and_images(dataset):
    with open(dataset / "labels.csv", newline="") as f:
        labels = {row["image"]: int(row["level"]) for row in csv.DictReader(f)}
    with_lesions = {sample.image_id: sample for sample in load_lesion_samples(dataset)}
    for image_id, grade in labels.items():
        with Image.open(dataset / "images" / f"{image_id}.jpeg") as image:
            assert image.mode == "RGB"
            size = image.size
        for path in (dataset / "masks").glob(f"*/{image_id}.png"):
            with Image.open(path) as m:
                assert m.mode == "L" and m.size == size and set(np.unique(np.asarray(m))) <= {0, 255}
        if image_id not in with_lesions:
            assert grade == 0
            continue
        masks = dict(zip(LESION_TYPES, lesion_stack(with_lesions[image_id], LESION_TYPES)))
        assert all(m.shape == size[::-1] and m.dtype == bool for m in masks.values())
        assert masks["microaneurysm"].any() == (grade >= 1)
        if grade <= 1:
            assert not any(masks[t].any() for t in BEYOND_MILD)


def test_every_grade_follows_icdr(samples):
    for f in samples:
        present = {t for t, m in f.masks.items() if m.any()}
        assert set(f.masks) == set(LESION_TYPES) and present == set(f.meta["present"])
        if f.grade == 0:
            assert not present
            continue
        assert "microaneurysm" in present
        if f.grade == 1:
            assert present == {"microaneurysm"}
        if f.grade == 2:
            assert present & {"haemorrhage", "hard_exudate", "cotton_wool_spot"}
            assert not present & {*SEVERE, *PROLIFERATIVE}
        if f.grade == 3:
            quadrants = f.meta["haemorrhage_all_quadrants"] and f.meta["lesion_counts"]["haemorrhage"] > 20
            assert quadrants or present & set(SEVERE)
            assert not present & set(PROLIFERATIVE)
        if f.grade == 4:
            assert present & set(PROLIFERATIVE)


def test_severe_haemorrhages_cover_all_four_quadrants(samples):
    for f in samples:
        if f.grade == 3 and f.meta["haemorrhage_all_quadrants"]:
            ys, xs = np.nonzero(f.masks["haemorrhage"])
            h, w = f.masks["haemorrhage"].shape
            quadrants = set((2 * (ys > h / 2) + (xs > w / 2)).tolist())
            assert quadrants == {0, 1, 2, 3}


def test_lesions_lie_inside_the_field_of_view_and_off_the_disc(samples):
    for f in samples:
        left, top, _right, _bottom = f.meta["crop_box"]
        cx, cy = f.meta["fov_centre"]
        dx, dy = f.meta["disc"]
        assert f.image.shape[:2] == f.masks["microaneurysm"].shape
        for name, mask in f.masks.items():
            ys, xs = np.nonzero(mask)
            xs, ys = xs + left, ys + top
            assert np.all(np.hypot(xs - cx, ys - cy) <= f.meta["fov_radius"] + 1)
            if name in ("microaneurysm", "haemorrhage", "hard_exudate"):
                assert np.all(np.hypot(xs - dx, ys - dy) > 0.5 * f.meta["disc_diameter"])
            if name == "microaneurysm" and xs.size:
                assert f.image[ys - top, xs - left].mean() < f.image.mean(axis=(0, 1)).max() * 2  # visible, not blank


def test_optic_disc_is_on_the_nasal_side(samples):
    for f in samples:
        width = f.image.shape[1] + 2 * f.meta["crop_box"][0]
        disc_x, fovea_x = f.meta["disc"][0], f.meta["fovea"][0]
        assert (disc_x > fovea_x) == (f.eye == "right")
        assert (disc_x > width / 2) == (f.eye == "right")


def test_generate_fundus_is_deterministic_and_validates():
    a, b = generate_fundus(5, 2, 128), generate_fundus(5, 2, 128)
    assert np.array_equal(a.image, b.image) and a.image.dtype == np.uint8 and a.image.ndim == 3
    assert not np.array_equal(a.image, generate_fundus(6, 2, 128).image)
    for kwargs in ({"grade": 5}, {"grade": 1, "size": 64}, {"grade": 1, "eye": "both"}):
        with pytest.raises(SyntheticDataError):
            generate_fundus(0, **kwargs)


def test_class_balance_marginals_and_second_eye():
    for balance, n in (("eyepacs", 4000), ("uniform", 2000)):
        grades = np.array(sample_grades(n, 0, balance))
        expected = np.array(CLASS_BALANCES[balance], float) / sum(CLASS_BALANCES[balance])
        observed = np.bincount(grades, minlength=5) / n
        assert np.all(np.abs(observed - expected) < 0.03), (balance, observed, expected)
    grades = np.array(sample_grades(4000, 1, "uniform"))
    same = np.mean(grades[0::2] == grades[1::2])
    assert 0.6 < same < 0.77  # 0.6 copied + 0.4 * 1/5 by chance = 0.68


@pytest.mark.parametrize("args, message", [
    (["--n", "0"], "--n must be at least 1"),
    (["--size", "100"], "--size must be between"),
    (["--size", "5000"], "--size must be between"),
    (["--class-balance", "aptos"], "unknown --class-balance"),
    (["--workers", "0"], "--workers must be at least 1"),
])
def test_cli_bad_arguments(tmp_path, capsys, args, message):
    base = {"--out": str(tmp_path / "out"), "--n": "2", "--seed": "0", "--size": "128"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    assert main([item for pair in base.items() for item in pair]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_non_empty_out_without_traceback(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert main(["--out", str(tmp_path), "--n", "1", "--seed", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not an empty folder" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
