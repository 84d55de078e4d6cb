"""Batch grading: archives are read safely, refusals become rows, the CSV holds every model's answer."""

import csv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drdemo import batch
from drdemo.gate import ImageRejected
from drdemo.predictor import Predictor


@pytest.fixture(scope="module")
def predictors():
    return [Predictor.untrained("resnet50", seed=1), Predictor.untrained("vgg16", seed=2)]


def _admit(path: Path):
    image = Image.open(path)
    image.load()
    if image.width < 64:
        raise ImageRejected(f"{path.name}: too small")
    return image.convert("RGB"), ["slightly blurred"]


def _png(path: Path, size=(96, 96), colour=(180, 70, 30)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def test_zip_members_are_extracted_under_safe_names(tmp_path):
    archive = tmp_path / "eyes.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(_png(tmp_path / "a.png"), "../../escape.png")      # a path-traversal name
        bundle.write(_png(tmp_path / "b.png"), "left/b.png")
        bundle.writestr("notes.txt", "not an image")
        bundle.writestr("__MACOSX/._b.png", "resource fork")
    workdir = tmp_path / "work"
    workdir.mkdir()
    items = batch.collect([archive, _png(tmp_path / "single.png")], workdir)
    assert [name for name, _ in items] == ["eyes.zip/../../escape.png", "eyes.zip/left/b.png", "single.png"]
    assert all(path.parent in (workdir, tmp_path) for _, path in items)
    assert not (tmp_path.parent / "escape.png").exists()


def test_limits_and_broken_archives_are_refused(tmp_path, monkeypatch):
    workdir = tmp_path / "work"
    workdir.mkdir()
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04" + b"\0" * 50)
    with pytest.raises(batch.BatchError, match="no images found"):
        batch.collect([], workdir)
    monkeypatch.setattr(batch, "MAX_IMAGES", 2)
    many = [_png(tmp_path / f"{i}.png") for i in range(3)]
    with pytest.raises(batch.BatchError, match="more than 2 images"):
        batch.collect(many, workdir)
    monkeypatch.setattr(batch, "MAX_BYTES", 100)
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("big.png", b"x" * 1000)
    with pytest.raises(batch.BatchError, match="over the 0 MB limit"):
        batch.collect([archive], workdir)


def test_grading_writes_one_row_per_image_with_refusals_explained(tmp_path, predictors):
    items = [("good.png", _png(tmp_path / "good.png")), ("tiny.png", _png(tmp_path / "tiny.png", size=(20, 20))),
             ("other.png", _png(tmp_path / "other.png", colour=(90, 40, 20)))]
    seen = []
    results = batch.grade(items, predictors, _admit, referable_threshold=0.3,
                          progress=lambda share, text: seen.append(share))
    assert seen[0] == 0 and seen[-1] == 1.0
    assert [bool(r.predictions) for r in results] == [True, False, True]
    out = batch.write_csv(results, predictors, tmp_path / "out.csv")
    rows = list(csv.DictReader(open(out, newline="")))
    assert [r["file"] for r in rows] == ["good.png", "tiny.png", "other.png"]
    assert rows[1]["notes"].startswith("refused: tiny.png: too small") and rows[1]["resnet50_grade"] == ""
    assert rows[0]["notes"] == "slightly blurred"
    for row, result in zip(rows, results):
        for predictor in predictors:
            prediction = result.predictions.get(predictor.name)
            if prediction is None:
                continue
            probabilities = [float(row[f"{predictor.name}_p_{c}"]) for c in
                             ("no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "proliferative_dr")]
            assert sum(probabilities) == pytest.approx(1, abs=1e-5)
            assert int(row[f"{predictor.name}_grade"]) == int(np.argmax(probabilities))
            referable = float(row[f"{predictor.name}_referable_probability"])
            assert referable == pytest.approx(sum(probabilities[2:]), abs=1e-5)
            assert row[f"{predictor.name}_referable"] == str(referable >= 0.3)
    most, least = batch.extremes(results, predictors[0].name, count=1)
    confidence = [max(r.predictions[predictors[0].name].probabilities.values()) for r in results if r.predictions]
    assert max(most[0].predictions[predictors[0].name].probabilities.values()) == max(confidence)
    assert max(least[0].predictions[predictors[0].name].probabilities.values()) == min(confidence)
