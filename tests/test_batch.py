"""Batch grading: archives are read safely, every image goes through the real gate, each row carries its outcome
(accepted, warned, refused) and reason, and the CSV holds every model's answer."""

import csv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks import gate_corpus
from drdemo import batch
from drdemo.intake.gate import check_upload
from drdemo.predictor import Predictor
from drdemo.serving.slots import ServedModel
from drdemo.ui import views


@pytest.fixture(scope="module")
def predictors():
    return [Predictor.untrained("resnet50", seed=1), Predictor.untrained("vgg16", seed=2)]


def _served(predictors, feature_score=None):
    """The predictors as the app serves them, without a stored feature score unless one is given."""
    return [ServedModel(p.name, p, "test", False, feature_score) for p in predictors]


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


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


@pytest.fixture
def clinic(tmp_path) -> list[tuple[str, Path]]:
    """A fundus photo, a red-free one, a cat, a thumbnail too small to grade."""
    fundus = gate_corpus._with_layout("circle")
    return [("good.png", _save(fundus, tmp_path / "good.png")),
            ("red-free.png", _save(gate_corpus.red_free(fundus), tmp_path / "red-free.png")),
            ("cat.jpg", _save(gate_corpus.cat_face(), tmp_path / "cat.jpg")),
            ("tiny.png", _png(tmp_path / "tiny.png", size=(20, 20)))]


def test_grading_writes_one_row_per_image_with_outcome_and_reason(tmp_path, predictors, clinic):
    seen = []
    results = batch.grade(clinic, _served(predictors), check_upload, referable_threshold=0.3,
                          progress=lambda share, text: seen.append(share))
    assert seen[0] == 0 and seen[-1] == 1.0
    assert [r.outcome for r in results] == ["accepted", "warned", "refused", "refused"]
    assert [bool(r.predictions) for r in results] == [True, True, False, False]
    out = batch.write_csv(results, predictors, tmp_path / "out.csv")
    rows = list(csv.DictReader(open(out, newline="")))
    assert list(rows[0])[:4] == ["file", "outcome", "reason", "details"] and list(rows[0])[-1] == "notes"
    assert [r["file"] for r in rows] == ["good.png", "red-free.png", "cat.jpg", "tiny.png"]
    assert [r["outcome"] for r in rows] == ["accepted", "warned", "refused", "refused"]
    assert rows[0]["reason"].startswith("Looks like a colour fundus photo") and rows[0]["notes"] == ""
    assert "red-free or greyscale" in rows[1]["reason"] and rows[1]["notes"] == rows[1]["reason"]
    assert rows[2]["reason"].startswith("This does not look like a fundus photo") and rows[2]["resnet50_grade"] == ""
    assert rows[2]["notes"].startswith("refused: cat.jpg: This does not look like a fundus photo")
    assert "20 x 20 pixels is too small" in rows[3]["reason"] and rows[3]["details"] == ""
    for row in rows[:3]:
        assert "scores: frame" in row["details"]
    for row, result in zip(rows, results):
        for predictor in predictors:
            prediction = result.predictions.get(predictor.name)
            if prediction is None:
                continue
            probabilities = [float(row[f"{predictor.name}_p_{c}"]) for c in
                             ("no_dr", "mild_npdr", "moderate_npdr", "severe_npdr", "proliferative_dr")]
            assert sum(probabilities) == pytest.approx(1, abs=1e-5)
            referable = float(row[f"{predictor.name}_referable_probability"])
            # the grade named agrees with the decision: the most probable on its side of the threshold (0.3)
            named = int(row[f"{predictor.name}_grade"])
            assert (named >= 2) == (referable >= 0.3)
            assert probabilities[named] == max(probabilities[2:] if referable >= 0.3 else probabilities[:2])
            assert referable == pytest.approx(sum(probabilities[2:]), abs=1e-5)
            assert row[f"{predictor.name}_decision"] == ("refer" if referable >= 0.3 else "do not refer")
            assert row[f"{predictor.name}_decision_reason"] == ("retinopathy" if referable >= 0.3 else "")
            assert f"{predictor.name}_referable" not in row      # one decision column per model, no second opinion
    gallery = views.batch_gallery(results, (predictors[0].name, "ResNet50"), count=1)
    confidence = [max(r.predictions[predictors[0].name].probabilities.values()) for r in results if r.predictions]
    assert f"{max(confidence):.0%})" in gallery[0][1] and f"{min(confidence):.0%})" in gallery[-1][1]
    assert all("most confident" not in caption and "refer" in caption.lower() for _, caption in gallery)


def test_the_batch_tab_lists_each_images_outcome_and_reason(predictors, clinic):
    results = batch.grade(clinic, _served(predictors[:1]), check_upload)
    summary = views.batch_summary(results, [(predictors[0].name, "ResNet50")])
    assert summary.startswith("Graded 2 of 4 images; 2 refused; 1 graded with a warning. Referred: ResNet50 ")
    table = summary.split("\n\n", 1)[1].splitlines()
    assert table[0] == "| file | image check | reason | ResNet50: grade | ResNet50: decision |"
    assert len(table) == 2 + len(clinic)
    assert table[2].startswith("| good.png | accepted | Looks like a colour fundus photo")
    assert table[3].startswith("| red-free.png | accepted with a warning | This looks like a red-free")
    assert table[4].startswith("| cat.jpg | refused | This does not look like a fundus photo")
    assert table[4].endswith("|  |  |")   # no grade, no decision
    prediction = results[0].predictions[predictors[0].name]
    assert f"| {prediction.grade_name} | {views.decision_heading(prediction)} |" in table[2]


def test_each_models_feature_score_joins_the_check_and_three_head_models_add_dme_columns(tmp_path, clinic):
    """A score that calls every photo unlike the training photos warns the fundus photo that the rules accepted,
    and says so with the distance in the row; a three-head model's DME risk and referral reasons are columns."""
    import torch

    from drdemo.checkpoint import CheckpointConfig
    from drdemo.intake.ood import fit
    from drdemo.models import create_model

    heads = {"grade_head": "softmax", "dme_classes": ["No DME", "DME risk 1", "DME risk 2"],
             "lesion_types": ["MA", "HE", "EX", "SE"]}
    torch.manual_seed(0)
    three_head = Predictor(create_model("resnet50", heads=heads), CheckpointConfig.for_architecture(
        "resnet50", heads=heads, input_size=64, cam_target_layer="backbone.layer4"))
    rng = np.random.default_rng(0)
    score = fit(rng.normal(size=(40, 2048)) * 1e-3, [i % 2 for i in range(40)], components=4, fitted_on="noise")
    score = score.with_threshold(1e-6, "test")
    results = batch.grade(clinic[:1], _served([three_head], score), check_upload)
    assert results[0].outcome == "warned" and "unlike" in results[0].reason
    assert results[0].reason.startswith("ResNet50: ")      # whose number it is
    assert "ResNet50 feature distance" in results[0].details and "scores: frame" in results[0].details
    row = next(csv.DictReader(open(batch.write_csv(results, [three_head], tmp_path / "out.csv"), newline="")))
    dme = [float(row[f"resnet50_dme_p_{c}"]) for c in ("no_dme", "dme_risk_1", "dme_risk_2")]
    assert sum(dme) == pytest.approx(1, abs=1e-5)
    assert float(row["resnet50_dme_referable_probability"]) == pytest.approx(dme[2], abs=1e-6)
    prediction = results[0].predictions["resnet50"]
    assert row["resnet50_decision"] == ("refer" if prediction.referred else "do not refer")
    assert row["resnet50_decision_reason"] == " and ".join(prediction.referral_reasons)
    assert not {"resnet50_referable", "resnet50_referred", "resnet50_dme_referable"} & set(row)
