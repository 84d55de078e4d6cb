"""Refit a three-head checkpoint's lesion decoder on other backbone layers, every other weight frozen.

A lesion decoder reads one stage of the backbone, or several fused (drdemo.models.heads.FusedLesionDecoder).
Which stages serve it best can be learned after the grading is settled: the backbone, the grade heads and the
DME head keep their weights, so every grade, DME risk, threshold, heat map and out-of-distribution score of the
source checkpoint stays what it was, and only the lesion maps change. The decoder learns from the drawn lesion
masks of IDRiD's segmentation photos that copy a grading photo of the source's training part (its
training/split.json), moved with the photo by the source recipe's augmentation; the copies of its validation
photos score it after every epoch, and the test report's photos are never read.

    python -m drdemo.train.lesion_head --checkpoint FOLDER --layers patch_embed layers.0 layers.1 --out NEW_FOLDER \\
        [--segmentation "../shared/data/idrid/A. Segmentation"] [--overlap .../segmentation_grading_overlap.csv]

The new folder is the source's, with the new decoder's weights, `lesion_layers` in config.json's heads, one more
training stage in its provenance, and without the source's records of lesion maps (score them again with
`python -m drdemo.evaluate heads`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from drdemo.checkpoint import CheckpointConfig, CheckpointError, LoadedModel, save_checkpoint
from drdemo.checkpoint.config import training_stages
from drdemo.checkpoint.io import code_commit, read_config, read_weights
from drdemo.checkpoint.layout import MOVED_KEYS
from drdemo.data import Sample, load_samples
from drdemo.data.augment import JointAugment
from drdemo.data.lesions import LesionSample, grading_copy_map
from drdemo.data.prepared import LesionGradingDataset, prepare_cached, prepare_lesion_photos
from drdemo.errors import DrdemoError
from drdemo.evaluate.heads import lesion_map_photos, score_prepared_lesion_maps
from drdemo.models import create_model
from drdemo.models.heads import lesion_map_loss
from drdemo.preprocess import normalise_kwargs
from drdemo.train.command import recorded_command, set_threads
from drdemo.train.distill import teacher_targets
from drdemo.train.recipes import PRESETS, Recipe
from drdemo.train.trainer import SPLIT_NAME

LESION_HEAD_PREFIX = "lesion_head."


class LesionHeadError(DrdemoError, ValueError):
    """A refit that cannot run: a checkpoint without lesion maps, a layer it lacks, no masked photos."""


@dataclass(frozen=True)
class LesionHeadRecipe:
    """How the decoder is fitted: AdamW with cosine decay over `epochs` passes through the masked photos."""

    epochs: int = 320  # beat 40, 80, 160 (MedMamba-T) and 160 (InceptionV3) on the validation copies
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 8


def refit_heads(config: CheckpointConfig, layers: Sequence[str]) -> dict:
    """The source's `heads` with its decoder reading `layers`."""
    return dict(config.heads, lesion_layers=list(layers))


def refit_model(config: CheckpointConfig, state: dict[str, torch.Tensor], layers: Sequence[str],
                seed: int = 0) -> nn.Module:
    """The source network with a new lesion decoder on `layers`, in eval mode: every other weight loaded from
    `state` and frozen, the decoder freshly initialised from `seed` (so a refit repeats) and the only part that
    trains."""
    if not config.heads:
        raise LesionHeadError("a single-head checkpoint has no lesion maps: refit the decoder of a three-head one")
    if config.heads.get("lesion_evidence_weight") is not None:
        raise LesionHeadError("this checkpoint's grades read its lesion maps (lesion_evidence_weight), which a new "
                              "decoder would change: refit the checkpoint it came from, then fit the evidence again")
    heads = refit_heads(config, layers)
    try:
        with torch.random.fork_rng():  # seed the new weights without touching the caller's generator
            torch.manual_seed(seed)
            model = create_model(config.architecture, num_classes=config.num_classes, heads=heads,
                                 **config.model_options)
    except ValueError as exc:
        raise LesionHeadError(f"--layers: {exc}") from exc
    kept = {key: value for key, value in state.items() if not key.startswith(LESION_HEAD_PREFIX)}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    wrong = [key for key in missing if not key.startswith(LESION_HEAD_PREFIX)] + list(unexpected)
    if wrong:
        raise LesionHeadError(f"the source weights are not this {config.architecture}'s: {', '.join(wrong[:3])}")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith(LESION_HEAD_PREFIX))
    return model.eval()  # the frozen batch-norm statistics must not move, not even in a forward before fitting


def masked_dataset(samples: Sequence[LesionSample], config: CheckpointConfig, augment=None,
                   taught: Sequence[Sample] = (), teacher_maps: np.ndarray | None = None) -> LesionGradingDataset:
    """The photos prepared as the checkpoint's inputs, each with its drawn masks moved through the same crop;
    then the `taught` photos, whose soft masks are a teacher's lesion maps (`teacher_maps`, one per photo)."""
    size, crop = config.input_size, config.preprocessing["crop_fov"]
    interpolation = config.preprocessing["interpolation"]
    images, drawn_masks = prepare_lesion_photos(samples, size, interpolation, crop)
    if taught:
        images = np.concatenate([images, prepare_cached(list(taught), size, interpolation, crop, progress=False)])
    drawn = [Sample(s.image_id, s.path, 0, s.image_id) for s in samples]
    maps = {len(drawn) + i: teacher_maps[i] for i in range(len(taught))}
    return LesionGradingDataset(drawn + list(taught), images, dict(enumerate(drawn_masks)), normalise_kwargs(config),
                                augment, teacher_maps=maps)


def source_recipe(config: CheckpointConfig) -> Recipe:
    """The preset of the last run that trained the source's network (its augmentation moves the masks; an
    earlier refit of the decoder is passed over), else the three-head preset."""
    for stage in reversed(training_stages(config.provenance)):
        preset = (stage.get("recipe") or {}).get("preset")
        if preset in PRESETS:
            return PRESETS[preset]
    return PRESETS["lesions"]


def fit_lesion_head(model: nn.Module, dataset: LesionGradingDataset, recipe: LesionHeadRecipe, seed: int = 0,
                    after_epoch=None) -> list[float]:
    """Train `model.lesion_head` alone on `dataset` (the rest stays in eval mode: batch-norm statistics and
    dropout frozen too); returns each epoch's mean loss. `after_epoch(epoch, loss)` runs after every epoch."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the augmentation draws from the global generator
    head = model.lesion_head
    optimizer = torch.optim.AdamW(head.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = max(len(dataset) // recipe.batch_size, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / (recipe.epochs * steps_per_epoch), 1.0))))
    losses = []
    for epoch in range(1, recipe.epochs + 1):
        model.eval()
        head.train()
        order = torch.randperm(len(dataset), generator=generator).tolist()
        epoch_losses = []
        for step in range(steps_per_epoch):
            items = [dataset[i] for i in order[step * recipe.batch_size:(step + 1) * recipe.batch_size]]
            images = torch.stack([image for image, _ in items])
            masks = torch.stack([targets["masks"] for _, targets in items])
            loss = lesion_map_loss(model(images).lesion_logits, masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            epoch_losses.append(float(loss.detach()))
        losses.append(float(np.mean(epoch_losses)))
        if after_epoch is not None:
            after_epoch(epoch, losses[-1])
    model.eval()
    return losses


def _rounded_ratios(scores: dict) -> dict:
    return {name: round(value["aupr_over_blank"], 3) for name, value in scores.get("per_type", {}).items()}


def refit(source: Path, layers: Sequence[str], out: Path, segmentation: Path, overlap: Path,
          recipe: LesionHeadRecipe, seed: int, command: str, teacher: Path | None = None,
          grading_data: Path | None = None) -> CheckpointConfig:
    """Write `out`: `source` with a lesion decoder on `layers` fitted as the module says; returns its config.
    With a `teacher` (a three-head checkpoint), the source's other training photos (in `grading_data`, IDRiD's
    grading folder; default: the one its split names) learn the teacher's lesion maps as soft masks."""
    try:
        config, state = read_config(source), read_weights(source)
    except CheckpointError as exc:
        raise LesionHeadError(f"--checkpoint: {exc}") from exc
    model = refit_model(config, state, layers, seed)
    split_path = source / "training" / SPLIT_NAME
    if not split_path.is_file():
        raise LesionHeadError(f"{split_path} is missing: the refit needs the source's training and validation parts")
    split = json.loads(split_path.read_text())
    parts, grading_data = split["parts"], grading_data or Path(split.get("data", ""))
    train_samples = lesion_map_photos(segmentation, overlap, parts["train"])
    if not train_samples:
        raise LesionHeadError(f"no photo in {segmentation} copies a training photo of {source}: check --segmentation "
                              f"and --overlap")
    taught, teacher_maps = [], None
    if teacher is not None:  # the training part's other photos, with the teacher's maps as soft masks
        copied = {grading_copy_map(overlap, "train")[s.image_id] for s in train_samples}
        try:
            grading = {s.image_id: s for s in load_samples(grading_data, "idrid", part="train")}
        except DrdemoError as exc:
            raise LesionHeadError(f"--grading-data: {exc}") from exc
        taught = [grading[i] for i in parts["train"] if i not in copied and i in grading]
        teacher_maps = teacher_targets(teacher, taught, torch.device("cpu"), lesions=True)["lesions"]
    dataset = masked_dataset(train_samples, config, JointAugment(source_recipe(config).augmentation),
                             taught, teacher_maps)
    new_config = replace(config, heads=refit_heads(config, layers))
    loaded = LoadedModel(model=model, config=new_config, source=str(out), folder=out, revision=None, commit=None)
    history: list[dict] = []
    validation = lesion_map_photos(segmentation, overlap, parts["val"])  # prepared once, scored every epoch
    validation_photos = prepare_lesion_photos(validation, config.input_size, config.preprocessing["interpolation"],
                                              config.preprocessing["crop_fov"]) if validation else None

    def validate(epoch: int, loss: float) -> None:
        scores = score_prepared_lesion_maps(loaded, validation, *validation_photos) if validation else {}
        history.append({"epoch": epoch, "loss": round(loss, 4), "val_aupr_over_blank": _rounded_ratios(scores)})
        print(json.dumps(history[-1]), file=sys.stderr, flush=True)

    print(f"lesion decoder on {', '.join(layers)}: {len(train_samples)} photos with drawn masks"
          + (f", {len(taught)} with {teacher}'s maps" if taught else "") + f", {recipe.epochs} epochs", file=sys.stderr)
    started = time.monotonic()
    fit_lesion_head(model, dataset, recipe, seed, after_epoch=validate)
    # a source that is itself a refit: its decoder is discarded (this one starts afresh), so its stage is too, and
    # the new stage follows the stage that taught every other weight
    base = config.provenance
    if base.get("recipe", {}).get("preset") == "lesion_head" and "initialised_from_provenance" in base:
        base = base["initialised_from_provenance"]
    # the source's data first: it taught every weight but the decoder's, and the card names it
    taught_first = (base.get("data") or str(source)).rstrip(".")
    data = (f"{taught_first}; then the lesion decoder alone, on the IDRiD segmentation photos with drawn lesion masks "
            f"that copy {len(train_samples)} of those training photos (the copies of the validation photos score each "
            f"epoch)")
    if taught:
        data += f" and on its {len(taught)} other training photos with the lesion maps of {teacher}"
    # the records of the source's evaluations (grades, thresholds, heat maps) still describe these weights' outputs
    records = {key: value for key, value in config.provenance.items() if key in MOVED_KEYS}
    stage = {**records, "trained": True, "data": data,
             "recipe": {**asdict(recipe), "preset": "lesion_head", "trained": "the lesion decoder only; every other "
                        "weight, batch-norm statistic and threshold frozen", "lesion_layers": list(layers),
                        "augmentation": asdict(source_recipe(config).augmentation)},
             "seed": seed, "command": command, "code_commit": code_commit(), "torch": torch.__version__,
             "device": "cpu", "processes": 1, "initialised_from": str(source),
             "initialised_from_provenance": base, "epochs": recipe.epochs, "best_epoch": recipe.epochs,
             "training_seconds": round(time.monotonic() - started), "lesion_head_validation": history}
    if teacher is not None:
        stage["distillation"] = {"teacher": str(teacher), "lesion_maps": True, "photos": len(taught),
                                 "teacher_provenance": read_config(teacher).provenance}
    new_config = replace(new_config, provenance=stage)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("model.safetensors", "README.md"))
    for record in (out / "eval").glob("*.json"):  # lesion maps of the old decoder no longer describe these weights
        if "lesion_maps" in json.loads(record.read_text()):
            record.unlink()
    save_checkpoint(model, new_config, out)
    return new_config


def require_new_folder(parser: argparse.ArgumentParser, source: Path, out: Path) -> None:
    """Stop with a usage error unless `out` is a new (or empty) folder other than the `source` checkpoint: a
    command that derives one checkpoint from another never overwrites either."""
    if out.resolve() == source.resolve():
        parser.error("--out must be a new folder: the source checkpoint is not overwritten")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"--out {out} is not empty: choose a new folder")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drdemo.train.lesion_head", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="a three-head checkpoint folder")
    parser.add_argument("--layers", required=True, nargs="+", help="backbone layers the decoder reads, e.g. "
                        "patch_embed layers.0 layers.1 (several are fused at the finest one's resolution)")
    parser.add_argument("--out", required=True, type=Path, help="new checkpoint folder to write")
    parser.add_argument("--segmentation", type=Path, default=Path("../shared/data/idrid/A. Segmentation"),
                        help="IDRiD's 'A. Segmentation' folder (default: %(default)s)")
    parser.add_argument("--overlap", type=Path, default=Path("../shared/data/idrid/segmentation_grading_overlap.csv"),
                        help="which segmentation photo copies which grading photo (default: %(default)s)")
    defaults = LesionHeadRecipe()
    parser.add_argument("--teacher", type=Path, help="a three-head checkpoint whose lesion maps the source's other "
                        "training photos learn as soft masks")
    parser.add_argument("--grading-data", type=Path, help="with --teacher: IDRiD's 'B. Disease Grading' folder "
                        "(default: the one the source's training/split.json names)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0:
        parser.error("--epochs and --batch-size must be at least 1 and --lr positive")
    require_new_folder(parser, args.checkpoint, args.out)
    for flag, path, kind in (("--segmentation", args.segmentation, "folder"), ("--overlap", args.overlap, "file")):
        if not (path.is_dir() if kind == "folder" else path.is_file()):
            parser.error(f"{flag} {path}: no such {kind}")
    set_threads(parser, args.threads)
    command = recorded_command("drdemo.train.lesion_head", argv)
    recipe = LesionHeadRecipe(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)
    try:
        refit(args.checkpoint, args.layers, args.out, args.segmentation, args.overlap, recipe, args.seed, command,
              args.teacher, args.grading_data)
    except DrdemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}; score its lesion maps: python -m drdemo.evaluate heads --checkpoint {args.out} "
          f"--part val ...")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
