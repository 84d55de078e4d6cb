"""The evaluation CLI end to end on a tiny checkpoint and an eight-image EyePACS-layout folder."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from real_data import needs_real_data
from sklearn.metrics import roc_auc_score

from drdemo.checkpoint import CheckpointConfig, save_checkpoint
from drdemo.data import load_samples, save_split, split_samples
from drdemo.evaluate import evaluate, main
from drdemo.models import create_model

ROOT = Path(__file__).resolve().parents[1]
GRADES = [0, 0, 1, 2, 3, 4, 2, 0]
ARCHITECTURE = "resnet50"  # the quickest registry model to build; 64 px inputs keep the forward pass short


def write_eyepacs(folder: Path, grades=GRADES) -> Path:
    """trainLabels.csv + train/<patient>_<eye>.jpeg: a bright disc on black, a different colour per image."""
    (folder / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["image,level"]
    for i, grade in enumerate(grades):
        image_id = f"{i // 2:05d}_{'left' if i % 2 == 0 else 'right'}"
        image = Image.new("RGB", (96, 80))
        ImageDraw.Draw(image).ellipse((10, 2, 86, 78), fill=tuple(int(v) for v in rng.integers(60, 220, 3)))
        image.save(folder / "train" / f"{image_id}.jpeg")
        lines.append(f"{image_id},{grade}")
    (folder / "trainLabels.csv").write_text("\n".join(lines) + "\n")
    return folder


# Tiny inputs: one torch thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    torch.manual_seed(0)
    config = CheckpointConfig.for_architecture(ARCHITECTURE, input_size=64)
    save_checkpoint(create_model(ARCHITECTURE, num_classes=config.num_classes), config, root / "checkpoint")
    return SimpleNamespace(root=root, checkpoint=root / "checkpoint", data=write_eyepacs(root / "data"))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_cli_writes_consistent_metrics_predictions_and_plots(workspace):
    out = workspace.root / "out"
    result = subprocess.run(
        [sys.executable, "-m", "drdemo.evaluate", "score", "--checkpoint", str(workspace.checkpoint), "--data",
         str(workspace.data), "--out", str(out), "--batch-size", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout and "QWK" in result.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoint"] == {"source": str(workspace.checkpoint), "revision": None, "commit": None,
                                     "architecture": ARCHITECTURE, "task": "icdr5", "trained": False}
    assert metrics["data"]["layout"] == "eyepacs" and metrics["data"]["n"] == metrics["n"] == len(GRADES)
    assert metrics["seconds"] > 0 and metrics["images_per_second"] > 0
    assert metrics["grade_counts"] == np.bincount(GRADES, minlength=5).tolist()
    for key in ("accuracy", "qwk", "confusion_matrix", "per_class_recall", "referable_auc", "referable_sensitivity",
                "referable_specificity", "any_dr_auc", "any_dr_sensitivity", "any_dr_specificity", "notes"):
        assert key in metrics

    rows = read_csv(out / "predictions.csv")
    assert [row["image_id"] for row in rows] == sorted(row["image_id"] for row in rows)
    assert [int(row["grade"]) for row in rows] == GRADES  # ids sort in the order they were written
    probability_columns = ["prob_no_dr", "prob_mild_npdr", "prob_moderate_npdr", "prob_severe_npdr",
                           "prob_proliferative_dr"]
    probabilities = np.array([[float(row[c]) for c in probability_columns] for row in rows])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    predicted = np.array([int(row["predicted"]) for row in rows])
    assert (predicted == probabilities.argmax(axis=1)).all()
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == np.array(GRADES)))
    confusion = np.zeros((5, 5), dtype=int)
    np.add.at(confusion, (np.array(GRADES), predicted), 1)
    assert metrics["confusion_matrix"] == confusion.tolist()
    referable = np.array([float(row["referable_probability"]) for row in rows])
    np.testing.assert_allclose(referable, probabilities[:, 2:].sum(axis=1), atol=1e-6)
    assert metrics["referable_auc"] == pytest.approx(roc_auc_score(np.array(GRADES) >= 2, referable))

    for name in ("confusion_matrix.png", "roc.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and min(image.size) > 200
            image.verify()


def test_split_part_and_limit(workspace, capsys):
    samples = load_samples(workspace.data)
    split = save_split(workspace.root / "split.json", split_samples(samples, {"train": 0.5, "val": 0.5}),
                       "eyepacs", seed=0)
    val_ids = json.loads(split.read_text())["parts"]["val"]
    out = workspace.root / "out_split"
    assert main(["score", "--checkpoint", str(workspace.checkpoint), "--data", str(workspace.data), "--out", str(out),
                 "--split", str(split), "--part", "val", "--limit", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["data"]["part"] == "val" and metrics["data"]["limit"] == 2
    assert [row["image_id"] for row in read_csv(out / "predictions.csv")] == sorted(val_ids)[:2]


def test_evaluate_binary_model_in_training_mode(workspace):
    """What the training loop does: a model being trained, a binary task; its mode is given back."""
    config = CheckpointConfig.for_architecture(ARCHITECTURE, task="binary", input_size=64)
    model = create_model(ARCHITECTURE, num_classes=2).train()
    model.bn1.eval()  # a frozen layer stays frozen
    samples = load_samples(workspace.data)
    metrics, rows = evaluate(SimpleNamespace(model=model, config=config), samples, batch_size=4, progress=False)
    assert model.training and model.layer1.training and not model.bn1.training
    assert metrics["task"] == "binary" and metrics["n"] == len(samples)
    assert len(metrics["confusion_matrix"]) == 2 and "any_dr_auc" in metrics and "referable_auc" not in metrics
    assert set(rows[0]) == {"image_id", "grade", "target", "prob_no_dr", "prob_dr", "predicted", "predicted_name",
                            "any_dr_probability"}
    assert [row["target"] for row in rows] == [int(g >= 1) for g in GRADES]
    assert metrics["accuracy"] == pytest.approx(np.mean([r["target"] == r["predicted"] for r in rows]))


def test_errors_exit_2_with_a_message(workspace, tmp_path, capsys):
    def run(*extra: str, command="score", checkpoint=workspace.checkpoint, data=workspace.data,
            out=tmp_path / "out") -> str:
        code = main([command, "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.splitlines()[-1].startswith("error: ") and "Traceback" not in err
        return err

    assert "neither a folder nor a Hub repo" in run(checkpoint=tmp_path / "no" / "such" / "checkpoint")
    assert "no such folder" in run(data=tmp_path / "missing")
    (tmp_path / "a_file").write_text("x")
    assert "is a file" in run(out=tmp_path / "a_file")
    assert "--part needs --split" in run("--part", "val")
    samples = load_samples(workspace.data)
    split = save_split(tmp_path / "split.json", {"train": samples}, "eyepacs", seed=0)
    assert "no part 'test'" in run("--split", str(split))
    assert "--limit" in run("--limit", "0")
    assert "(0, 1]" in run("--sensitivity", "1.5", command="threshold")
    assert "writes into a local checkpoint folder" in run("--sensitivity", "0.9", command="threshold",
                                                          checkpoint="org/remote")
    assert "scoring heat maps needs lesion masks" in run(command="cams")
    assert "--overlap and --photos go together" in run("--photos", "others", command="cams")

    broken = write_eyepacs(tmp_path / "broken", grades=[0, 2])
    (broken / "train" / "00000_right.jpeg").write_bytes(b"not a jpeg")
    assert "cannot read the image" in run(data=broken)
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_record_writes_test_metrics_into_the_checkpoint_and_its_card(workspace, tmp_path):
    import shutil

    from drdemo.checkpoint import read_config
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(workspace.checkpoint, checkpoint)
    out = tmp_path / "out"
    assert main(["score", "--checkpoint", str(checkpoint), "--data", str(workspace.data), "--out", str(out),
                 "--record"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    config = read_config(checkpoint)
    assert config.metrics["test_qwk"] == pytest.approx(metrics["qwk"], abs=1e-4)
    assert config.metrics["test_n"] == len(GRADES)
    assert config.metrics["test_recall_0_no_dr"] == pytest.approx(metrics["per_class_recall"]["No DR"], abs=1e-4)
    assert "images of the eyepacs data set" in config.provenance["evaluation_data"]
    assert config.provenance["evaluation_command"].startswith("python -m drdemo.evaluate score --checkpoint")
    card = (checkpoint / "README.md").read_text()
    assert "test_qwk" in card and "### How it was made" in card
    assert "# Evaluation\npython -m drdemo.evaluate score" in card
    refused = main(["score", "--checkpoint", "org/remote", "--data", str(workspace.data),
                    "--out", str(out), "--record"])
    assert refused == 2


def test_calibrate_fits_on_these_photos_then_the_threshold_and_the_app_use_it(workspace, tmp_path):
    """`calibrate --views 8` writes the calibration that `threshold` then reads the probabilities through,
    and the app's predictor then gives each photo exactly the probabilities predictions.csv holds."""
    import shutil

    from drdemo.checkpoint import load_model, read_config
    from drdemo.data import open_image
    from drdemo.predictor import Predictor
    checkpoint = Path(shutil.copytree(workspace.checkpoint, tmp_path / "checkpoint"))
    out = tmp_path / "val"
    given = ["--checkpoint", str(checkpoint), "--data", str(workspace.data), "--out"]
    assert main(["calibrate", *given, str(tmp_path / "calibrated"), "--views", "8"]) == 0
    assert main(["threshold", *given, str(out), "--sensitivity", "0.9", "--record"]) == 0
    config = read_config(checkpoint)
    assert config.test_time_views == 8 and set(config.calibration) == {"temperature", "logit_bias"}
    choice = config.provenance["calibration_choice"]
    assert choice["views"] == 8 and choice["nll_after"] < choice["nll_before"]
    assert config.provenance["calibration_command"].startswith("python -m drdemo.evaluate calibrate")
    rows = read_csv(out / "predictions.csv")
    predictor = Predictor.from_loaded(load_model(checkpoint))
    for row, sample in zip(rows, load_samples(workspace.data)):
        served = predictor.predict(open_image(sample.path)).probabilities
        np.testing.assert_allclose([float(row[f"prob_{n.lower().replace(' ', '_')}"]) for n in served],
                                   list(served.values()), atol=1e-5)
    referable = np.array([float(r["referable_probability"]) for r in rows])
    truth = np.array([int(r["grade"]) >= 2 for r in rows])
    assert (referable[truth] >= config.referable_threshold).mean() >= 0.9    # chosen on calibrated probabilities
    card = (checkpoint / "README.md").read_text()
    assert "Calibration" in card and f"{config.calibration['temperature']:g}" in card


def test_the_single_command_form_says_which_subcommands_replace_it(workspace, tmp_path, capsys):
    given = ["--checkpoint", str(workspace.checkpoint), "--data", str(workspace.data), "--out", str(tmp_path / "o")]
    assert main([*given, "--calibrate", "--views", "8", "--choose-threshold", "0.9"]) == 2
    err = capsys.readouterr().err
    assert "takes a subcommand first" in err and "run calibrate then threshold --sensitivity S" in err
    assert main([*given, "--cam", "--cam-methods", "gradcam"]) == 2
    assert "run cams; under cams --cam-methods is --methods" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["score", *given, "--views", "8"])             # a flag of another subcommand
    assert exited.value.code == 2 and "unrecognized arguments: --views 8" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------- real photos

@pytest.fixture(scope="module")
def real(tmp_path_factory, workspace):
    from real_data import skip_without_real_data, tiny_idrid, tiny_segmentation
    skip_without_real_data()
    root = tmp_path_factory.mktemp("real")
    grading = tiny_idrid(root / "B. Disease Grading", per_grade=2)
    segmentation = tiny_segmentation(root / "A. Segmentation", count=3)
    split = root / "split.json"
    samples = load_samples(grading, part="train")
    save_split(split, split_samples(samples, {"train": 0.5, "val": 0.5}, seed=0), "idrid", 0)
    return SimpleNamespace(grading=grading, segmentation=segmentation, split=split)


def _copy_checkpoint(workspace, tmp_path):
    import shutil
    return Path(shutil.copytree(workspace.checkpoint, tmp_path / "checkpoint"))


def test_idrid_parts_and_a_validation_split_of_its_training_part(workspace, real, tmp_path, capsys):
    assert main(["score", "--checkpoint", str(workspace.checkpoint), "--data", str(real.grading), "--out",
                 str(tmp_path / "test"), "--part", "test"]) == 0
    metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert metrics["n"] == 5 and metrics["data"]["part"] == "test" and metrics["data"]["layout"] == "idrid"
    assert main(["score", "--checkpoint", str(workspace.checkpoint), "--data", str(real.grading), "--out",
                 str(tmp_path / "none")]) == 2
    assert "choose part train or test" in capsys.readouterr().err
    assert main(["score", "--checkpoint", str(workspace.checkpoint), "--data", str(real.grading), "--split",
                 str(real.split), "--part", "val", "--out", str(tmp_path / "val")]) == 0
    assert json.loads((tmp_path / "val" / "metrics.json").read_text())["n"] == 5


def test_threshold_is_chosen_for_sensitivity_on_validation_and_recorded_as_val(workspace, real, tmp_path):
    from drdemo.checkpoint import read_config
    checkpoint = _copy_checkpoint(workspace, tmp_path)
    out = tmp_path / "val"
    assert main(["threshold", "--checkpoint", str(checkpoint), "--data", str(real.grading), "--split",
                 str(real.split), "--part", "val", "--out", str(out), "--sensitivity", "0.9", "--record"]) == 0
    config = read_config(checkpoint)
    rows = read_csv(out / "predictions.csv")
    referable = np.array([float(r["referable_probability"]) for r in rows])
    truth = np.array([int(r["grade"]) >= 2 for r in rows])
    threshold = config.referable_threshold
    assert (referable[truth] >= threshold).mean() >= 0.9            # the sensitivity asked for is kept ...
    assert (referable[truth] >= threshold + 0.002).mean() < 0.9 or threshold >= 0.998   # ... at the highest cut
    assert config.metrics["val_n"] == 5 and "test_qwk" not in config.metrics
    # the recorded sensitivity is the one at the chosen threshold, not at the 0.5 the model came with
    assert config.metrics["val_referable_sensitivity"] == round(float((referable[truth] >= threshold).mean()), 4)
    assert config.provenance["confusion_matrices"]["val"] and config.provenance["referable_threshold_choice"]
    card = (checkpoint / "README.md").read_text()
    assert f"Referable threshold {threshold:g}: the highest threshold with referable sensitivity >= 0.9" in card
    assert "Confusion matrix (validation)" in card and card.count("--sensitivity 0.9") == 1


@needs_real_data
def test_ungraded_photos_report_the_share_referred(workspace, tmp_path):
    from real_data import DRIVE

    from drdemo.checkpoint import read_config
    checkpoint = _copy_checkpoint(workspace, tmp_path)
    out = tmp_path / "drive"
    assert main(["referral-share", "--checkpoint", str(checkpoint), "--data", str(DRIVE), "--limit", "3", "--out",
                 str(out), "--record"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    rows = read_csv(out / "predictions.csv")
    assert result["n"] == 3 == len(rows) and result["referred"] == sum(r["referred"] == "True" for r in rows)
    assert read_config(checkpoint).provenance["other_cameras"] == [
        {"data": "drive", "n": 3, "referred": result["referred"], "share": result["share"]}]
    assert "| drive | 3 |" in (checkpoint / "README.md").read_text()


def test_heat_maps_are_scored_on_segmentation_photos_against_both_baselines(workspace, real, tmp_path):
    from drdemo.checkpoint import read_config
    checkpoint = _copy_checkpoint(workspace, tmp_path)
    out = tmp_path / "cam"
    assert main(["cams", "--checkpoint", str(checkpoint), "--data", str(real.segmentation), "--methods",
                 "gradcam", "eigencam", "--road-limit", "1", "--out", str(out), "--record"]) == 0
    cams = json.loads((out / "cam_metrics.json").read_text())
    assert cams["n_images"] == 3 and set(cams["beats_centre"]) == {"gradcam", "eigencam"}
    for baseline in ("random_baseline", "centre_baseline"):
        assert 0 <= cams[baseline]["pointing_game"] <= 1
    assert not (out / "metrics.json").exists() or "qwk" not in json.loads((out / "metrics.json").read_text())
    test = read_config(checkpoint).cam_evaluation["test"]
    assert test["centre_baseline"] == {k: round(v, 4) if isinstance(v, float) else v
                                       for k, v in cams["centre_baseline"].items()}
    assert "| map peaked at the centre of the field of view (baseline) |" in (checkpoint / "README.md").read_text()


def test_segmentation_photos_split_by_their_copies_in_the_grading_set(workspace, real, tmp_path):
    overlap = tmp_path / "overlap.csv"
    overlap.write_text("segmentation_split,segmentation_image,grading_split,grading_image,correlation\n"
                       "a. Training Set,IDRiD_01.jpg,a. Training Set,IDRiD_102.jpg,1.0\n"
                       "a. Training Set,IDRiD_02.jpg,b. Testing Set,IDRiD_009.jpg,1.0\n"
                       "a. Training Set,IDRiD_03.jpg,,,0.88\n")
    for photos, expected in (("copies", 1), ("others", 2)):
        out = tmp_path / photos
        assert main(["cams", "--checkpoint", str(workspace.checkpoint), "--data", str(real.segmentation),
                     "--methods", "gradcam", "--road-limit", "0", "--overlap", str(overlap), "--photos", photos,
                     "--out", str(out)]) == 0
        assert json.loads((out / "cam_metrics.json").read_text())["n_images"] == expected


def test_score_of_a_three_head_checkpoint_adds_the_dme_and_joint_accuracy():
    """`evaluate score` and `evaluate heads` read the DME and joint accuracy from one home (drdemo.metrics)."""
    from drdemo.data import Sample
    from drdemo.evaluate import score
    from drdemo.metrics import joint_accuracy

    heads = {"grade_head": "softmax", "dme_classes": ["No DME", "DME risk 1", "DME risk 2"],
             "lesion_types": ["MA", "HE", "EX", "SE"]}
    config = CheckpointConfig.for_architecture("resnet50", heads=heads, cam_target_layer="backbone.layer4")
    rng = np.random.default_rng(0)
    grades, risks = [0, 1, 2, 3, 4, 2, 0, 4], [0, 0, 1, 2, 2, 0, 0, 2]
    samples = [Sample(f"p{i}", Path(f"p{i}.jpg"), g, f"p{i}", dme=r) for i, (g, r) in enumerate(zip(grades, risks))]
    logits, dme_logits = rng.normal(size=(8, 1, 5)), rng.normal(size=(8, 1, 3))
    metrics, _ = score(config, samples, logits, 1.0, dme_logits)
    expected = joint_accuracy(grades, logits[:, 0], risks, dme_logits[:, 0])
    assert metrics["joint_accuracy"] == pytest.approx(expected)
    assert metrics["dme_accuracy"] == pytest.approx(np.mean(dme_logits[:, 0].argmax(1) == np.asarray(risks)))
    assert "joint_accuracy" not in score(config, samples, logits, 1.0)[0]      # single-head: grading only


@needs_real_data
def test_heads_reports_a_three_head_checkpoint_with_one_or_eight_views(tmp_path, capsys, monkeypatch,
                                                                     untrained_checkpoint):
    """`evaluate heads` end to end on a small copy of IDRiD: the validation and test reports, the page's
    eight-view option reported beside them under its own name, and thresholds never chosen on eight views
    or on a validation part without cases."""
    from real_data import tiny_idrid, tiny_segmentation

    data = tiny_idrid(tmp_path / "idrid" / "B. Disease Grading", per_grade=2, side=128)
    checkpoint = untrained_checkpoint(tmp_path / "checkpoint", three_heads=True, input_size=64)
    by_grade = sorted(load_samples(data, part="train"), key=lambda s: (s.grade, s.image_id))  # two of each grade
    train_ids, val_ids = [s.image_id for s in by_grade[::2]], [s.image_id for s in by_grade[1::2]]
    (checkpoint / "training" / "split.json").write_text(json.dumps({"parts": {"train": train_ids, "val": val_ids}}))
    # three segmentation photos beside it: a copy of a validation photo, of a training photo, of neither
    tiny_segmentation(tmp_path / "idrid" / "A. Segmentation", count=3, side=128)
    (tmp_path / "idrid" / "segmentation_grading_overlap.csv").write_text(
        "segmentation_split,segmentation_image,grading_split,grading_image,correlation\n"
        f"a. Training Set,IDRiD_01.jpg,a. Training Set,{val_ids[0]}.jpg,1.0\n"
        f"a. Training Set,IDRiD_02.jpg,a. Training Set,{train_ids[0]}.jpg,1.0\n"
        "a. Training Set,IDRiD_03.jpg,,,0.88\n")
    monkeypatch.setenv("DRDEMO_CACHE", str(tmp_path / "cache"))
    common = ["heads", "--checkpoint", str(checkpoint), "--data", str(data)]
    assert main([*common, "--part", "val", "--views", "8", "--choose-thresholds"]) == 2
    assert "--views" in capsys.readouterr().err
    assert main([*common, "--part", "val", "--choose-thresholds"]) == 2  # this copy gives every photo DME risk 0
    assert "the validation photos hold no referable DME cases" in capsys.readouterr().err
    assert main([*common, "--part", "val"]) == 0
    assert main([*common, "--part", "test"]) == 0
    assert main([*common, "--part", "test", "--views", "8"]) == 0
    one, eight = (json.loads((checkpoint / "eval" / name).read_text())
                  for name in ("lesion_aware_test.json", "lesion_aware_test_8views.json"))
    assert (one["n"], one["views"], eight["views"]) == (5, 1, 8)
    assert one["referable_threshold"] == eight["referable_threshold"] == 0.5   # the checkpoint's, either way
    # lesion maps: validation on the copy of a validation photo only, the test report on the photos that copy no
    # photo of IDRiD's training part (validation photos included), so the two never share a photo
    val = json.loads((checkpoint / "eval" / "lesion_aware_val.json").read_text())
    assert val["lesion_maps"]["photos"] == ["IDRiD_01"]
    assert one["lesion_maps"]["photos"] == ["IDRiD_03"]
    from drdemo.checkpoint.io import write_card
    card = write_card(checkpoint).read_text()   # the eight views are a column of the card's three-head table
    assert "| validation (5 photos) | test (5 photos) | test, mean of 8 views: the page's test-time option" in card
    assert "Other recorded evaluations" not in card
