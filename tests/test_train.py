"""Training: the loss goes down, an interrupted run resumes exactly, DDP runs with 2 gloo processes."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from drdemo import train
from drdemo.checkpoint import load_model, read_config
from drdemo.data import synthetic
from drdemo.data.augment import Augmentation
from drdemo.predictor import Predictor
from drdemo.train import Distributed, EpochSampler, class_weights, lr_factor

REPO = Path(__file__).resolve().parents[1]


def _eyepacs_folder(root: Path, patients: int, seed: int = 0) -> Path:
    """A tiny EyePACS-layout set where referable eyes (grade 2) carry bright yellow blobs."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    rows = ["image,level"]
    for patient in range(patients):
        for eye in ("left", "right"):
            grade = int(rng.choice([0, 2]))
            image = Image.new("RGB", (96, 96))
            draw = ImageDraw.Draw(image)
            draw.ellipse((6, 6, 90, 90), fill=(int(rng.integers(120, 180)), 60, 30))
            if grade:
                for _ in range(6):
                    x, y = rng.integers(25, 70, size=2)
                    draw.ellipse((x - 5, y - 5, x + 5, y + 5), fill=(240, 230, 90))
            image.save(root / "train" / f"{patient}_{eye}.jpeg", quality=95)
            rows.append(f"{patient}_{eye},{grade}")
    (root / "trainLabels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return _eyepacs_folder(tmp_path_factory.mktemp("eyepacs"), patients=20)


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", "medmamba_t", "--data", str(data), "--out", str(out), "--img-size", "64",
            "--batch-size", "8", "--workers", "0", "--threads", "1", *extra]


def _no_augmentation(monkeypatch) -> None:
    monkeypatch.setitem(train.PRESETS, "drdemo", train.Recipe(augmentation=Augmentation()))


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    factors = [lr_factor(step, 100, 10, "cosine", 0.01) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert factors[-1] == pytest.approx(0.01, abs=1e-3)
    assert lr_factor(50, 100, 0, "constant", 0.01) == 1.0


def test_epoch_sampler_shards_one_permutation_and_resumes_mid_epoch():
    ranks = [EpochSampler(20, 3, seed=1, dist_info=Distributed(rank=r, world_size=2)) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(4)
    shards = [list(s) for s in ranks]
    assert all(len(s) == 9 for s in shards)             # 10 per rank, cut to 3 whole batches
    assert not set(shards[0]) & set(shards[1])          # the ranks see different images
    ranks[0].set_epoch(4, start_batch=2)
    assert list(ranks[0]) == shards[0][6:]              # resuming skips the batches already seen
    ranks[1].set_epoch(5)
    assert list(ranks[1]) != shards[1]                  # a new epoch, a new order


def test_class_weights_balance_the_label_counts(tiny_data):
    from drdemo.data import load_samples
    samples = load_samples(tiny_data)
    weights = class_weights(samples, "icdr5")
    counts = np.bincount([s.grade for s in samples], minlength=5)
    assert weights[1] == 0 and weights[3] == 0 and weights[4] == 0     # absent grades
    assert float(weights[0] * counts[0]) == pytest.approx(float(weights[2] * counts[2]))


def test_training_lowers_the_loss_and_writes_a_checkpoint(tiny_data, tmp_path, monkeypatch):
    _no_augmentation(monkeypatch)
    out = tmp_path / "run"
    assert train.main(_args(tiny_data, out, "--epochs", "6", "--lr", "2e-3", "--warmup-epochs", "0.5",
                            "--task", "referable")) == 0
    epochs = [json.loads(line) for line in (out / "training" / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r["event"] == "epoch"]
    assert len(epochs) == 6
    assert epochs[-1]["train_loss"] < 0.8 * epochs[0]["train_loss"]
    assert min(r["val_loss"] for r in epochs) < math.log(2)  # better than chance on held-out patients
    config = read_config(out)
    assert config.task == "referable" and config.input_size == 64 and config.trained
    assert config.preprocessing == {"interpolation": "bicubic", "crop_fov": True, "local_contrast": 0.0,
                                    "colour_balance": False}
    assert "python -m drdemo.train --model medmamba_t" in config.provenance["command"]
    assert config.metrics["val_qwk"] == pytest.approx(max(r["val_qwk"] for r in epochs), abs=1e-4)
    assert (out / "README.md").read_text().count("val_qwk") >= 1
    assert (out / "training" / "curves.png").stat().st_size > 1000
    split = json.loads((out / "training" / "split.json").read_text())["parts"]
    patients = [{i.split("_")[0] for i in ids} for ids in split.values()]
    assert not patients[0] & patients[1]                 # a patient's two eyes stay in one part


def test_an_interrupted_run_resumes_exactly(tiny_data, tmp_path, monkeypatch):
    """Interrupt mid-epoch, resume: the weights and their moving average equal those of a run that was never
    interrupted. (With a moving average the state holds everything a run without one does, and more: one run
    covers both; each run saves its whole state at every step, the slow part of this test.)"""
    _no_augmentation(monkeypatch)
    extra = ("--epochs", "2", "--save-every-minutes", "0", "--ema", "0.9")  # 0: save every step
    straight = tmp_path / "straight"
    assert train.main(_args(tiny_data, straight, *extra)) == 0

    calls = {"n": 0}
    original_clip = torch.nn.utils.clip_grad_norm_

    def clip_then_crash(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # step 6 of 8: the middle of the second epoch
            raise KeyboardInterrupt
        return original_clip(*args, **kwargs)

    interrupted = tmp_path / "interrupted"
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train.main(_args(tiny_data, interrupted, *extra))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", original_clip)
    state = torch.load(interrupted / "training" / "state.pt", weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 1, 5)

    assert train.main(_args(tiny_data, interrupted, *extra, "--resume")) == 0
    states = {name: torch.load(run / "training" / "state.pt", weights_only=True)
              for name, run in (("straight", straight), ("resumed", interrupted))}
    for part in ("model", "ema"):
        for key, value in states["straight"][part].items():
            torch.testing.assert_close(states["resumed"][part][key], value, rtol=0, atol=1e-6, msg=f"{part} {key}")
    saved = load_file(interrupted / "model.safetensors")
    assert saved.keys() == load_file(straight / "model.safetensors").keys()
    assert int(states["resumed"]["ema"]["n_averaged"]) == 8      # one update per step


def test_with_ema_the_checkpoint_holds_the_moving_average(tiny_data, tmp_path, monkeypatch):
    _no_augmentation(monkeypatch)
    out = tmp_path / "run"
    assert train.main(_args(tiny_data, out, "--epochs", "1", "--lr", "2e-3", "--ema", "0.5")) == 0
    state = torch.load(out / "training" / "state.pt", weights_only=True)
    averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"}
    saved = load_file(out / "model.safetensors")
    assert saved.keys() == averaged.keys() == state["model"].keys()
    moved = [k for k, v in saved.items() if v.ndim == 4 and not torch.equal(averaged[k], state["model"][k])]
    assert moved                                                  # the average is not the last step's weights
    for key in moved:
        torch.testing.assert_close(saved[key].float(), averaged[key].half().float())
    assert read_config(out).provenance["recipe"]["ema_decay"] == 0.5


def test_cli_refuses_bad_arguments_and_occupied_folders(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit) as bad_size:
        train.main(_args(tiny_data, tmp_path / "a", "--img-size", "8"))
    assert bad_size.value.code == 2 and "--img-size must be in [64, 1024]" in capsys.readouterr().err
    assert train.main(_args(tiny_data, tmp_path / "b", "--resume")) == 2
    err = capsys.readouterr().err
    assert "no run to continue" in err and "Traceback" not in err
    occupied = tmp_path / "c"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    assert train.main(_args(tiny_data, occupied)) == 2
    assert "is not empty" in capsys.readouterr().err
    for flags, message in ((("--lesion-loss-weight", "-1"), "--lesion-loss-weight must be >= 0"),
                           (("--threads", "0"), "--threads must be at least 1"),
                           (("--distill-lesions",), "lesion maps: pass --teacher")):
        with pytest.raises(SystemExit) as refused:
            train.main(_args(tiny_data, tmp_path / "e", *flags))
        assert refused.value.code == 2 and message in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train.main(_args(empty, tmp_path / "d")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


def test_torchrun_trains_with_two_gloo_processes(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "drdemo.train",
         *_args(tiny_data, out, "--epochs", "1", "--batch-size", "4", "--threads", "1")],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stderr
    config = read_config(out)
    assert config.provenance["processes"] == 2
    assert config.provenance["command"].startswith("torchrun --nproc_per_node 2 -m drdemo.train --model medmamba_t")
    log = [json.loads(line) for line in (out / "training" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["event"] == "epoch"] == [1]     # written once, by rank 0


def test_init_from_starts_at_a_saved_checkpoint(tiny_data, tmp_path, monkeypatch):
    _no_augmentation(monkeypatch)
    first = tmp_path / "first"
    assert train.main(_args(tiny_data, first, "--epochs", "1")) == 0
    second = tmp_path / "second"
    assert train.main(_args(tiny_data, second, "--epochs", "1", "--init-from", str(first))) == 0
    config, source = read_config(second), read_config(first)
    assert (config.mean, config.std) == (source.mean, source.std)
    assert config.provenance["initialised_from"] == str(first)
    assert config.provenance["initialised_from_provenance"] == source.provenance  # nested as is, not a string
    card = (second / "README.md").read_text()      # both runs' commands, in order, so the card reproduces it
    first_command, second_command = source.provenance["command"], config.provenance["command"]
    assert "# Training, stage 1 of 2" in card and "# Training, stage 2 of 2" in card
    assert "Each training stage continues from the weights of the stage listed before it" in card
    assert card.index(first_command + "\n") < card.index(second_command)
    wrong_task = train.main(_args(tiny_data, tmp_path / "third", "--task", "binary", "--init-from", str(first)))
    assert wrong_task == 2


def test_inception_trains_with_its_auxiliary_head_in_channels_last_and_serves(tmp_path, monkeypatch):
    """The InceptionV3 path: the auxiliary loss, channels-last layout, a contiguous checkpoint that serves."""
    _no_augmentation(monkeypatch)
    seen_formats, auxiliary_losses = [], []
    original_loss = train.Trainer._loss

    def recording_loss(self, output, targets):
        seen_formats.append(self.model.Conv2d_1a_3x3.conv.weight.is_contiguous(memory_format=torch.channels_last))
        auxiliary_losses.append(output.aux_logits is not None)
        return original_loss(self, output, targets)

    monkeypatch.setattr(train.Trainer, "_loss", recording_loss)
    data = _eyepacs_folder(tmp_path / "data", patients=6, seed=1)
    out = tmp_path / "inception"
    assert train.main(["--model", "inception_v3", "--data", str(data), "--out", str(out), "--batch-size", "4",
                       "--epochs", "1", "--workers", "0", "--threads", "2", "--task", "referable"]) == 0
    assert seen_formats and all(seen_formats) and all(auxiliary_losses)
    loaded = load_model(out)
    assert loaded.config.architecture == "inception_v3" and loaded.config.input_size == 299
    image = Image.open(next((data / "train").iterdir()))
    probabilities = Predictor(loaded.model, loaded.config).predict(image).probabilities
    assert list(probabilities) == list(loaded.config.class_names)
    assert sum(probabilities.values()) == pytest.approx(1.0)


def test_the_recorded_data_command_remakes_the_training_folder(tmp_path, monkeypatch):
    """The card's data command names the folder as the training command does and remakes it byte for byte."""
    monkeypatch.chdir(tmp_path)
    assert synthetic.main(["--out", "data/synth", "--n", "3", "--seed", "7", "--size", "128"]) == 0
    command = shlex.split(train._data_command(Path("data/synth")))
    assert command[:3] == ["python", "-m", "drdemo.data.synthetic"]
    assert command[command.index("--out") + 1] == "data/synth"
    command[command.index("--out") + 1] = "again"
    assert synthetic.main(command[3:]) == 0
    made = sorted(p.relative_to("data/synth") for p in Path("data/synth").rglob("*") if p.is_file())
    assert made and made == sorted(p.relative_to("again") for p in Path("again").rglob("*") if p.is_file())
    assert all((Path("data/synth") / p).read_bytes() == (Path("again") / p).read_bytes() for p in made)


# ---------------------------------------------------------------------------------------------- real photos

@pytest.fixture(scope="module")
def real_subset(tmp_path_factory):
    from real_data import skip_without_real_data, tiny_idrid
    skip_without_real_data()
    return tiny_idrid(tmp_path_factory.mktemp("idrid") / "B. Disease Grading")


def test_the_real_recipe_trains_on_idrid_train_only_with_local_contrast(real_subset, tmp_path):
    start = tmp_path / "synthetic-start"
    torch.manual_seed(0)
    from drdemo.checkpoint import CheckpointConfig, save_checkpoint
    from drdemo.models import create_model
    save_checkpoint(create_model("medmamba_t", num_classes=5),
                    CheckpointConfig.for_architecture("medmamba_t", input_size=64, mean=(0.6, 0.3, 0.1),
                                                      std=(0.2, 0.1, 0.05), provenance={"trained": True,
                                                                                        "data": "synthetic"}), start)
    out = tmp_path / "run"
    assert train.main(_args(real_subset, out, "--preset", "real", "--epochs", "1", "--val-fraction", "0.3",
                            "--cpu-bf16", "--init-from", str(start))) == 0
    config = read_config(out)
    split = json.loads((out / "training" / "split.json").read_text())
    assert split["layout"] == "idrid" and split["part"] == "train"
    assert sum(map(len, split["parts"].values())) == 15           # the 15 training photos; the test ones never
    assert config.preprocessing["local_contrast"] == pytest.approx(0.0167)
    # local contrast changed what the network sees, so the statistics were measured, not kept from the start
    assert config.mean != (0.6, 0.3, 0.1) and all(abs(m - 0.5) < 0.05 for m in config.mean)
    assert "IDRiD" in config.provenance["data"] and "--cpu-bf16" in config.provenance["command"]
    card = (out / "README.md").read_text()
    assert "doi:10.21227/H25W98, licensed CC BY 4.0" in card and "Kowa VX-10 alpha" in card
    loaded = load_model(out)
    assert Predictor.from_loaded(loaded).predict(Image.new("RGB", (80, 80), (150, 70, 30))).grade in range(5)


def test_train_refuses_a_bad_local_contrast(tiny_data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(_args(tiny_data, tmp_path / "x", "--local-contrast", "0.9"))
    assert "--local-contrast must be in [0, 0.5]" in capsys.readouterr().err


def test_split_seed_keeps_one_validation_part_across_training_seeds(tiny_data, tmp_path):
    runs = iter(range(100))

    def split(seed: int, split_seed: int | None) -> dict[str, list[str]]:
        options = train.RunOptions(model="medmamba_t", data=tiny_data, out=tmp_path / f"run_{next(runs)}",
                                   seed=seed, split_seed=split_seed, img_size=64, workers=0)
        parts = train.Trainer(options, train.PRESETS["drdemo"]).parts
        return {name: [s.image_id for s in part] for name, part in parts.items()}

    assert split(1, 0) == split(2, 0) == split(0, None)  # what a soup of seeds 1 and 2 needs
    assert split(1, None) != split(0, None)               # without it, the seed draws the split too
    saved = json.loads((tmp_path / "run_1" / "training" / "split.json").read_text())  # seed 2, split seed 0
    assert saved["seed"] == 0


def test_torchrun_distils_from_teacher_targets_the_main_process_wrote(real_subset, tmp_path, untrained_checkpoint):
    """Under torchrun, rank 0 computes the teacher's probabilities once and writes them whole; the other rank
    waits for the file and reads it, instead of writing the same file at the same time."""
    from real_data import IDRID_OVERLAP, IDRID_SEGMENTATION

    teacher = untrained_checkpoint(tmp_path / "teacher", three_heads=True, input_size=64)
    out = tmp_path / "student"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "drdemo.train",
         *_args(real_subset, out, "--preset", "distill", "--teacher", str(teacher), "--epochs", "1",
                "--batch-size", "4", "--val-fraction", "0.3", "--lesion-data", str(IDRID_SEGMENTATION),
                "--lesion-overlap", str(IDRID_OVERLAP), "--cache-dir", str(tmp_path / "cache"))],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert result.returncode == 0, "\n".join(errors)[-3000:]
    assert result.stderr.count(f"teacher {teacher}: its probabilities") == 1
    split = json.loads((out / "training" / "split.json").read_text())["parts"]
    with np.load(out / "training" / "teacher_targets.npz") as targets:
        assert targets["ids"].tolist() == split["train"] and targets["grade"].shape == (len(split["train"]), 5)
    assert not list((out / "training").glob("*.tmp.*"))
    assert read_config(out).provenance["distillation"]["teacher"] == str(teacher)


def test_class_weights_of_the_grades_and_of_the_dme_risk_are_separate_choices(tmp_path):
    from drdemo.train.cli import build_parser, recipe_from_args
    args = _args(tmp_path, tmp_path / "out", "--preset", "imagenet")
    default = recipe_from_args(build_parser().parse_args(args))
    assert default.class_weights and default.dme_class_weights
    grades_only = recipe_from_args(build_parser().parse_args([*args, "--no-class-weights"]))
    assert not grades_only.class_weights and grades_only.dme_class_weights   # the served InceptionV3's recipe
    neither = recipe_from_args(build_parser().parse_args([*args, "--no-class-weights", "--no-dme-class-weights"]))
    assert not neither.class_weights and not neither.dme_class_weights


def test_colour_balance_follows_the_preset_unless_named(tmp_path):
    from drdemo.train.cli import build_parser, recipe_from_args
    args = _args(tmp_path, tmp_path / "out", "--preset", "imagenet")
    assert recipe_from_args(build_parser().parse_args(args)).colour_balance
    assert not recipe_from_args(build_parser().parse_args([*args, "--no-colour-balance"])).colour_balance
    plain = _args(tmp_path, tmp_path / "out", "--preset", "real")
    assert not recipe_from_args(build_parser().parse_args(plain)).colour_balance
    assert recipe_from_args(build_parser().parse_args([*plain, "--colour-balance"])).colour_balance
