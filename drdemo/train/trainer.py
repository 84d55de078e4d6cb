"""One training run: data, model, optimiser, schedule, the loop, validation and the checkpoints it
writes (drdemo.train's package docstring says what a run leaves in FOLDER). Over 400 lines because
the Trainer's methods share one run's state (model, EMA, optimiser, sampler position, log), which
splitting would pass around instead of keeping in one object."""

from __future__ import annotations

import functools
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from drdemo.calibration import class_probabilities
from drdemo.checkpoint import (
    CheckpointConfig,
    CheckpointError,
    code_commit,
    read_config,
    read_weights,
    resolve_device,
    save_checkpoint,
)
from drdemo.data import (
    PARTS,
    FundusDataset,
    Sample,
    generator_info,
    load_samples,
    split_samples,
)
from drdemo.data.augment import (
    eval_transform,
    train_transform,
)
from drdemo.data.describe import describe_training_data
from drdemo.data.prepared import NO_LABEL, LesionGradingDataset, prepare_cached, prepared_masks
from drdemo.errors import DrdemoError
from drdemo.inference import loader_logits, loader_outputs, main_logits
from drdemo.models import create_model, model_defaults
from drdemo.models.heads import BACKBONE_PREFIX, HeadsOutput, corn_loss, lesion_map_loss
from drdemo.preprocess import normalise_kwargs
from drdemo.tasks import DME_RISKS, LESION_TYPES, TASK_CLASS_NAMES
from drdemo.train.distill import (
    TEACHER_TARGETS_NAME,
    distillation_loss,
    load_or_compute_teacher_targets,
    teacher_map_indices,
    unlabelled_photos,
)
from drdemo.train.distributed import EpochSampler, init_distributed
from drdemo.train.recipes import Recipe, balanced_weights, class_weights, group_lr_factor, parameter_groups

STATE_NAME = "state.pt"
LOG_NAME = "log.jsonl"
CURVES_NAME = "curves.png"
SPLIT_NAME = "split.json"


def new_heads(architecture: str) -> dict:
    """The `heads` of a new three-head checkpoint of `architecture`: the softmax grade head served until
    validation chooses, IDRiD's DME risks and lesion types, and the layers its lesion decoder reads."""
    return {"grade_head": "softmax", "dme_classes": list(DME_RISKS), "lesion_types": list(LESION_TYPES),
            "lesion_layers": [model_defaults(architecture).lesion_layer]}


class TrainingError(DrdemoError, ValueError):
    """A run that cannot start or go on; the message says what to change."""


def _step_seed(seed: int, rank: int, epoch: int, batch: int) -> int:
    return int(np.random.SeedSequence([seed, rank, epoch, batch]).generate_state(1)[0])


def _data_command(root: Path) -> str | None:
    """The generator command that makes `root` again, byte for byte, when it is a synthetic set; its
    --out is `root` as the training command names it, so the card's commands run one after another."""
    info = generator_info(root)
    if info is None:
        return None
    return (f"python -m drdemo.data.synthetic --out {shlex.quote(str(root))} --n {info['n']} --seed {info['seed']} "
            f"--size {info['size']} --class-balance {info['class_balance']}")


# ---------------------------------------------------------------------------- trainer

@dataclass
class RunOptions:
    model: str
    data: Path
    out: Path
    task: str = "icdr5"
    preset: str = "drdemo"
    img_size: int | None = None
    seed: int = 0
    split_seed: int | None = None     # seed of the validation split; None: `seed`
    val_fraction: float = 0.15
    val_data: Path | None = None
    workers: int = 2
    limit: int | None = None
    resume: bool = False
    device: str = "auto"
    amp: bool = True
    save_every_minutes: float = 10.0
    stats_images: int = 400
    init_from: Path | None = None
    part: str | None = None           # official part of a data set that has them (IDRiD): default "train"
    cpu_bf16: bool = False            # bfloat16 autocast on CPU
    lesion_data: Path | None = None   # IDRiD's "A. Segmentation" folder, for a three-head recipe's lesion maps
    lesion_overlap: Path | None = None  # IDRiD's segmentation_grading_overlap.csv
    cache_dir: Path | None = None     # prepared photos (drdemo.data.prepared); None: its default
    teacher: Path | None = None       # a three-head checkpoint to distil from (drdemo.train.distill)
    unlabelled: tuple[Path, ...] = () # folders of photos only the teacher labels
    command: str = ""


class Trainer:
    """One training run: data, model, optimiser, schedule, loop, validation, checkpoints."""

    def __init__(self, options: RunOptions, recipe: Recipe):
        self.options, self.recipe = options, recipe
        self.device = _pick_device(options.device)
        self.dist = init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.training_dir = options.out / "training"
        self.state_path = self.training_dir / STATE_NAME
        self._check_out_folder()
        if self.dist.enabled:  # every rank has seen --out as it was before rank 0 starts writing into it
            dist.barrier()
        torch.manual_seed(options.seed + self.dist.rank)

        self.parts, self.layout = self._load_parts()
        defaults = model_defaults(options.model)
        num_classes = len(TASK_CLASS_NAMES[options.task])
        heads = new_heads(options.model) if recipe.heads else None
        # ImageNet weights are read before the config: their input statistics and builder options go into it.
        pretrained_model = (create_model(options.model, num_classes=num_classes, heads=heads, pretrained=True)
                            if recipe.pretrained and not options.resume else None)
        self.pretrained = pretrained_model.default_cfg["pretrained"] if pretrained_model is not None else None
        input_size = options.img_size or defaults.input_size
        self.config = self._initial_config(input_size)
        if recipe.heads:
            self.train_set, self.val_set = self._lesion_grading_sets(input_size)
        else:
            kwargs = dict(input_size=input_size, mean=self.config.mean, std=self.config.std,
                          interpolation=self.config.preprocessing["interpolation"],
                          crop_fov=self.config.preprocessing["crop_fov"],
                          local_contrast_sigma=self.config.preprocessing["local_contrast"],
                          colour_balance=self.config.preprocessing["colour_balance"])
            self.train_set = FundusDataset(self.parts["train"],
                                           train_transform(augmentation=recipe.augmentation, **kwargs),
                                           task=options.task)
            self.val_set = FundusDataset(self.parts["val"], eval_transform(**kwargs), task=options.task)
        self.sampler = EpochSampler(len(self.train_set), recipe.batch_size, options.seed, self.dist)
        if self.sampler.batches_per_epoch() == 0:
            raise TrainingError(f"{len(self.train_set)} training images are fewer than one batch of "
                                f"{recipe.batch_size} per process: lower --batch-size")
        self.train_loader = DataLoader(self.train_set, batch_size=recipe.batch_size, sampler=self.sampler,
                                       num_workers=options.workers, drop_last=True,
                                       persistent_workers=False, pin_memory=self.device.type == "cuda")
        self.val_loader = DataLoader(self.val_set, batch_size=recipe.batch_size, shuffle=False,
                                     num_workers=options.workers)

        self.model = pretrained_model or create_model(options.model, num_classes=num_classes,
                                                      heads=self.config.heads or None, **self.config.model_options)
        if options.init_from is not None and not options.resume:
            self._initialise_from(options.init_from)
        self.memory_format = defaults.memory_format  # as served by the Predictor
        self.model = self.model.to(self.device, memory_format=self.memory_format)
        self.ema = (AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema_decay), use_buffers=True)
                    if recipe.ema_decay else None)
        self.network = (nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.dist.enabled else self.model)
        weight = class_weights(self.parts["train"], options.task) if recipe.class_weights else None
        self.loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(self.device),
                                           label_smoothing=recipe.label_smoothing)
        self.val_loss_fn = nn.CrossEntropyLoss()
        if recipe.heads:
            dme_counts = np.bincount([s.dme for s in self.parts["train"] if s.dme is not None],
                                     minlength=len(DME_RISKS))
            dme_weight = balanced_weights(dme_counts).to(self.device) if recipe.dme_class_weights else None
            self.dme_loss_fn = nn.CrossEntropyLoss(weight=dme_weight, label_smoothing=recipe.label_smoothing)
        pretrained_names = self._pretrained_parameter_names() if recipe.pretrained else frozenset()
        groups = parameter_groups(self.model, recipe.weight_decay, pretrained=pretrained_names,
                                  early_prefixes=defaults.early_layers, backbone_lr_ratio=recipe.backbone_lr_ratio,
                                  early_lr_ratio=recipe.early_lr_ratio)
        optimizer_class = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[recipe.optimizer]
        self.optimizer = optimizer_class(groups, lr=recipe.lr)
        self.steps_per_epoch = self.sampler.batches_per_epoch()
        self.total_steps = recipe.epochs * self.steps_per_epoch
        warmup = round(recipe.warmup_epochs * self.steps_per_epoch)
        frozen = round(recipe.freeze_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, [
            functools.partial(group_lr_factor, total_steps=self.total_steps, warmup_steps=warmup,
                              schedule=recipe.schedule, min_ratio=recipe.min_lr_ratio, lr_scale=group["lr_scale"],
                              frozen_steps=frozen if group["pretrained"] else 0)
            for group in groups])
        self.autocast_dtype = (torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
                               else torch.float16) if (self.device.type == "cuda" and options.amp) else None
        if self.device.type == "cpu" and options.cpu_bf16:
            self.autocast_dtype = torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)

        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best: dict = {"qwk": -math.inf, "epoch": None, "val_loss": math.inf, "selection": -math.inf}
        self.seconds_trained = 0.0
        if options.resume:
            self._load_state()

    # -- setup helpers

    def _check_out_folder(self) -> None:
        out = self.options.out
        if out.exists() and not out.is_dir():
            raise TrainingError(f"--out {out} is a file; give a folder")
        if self.options.resume:
            if not self.state_path.is_file():
                raise TrainingError(f"--resume: {self.state_path} does not exist, so there is no run to continue "
                                    f"(start one without --resume)")
        elif out.is_dir() and any(out.iterdir()):
            raise TrainingError(f"--out {out} is not empty: pass --resume to continue the run there, or choose a "
                                f"new folder")

    def _load_parts(self) -> tuple[dict[str, list[Sample]], str]:
        options = self.options
        split_seed = options.seed if options.split_seed is None else options.split_seed
        from drdemo.data import detect_layout
        layout = detect_layout(options.data)
        self.part = options.part if options.part is not None or layout not in PARTS else "train"
        samples = load_samples(options.data, layout, part=self.part)
        if options.limit:
            samples = split_samples(samples, {"train": min(1.0, options.limit / len(samples)),
                                              "rest": max(0.0, 1 - options.limit / len(samples))},
                                    seed=split_seed)["train"] if options.limit < len(samples) else samples
        split_path = self.training_dir / SPLIT_NAME
        if options.val_data is not None:
            parts = {"train": samples, "val": load_samples(options.val_data)}
        elif options.resume and split_path.is_file():
            saved = json.loads(split_path.read_text())["parts"]
            by_id = {s.image_id: s for s in samples}
            parts = {name: [by_id[i] for i in ids] for name, ids in saved.items()}
        else:
            parts = split_samples(samples, {"train": 1 - options.val_fraction, "val": options.val_fraction},
                                  seed=split_seed)
        if not parts["val"]:
            raise TrainingError("the validation part is empty: raise --val-fraction or pass --val-data")
        if self.dist.is_main and not (options.resume and split_path.is_file()):
            self.training_dir.mkdir(parents=True, exist_ok=True)
            split_path.write_text(json.dumps({"data": str(options.data), "layout": layout, "part": self.part,
                                              "seed": split_seed,
                                              "parts": {k: [s.image_id for s in v] for k, v in parts.items()}}) + "\n")
        return parts, layout

    def _initial_config(self, input_size: int) -> CheckpointConfig:
        """Config of the checkpoint to write; mean/std measured on the training images (or kept from
        the interrupted run, so a resumed run normalises exactly as it began)."""
        options = self.options
        if options.resume:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
            return CheckpointConfig.from_dict(json.loads(state["config"]), source=str(self.state_path))
        source = None
        if options.init_from is not None:
            try:
                source = read_config(options.init_from)
            except CheckpointError as exc:
                raise TrainingError(f"--init-from: {exc}") from exc
        if self.pretrained is not None:  # the inputs the ImageNet weights were trained on
            mean, std = self.pretrained["mean"], self.pretrained["std"]
        elif (source is not None and source.preprocessing["local_contrast"] == self.recipe.local_contrast
                and source.preprocessing["colour_balance"] == self.recipe.colour_balance):
            mean, std = source.mean, source.std  # keep the statistics the weights were trained with
        else:  # new data, or inputs the source never saw (local contrast changes every pixel): measure them
            from drdemo.data.stats import channel_stats
            mean, std = channel_stats(self.parts["train"], input_size=input_size, limit=options.stats_images,
                                      seed=options.seed, local_contrast_sigma=self.recipe.local_contrast,
                                      colour_balance=self.recipe.colour_balance)
        recipe = asdict(self.recipe)
        recipe["preset"] = options.preset
        heads = {}
        if self.recipe.heads:
            if options.task != "icdr5":
                raise TrainingError(f"the three-head recipe grades the five ICDR grades: use --task icdr5, not "
                                    f"{options.task}")
            heads = new_heads(options.model)
        layer_prefix = BACKBONE_PREFIX if heads else ""
        defaults = model_defaults(options.model)
        return CheckpointConfig.for_architecture(
            options.model, task=options.task, input_size=input_size,
            mean=tuple(round(float(v), 5) for v in mean), std=tuple(round(float(v), 5) for v in std),
            heads=heads, cam_target_layer=layer_prefix + defaults.cam_target_layer,
            model_options=dict(self.pretrained["builder_options"]) if self.pretrained else {},
            preprocessing={"interpolation": "bicubic", "crop_fov": True, "local_contrast": self.recipe.local_contrast,
                           "colour_balance": self.recipe.colour_balance},
            provenance={"trained": True,
                        "data": describe_training_data(options.data, self.layout, self.parts, self.part),
                        "data_command": _data_command(options.data) if self.layout == "synthetic" else None,
                        "recipe": json.loads(json.dumps(recipe, default=str)), "seed": options.seed,
                        "command": options.command, "code_commit": code_commit(),
                        **({"pretrained": self.pretrained} if self.pretrained else {}),
                        "torch": torch.__version__, "device": self.device.type, "processes": self.dist.world_size})

    def _initialise_from(self, folder: Path) -> None:
        """Start from a saved checkpoint's weights (fine-tuning, or going on with a run whose state.pt
        is gone): a new optimiser and schedule, the same architecture, task and input statistics."""
        try:
            source = read_config(folder)
            state = read_weights(folder)
        except CheckpointError as exc:
            raise TrainingError(f"--init-from: {exc}") from exc
        if (source.architecture, source.task) != (self.options.model, self.options.task):
            raise TrainingError(f"--init-from {folder} is a {source.architecture} ({source.task}) checkpoint, not "
                                f"{self.options.model} ({self.options.task})")
        # lesion evidence is fitted to the finished network's maps (drdemo.train.lesion_evidence): training moves them
        state = {key: value for key, value in state.items() if not key.startswith("lesion_evidence.")}
        if self.config.heads and not source.heads:  # a single-head checkpoint: its network is our backbone
            self.model.backbone.load_state_dict(state, strict=True)
        elif bool(self.config.heads) == bool(source.heads):
            self.model.load_state_dict(state, strict=True)
        else:
            raise TrainingError(f"--init-from {folder} has three heads; a single-head recipe cannot start from it")
        provenance = dict(self.config.provenance, initialised_from=str(folder),
                          initialised_from_provenance=source.provenance)
        self.config = replace(self.config, provenance=provenance)

    def _pretrained_parameter_names(self) -> frozenset[str]:
        """The parameters that came from ImageNet weights (after --resume too, where none were read now)."""
        names = getattr(self.model, "pretrained_parameters", None)
        if names is None:  # resumed: the same architecture's pretrained layers, without reading the weights again
            probe = create_model(self.options.model, num_classes=self.config.num_classes,
                                 heads=self.config.heads or None, pretrained=True)
            names = probe.pretrained_parameters
        return frozenset(names)

    # -- state

    def _save_state(self) -> None:
        if not self.dist.is_main:
            return
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
                 "best": json.dumps(self.best), "seconds_trained": self.seconds_trained,
                 "config": json.dumps(self.config.to_dict()), "rng": torch.get_rng_state()}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        temporary = self.state_path.with_suffix(".tmp")
        torch.save(state, temporary)
        os.replace(temporary, self.state_path)  # never leave a half-written state behind

    def _load_state(self) -> None:
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            if "ema" not in state:
                raise TrainingError(f"--resume: {self.state_path} was written without --ema; resume without it")
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch_in_epoch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
        self.best = json.loads(state["best"])
        self.seconds_trained = state["seconds_trained"]
        torch.set_rng_state(state["rng"])

    def _log(self, record: dict) -> None:
        if self.dist.is_main:
            with open(self.training_dir / LOG_NAME, "a") as log:
                log.write(json.dumps(record) + "\n")

    # -- loop

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _loss(self, output, targets) -> torch.Tensor:
        if isinstance(output, HeadsOutput):
            return self._heads_loss(output, targets)
        if hasattr(output, "aux_logits") and output.aux_logits is not None:
            return (self.loss_fn(output.logits, targets)
                    + self.recipe.aux_loss_weight * self.loss_fn(output.aux_logits, targets))
        return self.loss_fn(main_logits(output), targets)

    def _heads_loss(self, output: HeadsOutput, targets: dict) -> torch.Tensor:
        return three_head_loss(output, targets, self.recipe, self.loss_fn, self.dme_loss_fn)

    def _teacher_targets(self, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
        """The teacher's targets for `samples`: computed once, by the main process under torchrun, while the
        other ranks wait and then read the file it wrote."""
        path, options = self.training_dir / TEACHER_TARGETS_NAME, self.options
        if self.dist.enabled and not self.dist.is_main:
            dist.barrier()
        targets = load_or_compute_teacher_targets(path, options.teacher, samples, self.device, options.cache_dir,
                                                  lesions=self.recipe.distill_lesions)
        if self.dist.enabled and self.dist.is_main:
            dist.barrier()
        return targets

    def _lesion_grading_sets(self, input_size: int) -> tuple[Dataset, Dataset]:
        """Training and validation sets of a three-head recipe, from prepared (cached) photos; lesion masks only
        for training photos (the validation photos' masks would let it choose on what it learned from)."""
        options, preprocessing = self.options, self.config.preprocessing
        lesion_data, overlap = options.lesion_data, options.lesion_overlap
        if self.layout == "idrid" and lesion_data is None:
            lesion_data = options.data.parent / "A. Segmentation"
            overlap = overlap or options.data.parent / "segmentation_grading_overlap.csv"
        if lesion_data is None or overlap is None or not lesion_data.is_dir() or not overlap.is_file():
            raise TrainingError("the three-head recipe needs lesion masks: pass --lesion-data (IDRiD's 'A. "
                                "Segmentation' folder) and --lesion-overlap (segmentation_grading_overlap.csv)")
        normalising = normalise_kwargs(self.config)
        soft_targets, extra = None, []
        if options.teacher is not None:
            extra = unlabelled_photos(options.unlabelled, overlap)
            labelled_and_extra = list(self.parts["train"]) + extra
            soft_targets = self._teacher_targets(labelled_and_extra)
            self.config = replace(self.config, provenance=dict(self.config.provenance, distillation={
                "teacher": str(options.teacher), "teacher_provenance": read_config(options.teacher).provenance,
                "weight": self.recipe.distill_weight, "temperature": self.recipe.distill_temperature,
                "lesion_maps": self.recipe.distill_lesions,
                "labelled_photos": len(self.parts["train"]),
                "unlabelled_photos": {str(folder): sum(s.image_id.startswith(f"{Path(folder).name}/") for s in extra)
                                      for folder in options.unlabelled}}))
            if self.dist.is_main:
                print(f"teacher {options.teacher}: its probabilities for {len(self.parts['train'])} labelled and "
                      f"{len(extra)} unlabelled training photos", file=sys.stderr)
        elif options.unlabelled:
            raise TrainingError("--unlabelled photos are labelled by a teacher: pass --teacher too")
        sets = []
        for part in ("train", "val"):
            samples = list(self.parts[part]) + (extra if part == "train" else [])
            images = prepare_cached(samples, input_size, preprocessing["interpolation"], preprocessing["crop_fov"],
                                    cache_dir=options.cache_dir, progress=self.dist.is_main)
            masks = (prepared_masks(samples, lesion_data, overlap, input_size, preprocessing["crop_fov"],
                                    grading_part=self.part or "train", cache_dir=options.cache_dir)
                     if part == "train" else {})
            augment = self.recipe.augmentation.build() if part == "train" else None
            grade_targets, teacher_maps = None, {}
            if part == "train" and soft_targets is not None:
                grade_targets = {key: soft_targets[key] for key in ("grade", "dme")}
                if self.recipe.distill_lesions:
                    allowed = teacher_map_indices(samples, options.unlabelled)
                    teacher_maps = {i: soft_targets["lesions"][i] for i in allowed if i not in masks}
            sets.append(LesionGradingDataset(samples, images, masks, normalising, augment,
                                             soft_targets=grade_targets, teacher_maps=teacher_maps))
        if self.dist.is_main:
            taught = len(sets[0].teacher_maps)
            print(f"lesion masks for {len(sets[0].masks)} of {len(sets[0])} training photos"
                  + (f", the teacher's lesion maps for {taught} others" if taught else ""), file=sys.stderr)
        return sets[0], sets[1]

    def train_epoch(self) -> float:
        """Train until the epoch ends; returns the mean training loss of the batches run now."""
        self.network.train()
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
        last_save = time.monotonic()
        losses: list[float] = []
        # The loader's iterator draws its base seed now, before the per-batch seeding below.
        batches = iter(self.train_loader)
        bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch,
                   desc=f"epoch {self.epoch + 1}/{self.recipe.epochs}", disable=not self.dist.is_main,
                   dynamic_ncols=True, mininterval=5)
        window_start, window_images = time.monotonic(), 0
        for batch_index in range(self.batch_in_epoch, self.steps_per_epoch):
            # Each batch's randomness (augmentation with --workers 0, drop path) comes from (seed, rank,
            # epoch, batch), so a resumed run replays exactly what the interrupted one would have done.
            torch.manual_seed(_step_seed(self.options.seed, self.dist.rank, self.epoch, batch_index))
            images, targets = next(batches)
            started = time.monotonic()
            images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
            targets = ({key: value.to(self.device, non_blocking=True) for key, value in targets.items()}
                       if isinstance(targets, dict) else targets.to(self.device, non_blocking=True))
            with self._autocast():
                loss = self._loss(self.network(images), targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.recipe.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
            self.batch_in_epoch += 1
            self.seconds_trained += time.monotonic() - started
            losses.append(loss.item())
            window_images += images.shape[0] * self.dist.world_size
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            bar.update(1)
            if self.step % 20 == 0:
                elapsed = time.monotonic() - window_start
                self._log({"event": "train", "epoch": self.epoch, "step": self.step,
                           "loss": float(np.mean(losses[-20:])), "lr": self.scheduler.get_last_lr()[0],
                           "images_per_second": window_images / max(elapsed, 1e-9)})
                window_start, window_images = time.monotonic(), 0
            if time.monotonic() - last_save > self.options.save_every_minutes * 60:
                self._save_state()
                last_save = time.monotonic()
        bar.close()
        return float(np.mean(losses)) if losses else float("nan")

    @property
    def kept_model(self) -> nn.Module:
        """The weights validated and saved: the moving average where the recipe keeps one."""
        return self.model if self.ema is None else self.ema.module

    def validate(self) -> dict:
        """Loss and grading metrics on the validation part (every process computes them alike); "selection"
        is what the best epoch is chosen by."""
        from drdemo.metrics import grading_metrics
        if self.config.heads:
            return self._validate_heads()
        logits, targets = loader_logits(self.kept_model, self.val_loader, self.config.test_time_views,
                                        memory_format=self.memory_format)
        weights = [len(batch) for batch in targets]
        batches = np.split(logits, np.cumsum(weights)[:-1])  # the loss per batch, as it was loaded
        losses = [self.val_loss_fn(torch.from_numpy(batch[:, 0]), batch_targets).item()
                  for batch, batch_targets in zip(batches, targets)]
        grades = np.asarray([s.grade for s in self.parts["val"]])
        metrics = grading_metrics(grades, class_probabilities(logits, self.config.calibration),
                                  task=self.options.task, class_names=self.config.class_names,
                                  referable_threshold=self.config.referable_threshold)
        metrics["loss"] = float(np.average(losses, weights=weights))
        metrics["selection"] = metrics["qwk"]
        return metrics

    def _validate_heads(self) -> dict:
        """Both grade heads' metrics, the DME risk's, and the softmax head's loss; the epoch is chosen by the
        better grade head's QWK plus the DME accuracy, and that head becomes the served one. Grades and risks are
        named at the config's thresholds, as everywhere (0.5 until `evaluate heads --choose-thresholds`)."""
        from drdemo.metrics import dme_metrics, grading_metrics
        arrays, _ = loader_outputs(self.kept_model, self.val_loader, self.config.test_time_views,
                                 memory_format=self.memory_format)
        grades = np.asarray([s.grade for s in self.parts["val"]])
        per_head = {head: grading_metrics(grades, class_probabilities(arrays[key], {}), task="icdr5",
                                          class_names=self.config.class_names,
                                          referable_threshold=self.config.referable_threshold)
                    for head, key in (("softmax", "softmax_logits"), ("ordinal", "ordinal_log_probabilities"))}
        head = max(per_head, key=lambda name: per_head[name]["qwk"])
        metrics = dict(per_head[head])
        metrics["grade_head"] = head
        metrics.update({f"{name}_qwk": values["qwk"] for name, values in per_head.items()})
        dme = np.asarray([NO_LABEL if s.dme is None else s.dme for s in self.parts["val"]])
        metrics.update(dme_metrics(dme, class_probabilities(arrays["dme_logits"], {}),
                                   threshold=self.config.dme_threshold))
        metrics["loss"] = float(self.val_loss_fn(torch.from_numpy(arrays["softmax_logits"][:, 0]),
                                                 torch.from_numpy(grades)).item())
        metrics["selection"] = metrics["qwk"] + metrics.get("dme_accuracy", 0.0)
        return metrics

    def run(self) -> CheckpointConfig:
        options, recipe = self.options, self.recipe
        if self.dist.is_main:
            print(f"training {options.model} ({self.options.task}) on {len(self.parts['train'])} images, validating on "
                  f"{len(self.parts['val'])}; {self.steps_per_epoch} steps per epoch x {recipe.epochs} epochs, "
                  f"{self.dist.world_size} process(es) on {self.device}", file=sys.stderr)
        while self.epoch < recipe.epochs:
            train_loss = self.train_epoch()
            metrics = self.validate()
            improved = (metrics["selection"], -metrics["loss"]) > (self.best.get("selection", self.best["qwk"]),
                                                                   -self.best["val_loss"])
            if improved:
                self.best = {"qwk": metrics["qwk"], "epoch": self.epoch + 1, "val_loss": metrics["loss"],
                             "selection": metrics["selection"]}
                if self.dist.is_main:
                    self._save_best(metrics)
            self._log({"event": "epoch", "epoch": self.epoch + 1, "train_loss": train_loss,
                       "val_loss": metrics["loss"], "val_qwk": metrics["qwk"], "val_accuracy": metrics["accuracy"],
                       "val_referable_auc": metrics.get("referable_auc"),
                       "val_dme_accuracy": metrics.get("dme_accuracy"),
                       "val_softmax_qwk": metrics.get("softmax_qwk"), "val_ordinal_qwk": metrics.get("ordinal_qwk"),
                       "lr": self.scheduler.get_last_lr()[0],
                       "seconds_trained": self.seconds_trained, "best": improved})
            if self.dist.is_main:
                print(f"epoch {self.epoch + 1}: train loss {train_loss:.4f}, val loss {metrics['loss']:.4f}, "
                      f"val QWK {metrics['qwk']:.4f}, accuracy {metrics['accuracy']:.4f}"
                      + (f" ({metrics['grade_head']} head; DME accuracy {metrics['dme_accuracy']:.4f})"
                         if "grade_head" in metrics else "")
                      + (" (best so far, saved)" if improved else ""), file=sys.stderr)
            self.epoch += 1
            self.batch_in_epoch = 0
            self._save_state()
            if self.dist.is_main:
                plot_curves(self.training_dir / LOG_NAME, self.training_dir / CURVES_NAME)
            if self.dist.enabled:
                dist.barrier()
        return self.config

    def _save_best(self, metrics: dict) -> None:
        keep = ("qwk", "accuracy", "referable_auc", "referable_sensitivity", "referable_specificity", "any_dr_auc",
                "softmax_qwk", "ordinal_qwk", "dme_accuracy", "referable_dme_auc")
        recorded = {f"val_{k}": round(float(metrics[k]), 4) for k in keep if metrics.get(k) is not None}
        provenance = dict(self.config.provenance, epochs=self.recipe.epochs, best_epoch=self.epoch + 1,
                          training_seconds=round(self.seconds_trained))
        heads = dict(self.config.heads, grade_head=metrics["grade_head"]) if self.config.heads else {}
        self.config = replace(self.config, metrics=recorded, provenance=provenance, heads=heads)
        if heads:
            self.kept_model.grade_head = heads["grade_head"]
        save_checkpoint(self.kept_model, self.config, self.options.out)


def three_head_loss(output: HeadsOutput, targets: dict, recipe: Recipe, grade_loss: nn.Module,
                    dme_loss: nn.Module) -> torch.Tensor:
    """The loss of a three-head model: the softmax grade head's (and InceptionV3's auxiliary head's), CORN's
    for the ordinal head, the DME risk's where the photo has one, and the lesion maps' on the photos with
    masks only, drawn or (with `distill_lesions`) a teacher's soft ones: the others contribute nothing to the
    lesion head."""
    graded = targets["grade"] >= 0  # photos only a teacher labels have grade -1
    loss = output.softmax_logits.new_zeros(())
    if graded.any():
        grades = targets["grade"][graded]
        loss = loss + grade_loss(output.softmax_logits[graded], grades)
        if output.aux_logits is not None:
            loss = loss + recipe.aux_loss_weight * grade_loss(output.aux_logits[graded], grades)
        loss = loss + recipe.ordinal_loss_weight * corn_loss(output.ordinal_logits[graded], grades)
    if recipe.distill_weight and "teacher_grade" in targets:
        temperature = recipe.distill_temperature
        loss = loss + recipe.distill_weight * (
            distillation_loss(output.softmax_logits, targets["teacher_grade"], temperature)
            + distillation_loss(output.dme_logits, targets["teacher_dme"], temperature))
    known = targets["dme"] >= 0
    if known.any():
        loss = loss + recipe.dme_loss_weight * dme_loss(output.dme_logits[known], targets["dme"][known])
    with_masks = targets["has_masks"]
    if with_masks.any():
        loss = loss + recipe.lesion_loss_weight * lesion_map_loss(output.lesion_logits[with_masks],
                                                                  targets["masks"][with_masks])
    return loss


def plot_curves(log_path: Path, out_path: Path) -> None:
    """Training loss (per logged window) and validation loss / QWK per epoch, from log.jsonl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train = [r for r in records if r["event"] == "train"]
    epochs = [r for r in records if r["event"] == "epoch"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        steps_per_epoch = max(1, train[-1]["step"] / max(1, epochs[-1]["epoch"] if epochs else 1))
        left.plot([r["step"] / steps_per_epoch for r in train], [r["loss"] for r in train], label="train (window)",
                  alpha=0.6)
    left.plot([r["epoch"] for r in epochs], [r["val_loss"] for r in epochs], "o-", label="validation")
    left.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    left.legend()
    right.plot([r["epoch"] for r in epochs], [r["val_qwk"] for r in epochs], "o-", label="QWK")
    right.plot([r["epoch"] for r in epochs], [r["val_accuracy"] for r in epochs], "s--", label="accuracy")
    right.set(xlabel="epoch", ylim=(0, 1), title="Validation")
    right.legend()
    figure.tight_layout()
    figure.savefig(out_path, dpi=100)
    plt.close(figure)


def _pick_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"--device {name}: CUDA is not available on this machine")
    return resolve_device(name)
