"""drdemo.train.lesion_head: a lesion decoder refitted on other layers, everything else frozen and unchanged."""

import json

import numpy as np
import pytest
import torch
from test_lesions import make_segmentation

from drdemo.checkpoint import load_model, read_config, record_grading
from drdemo.checkpoint.io import read_weights
from drdemo.models.heads import FusedLesionDecoder, LesionDecoder
from drdemo.train.lesion_head import LesionHeadRecipe, fit_lesion_head, main, masked_dataset, refit_model

LAYERS = ["layer1", "layer2", "layer3"]
TRAIN, TEST = "a. Training Set", "b. Testing Set"


def _idrid_like(tmp_path):
    """Six segmentation photos, four copying training-part grading photos, one a validation photo, one copying
    nothing (a test report photo, never read); the overlap CSV and the source's split."""
    boxes = {"01": {"EX": (40, 20, 48, 28)}, "02": {"HE": (30, 30, 40, 40)}, "03": {"EX": (44, 30, 52, 38)},
             "04": {"HE": (26, 22, 34, 30), "EX": (50, 36, 56, 42)}, "05": {"EX": (36, 26, 44, 34)},
             "06": {"HE": (40, 40, 48, 48)}}
    segmentation = make_segmentation(tmp_path / "A. Segmentation", {(TRAIN, n): b for n, b in boxes.items()})
    copies = {"01": "101", "02": "102", "03": "103", "04": "104", "05": "105"}
    overlap = tmp_path / "overlap.csv"
    overlap.write_text("segmentation_split,segmentation_image,grading_split,grading_image,correlation\n" + "".join(
        f"{TRAIN},IDRiD_{n}.jpg,{TRAIN if n in copies else ''},{f'IDRiD_{copies[n]}.jpg' if n in copies else ''},"
        f"{1.0 if n in copies else 0.8}\n" for n in boxes))
    split = {"train": ["IDRiD_101", "IDRiD_102", "IDRiD_103", "IDRiD_104"], "val": ["IDRiD_105"]}
    return segmentation, overlap, split


def test_only_the_new_decoder_trains_and_its_loss_falls_while_the_grades_stay(tmp_path, untrained_checkpoint,
                                                                             one_torch_thread):
    source = untrained_checkpoint(tmp_path / "source", "resnet50", three_heads=True, input_size=64)
    config, state = read_config(source), read_weights(source)
    assert isinstance(load_model(source, device="cpu").model.lesion_head, LesionDecoder)
    model = refit_model(config, state, LAYERS)
    assert isinstance(model.lesion_head, FusedLesionDecoder)
    torch.manual_seed(123)   # whatever the global generator holds, the seed alone decides the new decoder
    again, other = refit_model(config, state, LAYERS), refit_model(config, state, LAYERS, seed=1)
    decoder = model.lesion_head.state_dict()
    assert all(torch.equal(v, again.lesion_head.state_dict()[k]) for k, v in decoder.items())
    assert not all(torch.equal(v, other.lesion_head.state_dict()[k]) for k, v in decoder.items())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("lesion_head.")}
    segmentation, overlap, _ = _idrid_like(tmp_path)
    from drdemo.data.lesions import load_lesion_samples
    dataset = masked_dataset(load_lesion_samples(segmentation)[:4], config)
    images = torch.stack([dataset[i][0] for i in range(4)])
    before = model(images)
    losses = fit_lesion_head(model, dataset, LesionHeadRecipe(epochs=60, lr=3e-3, batch_size=4))
    after = model(images)
    assert losses[-1] < 0.5 * losses[0]
    assert torch.equal(before.logits, after.logits) and torch.equal(before.dme_logits, after.dme_logits)
    frozen = {k: v for k, v in model.state_dict().items() if not k.startswith("lesion_head.")}
    assert all(torch.equal(frozen[k], state[k].float() if state[k].is_floating_point() else state[k]) for k in frozen)


def test_the_cli_writes_a_checkpoint_that_loads_grades_as_before_and_drops_old_lesion_records(
        tmp_path, untrained_checkpoint, one_torch_thread):
    source = untrained_checkpoint(tmp_path / "source", "resnet50", three_heads=True, input_size=64)
    segmentation, overlap, split = _idrid_like(tmp_path)
    (source / "training").mkdir(exist_ok=True)
    (source / "training" / "split.json").write_text(json.dumps({"parts": split}))
    record_grading(source, {"qwk": 0.61, "accuracy": 0.57, "n": 103, "confusion_matrix": [[1]]},
                   "103 photos of IDRiD's test part", "evaluate")
    (source / "eval" / "lesion_aware_test.json").write_text(json.dumps({"qwk": 0.5, "lesion_maps": {"n": 22}}))
    (source / "eval" / "other.json").write_text(json.dumps({"qwk": 0.5}))
    out = tmp_path / "refit"
    code = main(["--checkpoint", str(source), "--layers", *LAYERS, "--out", str(out), "--segmentation",
                 str(segmentation), "--overlap", str(overlap), "--epochs", "2", "--batch-size", "2"])
    assert code == 0
    refitted, original = load_model(out, device="cpu"), load_model(source, device="cpu")
    assert refitted.config.heads["lesion_layers"] == LAYERS and "lesion_layers" not in original.config.heads
    photo = torch.randn(1, 3, 64, 64)
    assert torch.equal(refitted.model(photo).logits, original.model(photo).logits)
    assert refitted.model(photo).lesion_logits.shape == (1, 4, 16, 16)   # layer1: 1/4 of the input
    stage = refitted.config.provenance
    assert stage["initialised_from"] == str(source) and stage["recipe"]["lesion_layers"] == LAYERS
    assert [row["epoch"] for row in stage["lesion_head_validation"]] == [1, 2]
    assert "copy 4 of those training photos" in stage["data"]     # 01-04; 05 copies the validation photo, 06 nothing
    assert not (out / "eval" / "lesion_aware_test.json").exists() and (out / "eval" / "other.json").exists()
    kept, before = (json.loads((folder / "eval" / "test.json").read_text()) for folder in (out, source))
    assert (kept["data"], kept["command"], kept["results"]) == (before["data"], before["command"], before["results"])
    assert refitted.config.metrics["test_qwk"] == 0.61
    assert np.isfinite(stage["lesion_head_validation"][-1]["loss"])

    again = tmp_path / "again"     # a refit of the refit: the first decoder is discarded, and so is its stage
    assert main(["--checkpoint", str(out), "--layers", "layer1", "--out", str(again), "--segmentation",
                 str(segmentation), "--overlap", str(overlap), "--epochs", "1", "--batch-size", "2"]) == 0
    stage = read_config(again).provenance
    assert stage["initialised_from"] == str(out) and stage["recipe"]["lesion_layers"] == ["layer1"]
    assert stage["initialised_from_provenance"] == original.config.provenance
    assert stage["data"].count("then the lesion decoder alone") == 1


def test_bad_arguments_get_a_message_not_a_traceback(tmp_path, untrained_checkpoint, capsys):
    source = untrained_checkpoint(tmp_path / "source", "resnet50", three_heads=True, input_size=64)
    segmentation, overlap, split = _idrid_like(tmp_path)
    (source / "training").mkdir(exist_ok=True)
    (source / "training" / "split.json").write_text(json.dumps({"parts": split}))
    args = ["--checkpoint", str(source), "--out", str(tmp_path / "out"), "--segmentation", str(segmentation),
            "--overlap", str(overlap)]
    assert main([*args, "--layers", "layer9"]) == 2
    assert "layer9" in capsys.readouterr().err
    with pytest.raises(SystemExit) as no_threads:      # torch's own check would end in a traceback
        main([*args, "--layers", "layer1", "--threads", "-1"])
    assert no_threads.value.code == 2 and "--threads must be at least 1" in capsys.readouterr().err
    single = untrained_checkpoint(tmp_path / "single", "resnet50", input_size=64)
    assert main(["--checkpoint", str(single), *args[2:], "--layers", "layer1"]) == 2
    assert "single-head" in capsys.readouterr().err
    (source / "training" / "split.json").unlink()
    assert main([*args, "--layers", "layer1"]) == 2
    assert "split.json is missing" in capsys.readouterr().err


def test_a_teacher_maps_the_training_photos_without_drawn_masks(tmp_path, untrained_checkpoint, one_torch_thread):
    from test_datasets import make_idrid
    grading = make_idrid(tmp_path / "B. Disease Grading")           # training photos IDRiD_001 ... 003
    segmentation = make_segmentation(tmp_path / "A. Segmentation", {
        (TRAIN, "01"): {"EX": (40, 20, 48, 28)}, (TRAIN, "02"): {"HE": (30, 30, 40, 40)},
        (TRAIN, "03"): {"EX": (36, 26, 44, 34)}})
    overlap = tmp_path / "overlap.csv"
    overlap.write_text("segmentation_split,segmentation_image,grading_split,grading_image,correlation\n"
                       f"{TRAIN},IDRiD_01.jpg,{TRAIN},IDRiD_001.jpg,1.0\n{TRAIN},IDRiD_02.jpg,{TRAIN},IDRiD_003.jpg,1.0\n"
                       f"{TRAIN},IDRiD_03.jpg,,,0.8\n")
    source = untrained_checkpoint(tmp_path / "source", "resnet50", three_heads=True, input_size=64)
    teacher = untrained_checkpoint(tmp_path / "teacher", "resnet50", seed=1, three_heads=True, input_size=64)
    (source / "training").mkdir(exist_ok=True)
    (source / "training" / "split.json").write_text(json.dumps(
        {"data": str(grading), "parts": {"train": ["IDRiD_001", "IDRiD_002"], "val": ["IDRiD_003"]}}))
    out = tmp_path / "refit"
    assert main(["--checkpoint", str(source), "--layers", "layer1", "--out", str(out), "--segmentation",
                 str(segmentation), "--overlap", str(overlap), "--teacher", str(teacher), "--epochs", "1",
                 "--batch-size", "2"]) == 0
    stage = load_model(out, device="cpu").config.provenance
    # IDRiD_001 has drawn masks (segmentation copy 01); IDRiD_002 has none, so it learns the teacher's maps;
    # IDRiD_003 is a validation photo and segmentation photo 03 copies no training photo: neither is learned
    assert stage["distillation"]["photos"] == 1 and stage["distillation"]["teacher"] == str(teacher)
    assert "copy 1 of those training photos" in stage["data"] and "its 1 other training photos" in stage["data"]


def test_a_refit_of_a_refit_moves_masks_with_the_networks_own_augmentation():
    from drdemo.checkpoint import CheckpointConfig
    from drdemo.train.lesion_head import source_recipe
    from drdemo.train.recipes import PRESETS
    distilled = {"trained": True, "recipe": {"preset": "distill"}}
    refitted = {"trained": True, "recipe": {"preset": "lesion_head"}, "initialised_from_provenance": distilled}
    assert source_recipe(CheckpointConfig.for_architecture("resnet50", provenance=refitted)) is PRESETS["distill"]
    assert source_recipe(CheckpointConfig.for_architecture("resnet50")) is PRESETS["lesions"]
