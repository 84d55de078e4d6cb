"""Patient-grouped, grade-stratified splits; their JSON file and CLI."""

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from drdemo.data import DatasetError, Sample, load_samples, load_split, save_split, split_samples
from drdemo.data.split import main as split_main


def _samples(n_patients=60, seed=1):
    """Two eyes per patient (the last patient one eye); grades skewed like EyePACS, eyes mostly agree."""
    import numpy as np

    rng = np.random.default_rng(seed)
    samples = []
    for patient in range(n_patients):
        grade = int(rng.choice(5, p=[0.5, 0.15, 0.15, 0.1, 0.1]))
        for eye in ("left", "right")[: 1 if patient == n_patients - 1 else 2]:
            eye_grade = max(0, grade - int(rng.integers(0, 2)))
            image_id = f"{patient:05d}_{eye}"
            samples.append(Sample(image_id, Path(f"{image_id}.jpeg"), eye_grade, f"{patient:05d}"))
    return samples


def _patients(part):
    return {s.patient for s in part}


@pytest.mark.parametrize("fractions", [{"train": 0.8, "val": 0.2}, {"train": 0.7, "val": 0.15, "test": 0.15}])
def test_split_keeps_eyes_together_and_covers_everything(fractions):
    samples = _samples()
    parts = split_samples(samples, fractions, seed=3)
    assert list(parts) == list(fractions)
    ids = [s.image_id for part in parts.values() for s in part]
    assert sorted(ids) == sorted(s.image_id for s in samples)
    names = list(parts)
    for i, a in enumerate(names):
        assert [s.image_id for s in parts[a]] == sorted(s.image_id for s in parts[a])
        for b in names[i + 1:]:
            assert not _patients(parts[a]) & _patients(parts[b])
    for name, share in fractions.items():
        assert abs(len(parts[name]) - share * len(samples)) <= 3


def test_split_is_stratified_by_the_patients_worst_eye():
    samples = _samples(200)
    parts = split_samples(samples, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    worst = {}
    for s in samples:
        worst[s.patient] = max(worst.get(s.patient, 0), s.grade)
    overall = Counter(worst.values())
    for name, share in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        counts = Counter(worst[p] for p in _patients(parts[name]))
        for grade, total in overall.items():
            assert abs(counts[grade] - share * total) <= 2, (name, grade)


def test_tiny_sets_still_have_every_grade_in_every_part():
    samples = [Sample(f"{p}_{eye}", Path("x"), grade, str(p))
               for p, grade in enumerate([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]) for eye in ("left", "right")]
    parts = split_samples(samples, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=5)
    for part in parts.values():
        assert {s.grade for s in part} == {0, 1, 2, 3, 4}


def test_a_grade_with_one_patient_goes_to_train():
    samples = [Sample("a", Path("x"), 4, "a"), Sample("b", Path("x"), 0, "b"), Sample("c", Path("x"), 0, "c")]
    parts = split_samples(samples, {"val": 0.2, "train": 0.8})
    assert [s.image_id for s in parts["train"]] == ["a", "b"] and [s.image_id for s in parts["val"]] == ["c"]


def test_zero_fraction_parts_are_empty():
    parts = split_samples(_samples(10), {"train": 0.9, "val": 0.1, "test": 0.0})
    assert parts["test"] == [] and parts["val"]


def test_split_is_deterministic_per_seed():
    samples = _samples()
    first = split_samples(samples, seed=7)
    assert split_samples(list(reversed(samples)), seed=7) == first
    assert any(split_samples(samples, seed=s)["val"] != first["val"] for s in (8, 9, 10))


@pytest.mark.parametrize("fractions, message", [({"train": 0.8, "val": 0.3}, "sum to 1.1"),
                                                ({"train": 1.2, "val": -0.2}, "between 0 and 1"),
                                                ({}, "empty"),
                                                ({"train": float("nan"), "val": 0.5}, "between 0 and 1")])
def test_fractions_are_validated(fractions, message):
    with pytest.raises(ValueError, match=message):
        split_samples(_samples(5), fractions)


def test_save_and_load_split_round_trip(tmp_path):
    samples = _samples(20)
    parts = split_samples(samples, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=2)
    path = save_split(tmp_path / "out" / "split.json", parts, layout="eyepacs", seed=2)
    document = json.loads(path.read_text())
    assert document["layout"] == "eyepacs" and document["seed"] == 2
    assert document["grade_counts"]["val"] == {str(g): sum(s.grade == g for s in parts["val"]) for g in range(5)}
    assert load_split(path, samples) == parts


def test_load_split_refuses_other_data(tmp_path):
    samples = _samples(20)
    path = save_split(tmp_path / "split.json", split_samples(samples), layout="eyepacs", seed=0)
    with pytest.raises(DatasetError, match="1 id\\(s\\) of the split are not in the data set, e.g. 00019_left"):
        load_split(path, samples[:-1])
    with pytest.raises(DatasetError, match="1 image\\(s\\) of the data set are in no part, e.g. zz"):
        load_split(path, samples + [Sample("zz", Path("zz"), 0, "zz")])
    path.write_text('{"parts": {"train": ["a"], "val": ["a"]}}')
    with pytest.raises(DatasetError, match="'a' is in both 'train' and 'val'"):
        load_split(path, [Sample("a", Path("a"), 0, "a")])
    path.write_text('{"parts": ["a"]}')
    with pytest.raises(DatasetError, match="not a split file"):
        load_split(path, samples)
    path.write_text("{")
    with pytest.raises(DatasetError, match="cannot read the split file"):
        load_split(path, samples)


def test_cli_writes_a_split(tmp_path, capsys):
    data = tmp_path / "data"
    for patient, grade in enumerate([0, 0, 0, 1, 2, 2, 3, 4, 0, 1]):
        for eye in ("left", "right"):
            (data / str(grade)).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(data / str(grade) / f"p{patient}_{eye}.png")
    out = tmp_path / "split.json"
    assert split_main(["--data", str(data), "--out", str(out), "--val", "0.2", "--test", "0.2", "--seed", "1"]) == 0
    assert "imagefolder" in capsys.readouterr().out
    document = json.loads(out.read_text())
    assert document["layout"] == "imagefolder" and list(document["parts"]) == ["train", "val", "test"]
    assert load_split(out, load_samples(data)).keys() == {"train", "val", "test"}

    assert split_main(["--data", str(data), "--out", str(out), "--val", "0.6", "--test", "0.5"]) == 2
    assert capsys.readouterr().err.startswith("error: --val 0.6 and --test 0.5 leave nothing to train on")


def test_cli_exits_2_on_bad_data(tmp_path, capsys):
    assert split_main(["--data", str(tmp_path / "missing"), "--out", str(tmp_path / "split.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such folder" in err and "Traceback" not in err
