"""`python -m drdemo.evaluate cams` end to end on a tiny synthetic set and an untrained tiny-input model."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drdemo.cam.methods import CAM_METHOD_NAMES
from drdemo.checkpoint import CheckpointConfig, read_config, save_checkpoint
from drdemo.data import load_samples
from drdemo.data.lesions import lesion_union, load_lesion_samples
from drdemo.data.synthetic import write_dataset
from drdemo.evaluate import main
from drdemo.models import create_model
from drdemo.preprocess import prepare_mask

# Tiny inputs: one torch thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cam")
    data = write_dataset(root / "data", n=6, seed=3, size=160, workers=1, progress=False)
    torch.manual_seed(0)
    config = CheckpointConfig.for_architecture("medmamba_t", input_size=64, cam_method="gradcam++")
    checkpoint = save_checkpoint(create_model("medmamba_t", num_classes=5), config, root / "checkpoint")
    return root, Path(data), checkpoint


def test_cam_run_scores_every_method_against_the_random_baseline(workspace):
    root, data, checkpoint = workspace
    out = root / "out"
    given = ["--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out)]
    assert main(["score", *given]) == 0
    assert main(["cams", *given, "--methods", "gradcam", "gradcam++", "eigencam", "--limit", "3",
                 "--road-limit", "1"]) == 0
    cams = json.loads((out / "cam_metrics.json").read_text())
    assert set(cams["methods"]) == {"gradcam", "gradcam++", "eigencam"}
    assert cams["default_method"] == "gradcam++"
    assert cams["pointing_game"] == cams["methods"]["gradcam++"]["pointing_game"]
    with_lesions = [s for s in load_samples(data) if s.grade >= 1]
    assert cams["n_images"] == min(3, len(with_lesions)) and cams["n_images_road"] == 1
    for scores in [*cams["methods"].values(), cams["random_baseline"]]:
        assert 0.0 <= scores["pointing_game"] <= 1.0 and 0.0 <= scores["energy_pointing_game"] <= 1.0
        assert isinstance(scores["road_combined"], float)
    assert 0 < cams["mask_area_share"] < 1 and cams["pointing_tolerance_px"] == 4
    # The CAM's forward pass grades as evaluate's does: the images it calls diseased are the same.
    rows = csv.DictReader((out / "predictions.csv").read_text().splitlines())
    predicted = {row["image_id"]: int(row["predicted"]) for row in rows}
    assert cams["n_images_graded_dr"] == sum(predicted[s.image_id] != 0 for s in with_lesions[:3])
    for scores in cams["methods"].values():
        if cams["n_images_graded_dr"] == 0:
            assert scores["pointing_game_graded_dr"] is None
        elif cams["n_images_graded_dr"] == cams["n_images"]:
            assert scores["pointing_game_graded_dr"] == scores["pointing_game"]
        else:
            assert 0.0 <= scores["pointing_game_graded_dr"] <= 1.0
    with Image.open(out / "cam_grid.png") as grid:
        assert grid.format == "PNG" and grid.width > 500


def test_masks_follow_the_models_crop_and_resize(workspace):
    _, data, _ = workspace
    sample = next(s for s in load_lesion_samples(data) if s.grade >= 2)
    with Image.open(sample.path) as image:
        image.load()
        union = lesion_union(sample, image.size)
        moved = prepare_mask(union, image, 64, crop_fov=True)
    assert moved.shape == (64, 64) and moved.any()
    # every lesion pixel lies inside the field of view, which the crop keeps: nothing is lost at the border
    assert moved.mean() >= 0.5 * union.mean()


def test_cam_needs_lesion_masks(workspace, tmp_path, capsys):
    root, data, checkpoint = workspace
    plain = tmp_path / "plain"
    (plain / "train").mkdir(parents=True)
    Image.fromarray(np.full((80, 80, 3), 120, np.uint8)).save(plain / "train" / "1_left.jpeg")
    (plain / "trainLabels.csv").write_text("image,level\n1_left,2\n")
    assert main(["cams", "--checkpoint", str(checkpoint), "--data", str(plain), "--out", str(tmp_path / "o")]) == 2
    assert "needs lesion masks" in capsys.readouterr().err


def test_layers_are_compared_and_the_best_becomes_the_default(workspace, tmp_path):
    root, data, checkpoint = workspace
    folder = tmp_path / "checkpoint"
    shutil.copytree(checkpoint, folder)
    out = tmp_path / "choose"
    layers = ["layers.3", "layers.2.blocks.1"]
    assert main(["cams", "--checkpoint", str(folder), "--data", str(data), "--out", str(out), "--methods",
                 "gradcam", "eigencam", "--layers", *layers, "--limit", "3", "--road-limit", "0",
                 "--choose-default"]) == 0
    cams = json.loads((out / "cam_metrics.json").read_text())
    assert set(cams["layers"]) == set(layers)
    assert all(set(table) == {"gradcam", "eigencam"} for table in cams["layers"].values())
    best = cams["best"]
    centre = cams["centre_baseline"]["pointing_game"]   # a pointing game at or below a centred blob's does not count

    def rank(row: dict) -> tuple[float, float]:
        return max(row["pointing_game"], centre), row["energy_pointing_game"]
    assert rank(best) == max(rank(v) for t in cams["layers"].values() for v in t.values())
    config = read_config(folder)
    assert (config.cam_target_layer, config.cam_method) == (best["layer"], best["method"])
    selection = config.cam_evaluation["selection"]
    assert selection["pointing_game"][best["layer"]][best["method"]] == round(best["pointing_game"], 4)
    assert "test" not in config.cam_evaluation         # chosen here, so nothing is reported on these images

    assert main(["cams", "--checkpoint", str(folder), "--data", str(data), "--out", str(tmp_path / "test"),
                 "--methods", "gradcam", "eigencam", "--limit", "3", "--road-limit", "1", "--record"]) == 0
    recorded = read_config(folder)
    test = recorded.cam_evaluation["test"]
    assert "test_qwk" not in recorded.metrics          # a heat map run records heat maps only
    assert test["layer"] == best["layer"] and set(test["methods"]) == {"gradcam", "eigencam"}
    card = (folder / "README.md").read_text()
    assert "## Explanations (Grad-CAM)" in card and "| random map (baseline) |" in card
    assert "except EigenCAM, which shows where the layer responds most strongly whatever the class" in card
    assert f"{CAM_METHOD_NAMES[best['method']]} (default) |" in card and "was chosen by the pointing game" in card
    assert '| pointing game, not graded "No DR" |' in card and test["n_images_graded_dr"] <= test["n_images"]


def test_cams_need_a_real_layer_and_a_local_folder_to_choose_in(workspace, tmp_path, capsys):
    root, data, checkpoint = workspace
    assert main(["cams", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(tmp_path / "b"),
                 "--layers", "layers.9"]) == 2
    assert "--layers: " in capsys.readouterr().err
    assert main(["cams", "--checkpoint", "org/remote", "--data", str(data), "--out", str(tmp_path / "c"),
                 "--choose-default"]) == 2
    assert "cams writes into a local checkpoint folder" in capsys.readouterr().err
