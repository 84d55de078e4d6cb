"""Average the weights of checkpoints fine-tuned from the same start: a "model soup".

Fine-tuning runs that start from the same weights, new heads included, and differ in their schedule or
data order usually end in one basin of the loss, where the average of their weights grades about as
well as the ensemble of the runs, at the cost of one model (Wortsman et al. 2022, "Model soups", ICML).
The app's latency is unchanged, unlike an ensemble's. Measured on IDRiD (checkpoints/README.md): two
InceptionV3 runs with one seed (so their new heads started alike), 10 and 16 epochs, average to their
ensemble's validation numbers; three runs with different seeds (heads started differently) do not.

    python -m drdemo.train.soup --out FOLDER CHECKPOINT CHECKPOINT [...] [--weights 1 1 ...]

Every ingredient must be the same network with the same contract (architecture, classes, input
size, normalisation, preprocessing, heads, builder options) and must have started from the same
pretrained weights; a soup of runs trained from different random starts is refused, since their
average is no model at all. The soup keeps the first ingredient's config without the choices made
on validation (thresholds, calibration, CAM default, metrics): evaluate it again before serving it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from drdemo.checkpoint import CheckpointConfig, CheckpointError, build_model, save_checkpoint
from drdemo.checkpoint.config import training_stages
from drdemo.checkpoint.io import code_commit, read_config, read_weights
from drdemo.errors import DrdemoError
from drdemo.models import model_defaults
from drdemo.train.command import recorded_command
from drdemo.train.trainer import SPLIT_NAME

# What must be equal in every ingredient's config.json for their weights to be averaged. Of `heads`, the served
# grade head (softmax or ordinal) is a choice on validation, not the network: both heads are in every three-head
# model, and the soup serves the first ingredient's until its validation is run again.
CONTRACT_FIELDS = ("architecture", "num_classes", "class_names", "task", "input_size", "mean", "std",
                   "preprocessing", "heads", "model_options")
SERVING_CHOICES = {"heads": ("grade_head",)}


def _contract_value(config: CheckpointConfig, name: str):
    value = getattr(config, name)
    if name in SERVING_CHOICES and isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in SERVING_CHOICES[name]}
    if name == "heads" and value:  # a config naming no lesion layers reads the architecture's default one
        value = {"lesion_layers": [model_defaults(config.architecture).lesion_layer], **value}
    return value


def average_states(states: Sequence[dict[str, torch.Tensor]],
                   weights: Sequence[float] | None = None) -> dict[str, torch.Tensor]:
    """The weighted mean of state dicts with the same keys and shapes (weights normalised to sum 1;
    default equal). Floating tensors, BatchNorm statistics included, are averaged in float64;
    integer ones (BatchNorm's step counters) must agree or take the first ingredient's value."""
    if not states:
        raise ValueError("average_states needs at least one state dict")
    weights = [1.0] * len(states) if weights is None else [float(w) for w in weights]
    if len(weights) != len(states) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be {len(states)} non-negative numbers with a positive sum, got {weights}")
    total = sum(weights)
    keys = list(states[0])
    for number, state in enumerate(states[1:], 2):
        if set(state) != set(keys):
            difference = sorted(set(state) ^ set(keys))
            raise ValueError(f"ingredient {number} has other tensors than the first, e.g. {difference[:3]}")
    averaged = {}
    for key in keys:
        tensors = [state[key] for state in states]
        if any(t.shape != tensors[0].shape for t in tensors):
            raise ValueError(f"{key}: shapes differ across ingredients ({[list(t.shape) for t in tensors]})")
        if tensors[0].is_floating_point():
            mean = sum(t.double() * (w / total) for t, w in zip(tensors, weights))
            averaged[key] = mean.to(tensors[0].dtype)
        else:
            averaged[key] = tensors[0].clone()
    return averaged


def start_of(config: CheckpointConfig) -> str | None:
    """What the last training run began from: pretrained weights (their source) or an earlier checkpoint
    (its whole provenance, which `--init-from` records); None for a random start."""
    stages = training_stages(config.provenance)
    pretrained = stages[0].get("pretrained")
    if len(stages) > 1:
        return json.dumps(stages[-1].get("initialised_from_provenance"), sort_keys=True, default=str)
    return pretrained.get("source") if isinstance(pretrained, dict) else None


def check_ingredients(configs: Sequence[CheckpointConfig], sources: Sequence[str]) -> None:
    """Raise CheckpointError unless the checkpoints can be averaged: one contract, one pretrained start."""
    first = configs[0]
    for config, source in zip(configs, sources):
        if (config.heads or {}).get("lesion_evidence_weight") is not None:
            raise CheckpointError(f"{source} weighs lesion evidence fitted to its own maps: average the checkpoints "
                                  f"it came from, then fit the soup's evidence "
                                  f"(python -m drdemo.train.lesion_evidence)")
    for config, source in zip(configs[1:], sources[1:]):
        for name in CONTRACT_FIELDS:
            if _contract_value(config, name) != _contract_value(first, name):
                raise CheckpointError(f"{source}: {name} is {getattr(config, name)!r} but {sources[0]} has "
                                      f"{getattr(first, name)!r}; a soup averages one network")
    starts = [start_of(config) for config in configs]
    if any(start is None for start in starts) or len(set(starts)) > 1:
        detail = ", ".join(f"{source}: {'random initialisation' if start is None else (start[:80] + '...')}"
                           for source, start in zip(sources, starts))
        raise CheckpointError(f"a soup needs ingredients fine-tuned from the same pretrained weights or the same "
                              f"checkpoint ({detail}); the average of separately initialised networks is no model")


def shared_split(folders: Sequence[Path]) -> str | None:
    """The text of the ingredients' common training/split.json (None when none has one); CheckpointError
    when they held out different photos, since the soup's validation would then include training photos."""
    splits = {}
    for folder in folders:
        path = Path(folder) / "training" / SPLIT_NAME
        if path.is_file():
            splits[str(folder)] = json.loads(path.read_text())
    if not splits:
        return None
    if len(splits) < len(folders) or len({json.dumps(s["parts"], sort_keys=True) for s in splits.values()}) > 1:
        raise CheckpointError("the ingredients were validated on different photos (their training/split.json "
                              "differ or are missing): train them with one --split-seed")
    return json.dumps(next(iter(splits.values()))) + "\n"


def make_soup(folders: Sequence[Path], out: Path, weights: Sequence[float] | None = None,
              command: str = "") -> CheckpointConfig:
    """Average the checkpoints in `folders` into a new checkpoint folder `out`; returns its config."""
    if len(folders) < 2:
        raise CheckpointError("a soup needs at least two checkpoints")
    configs = [read_config(Path(folder)) for folder in folders]
    sources = [str(folder) for folder in folders]
    check_ingredients(configs, sources)
    split = shared_split(folders)
    state = average_states([read_weights(Path(folder)) for folder in folders], weights)
    model = build_model(configs[0], state, str(out))
    shares = [1 / len(folders)] * len(folders) if weights is None else [w / sum(weights) for w in weights]
    first = configs[0]
    provenance = {key: value for key, value in first.provenance.items()
                  if key in ("trained", "data", "data_command", "recipe", "pretrained", "distillation", "epochs",
                             "initialised_from_provenance", "torch", "device")}
    provenance.update(
        command=command, code_commit=code_commit(), seed=[config.provenance.get("seed") for config in configs],
        soup={"method": "weight average (Wortsman et al. 2022, model soups)",
              "ingredients": [{"checkpoint": source, "weight": round(share, 6), "seed": config.provenance.get("seed"),
                               "command": config.provenance.get("command"),
                               "best_epoch": config.provenance.get("best_epoch")}
                              for source, share, config in zip(sources, shares, configs)]})
    config = replace(first, referable_threshold=0.5, dme_threshold=0.5, calibration={}, test_time_views=1,
                     cam_evaluation={}, metrics={}, provenance=provenance)
    save_checkpoint(model, config, out)
    if split is not None:  # evaluation finds the validation part here
        (Path(out) / "training").mkdir(exist_ok=True)
        (Path(out) / "training" / SPLIT_NAME).write_text(split)
    return read_config(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drdemo.train.soup", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint folders fine-tuned from one start")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    parser.add_argument("--weights", nargs="+", type=float, help="one non-negative weight per checkpoint "
                        "(default: equal)")
    args = parser.parse_args(argv)
    if len(args.checkpoints) < 2:
        parser.error("give at least two checkpoints")
    if args.weights is not None and (len(args.weights) != len(args.checkpoints) or min(args.weights) < 0
                                     or sum(args.weights) <= 0):
        parser.error(f"--weights: give {len(args.checkpoints)} non-negative numbers with a positive sum")
    if args.out.resolve() in {folder.resolve() for folder in args.checkpoints}:
        parser.error("--out must be a new folder, not one of the ingredients")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        parser.error(f"--out {args.out} is not empty: choose a new folder (a soup's records must not mix with "
                     f"another checkpoint's)")
    command = recorded_command("drdemo.train.soup", argv)
    try:
        config = make_soup(args.checkpoints, args.out, args.weights, command)
    except DrdemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: the average of {len(args.checkpoints)} {config.display_name} checkpoints; "
          f"choose its thresholds again: python -m drdemo.evaluate heads --checkpoint {args.out} "
          f"--part val --choose-thresholds ...")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
