"""Train a registry model on a fundus folder and save the best epoch as a drdemo checkpoint.

    python -m drdemo.train --model medmamba_t --data DIR --out FOLDER [--epochs 30 --batch-size 32 ...]
    torchrun --nproc_per_node 2 -m drdemo.train ...        (DDP: gloo on CPU, nccl on CUDA)

The best epoch by validation quadratic weighted kappa is written to FOLDER in the checkpoint
format (model.safetensors, config.json, README.md). FOLDER/training/ keeps what a run needs to
go on after an interruption (state.pt, rewritten every few minutes and at each epoch's end) and
what it did (log.jsonl, curves.png, split.json). `--resume` continues a run from state.pt,
mid-epoch included: each epoch's order is a fixed permutation of (seed, epoch), so the
remaining batches are the ones the interrupted run had not seen.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Sampler
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
    DatasetError,
    FundusDataset,
    Sample,
    class_counts,
    generator_info,
    load_samples,
    split_samples,
)
from drdemo.data.augment import (
    DRDEMO_AUGMENTATION,
    PAPER_AUGMENTATION,
    REAL_AUGMENTATION,
    Augmentation,
    eval_transform,
    train_transform,
)
from drdemo.errors import DrdemoError
from drdemo.inference import loader_logits, main_logits
from drdemo.models import create_model, list_models, model_defaults
from drdemo.tasks import TASK_CLASS_NAMES

STATE_NAME = "state.pt"
LOG_NAME = "log.jsonl"
CURVES_NAME = "curves.png"
SPLIT_NAME = "split.json"


class TrainingError(DrdemoError, ValueError):
    """A run that cannot start or go on; the message says what to change."""


@dataclass(frozen=True)
class Recipe:
    """Optimisation and augmentation choices. Presets below; CLI flags override single fields."""

    optimizer: str = "adamw"          # adamw | adam
    lr: float = 5e-4
    weight_decay: float = 0.05
    batch_size: int = 32
    epochs: int = 30
    warmup_epochs: float = 1.0
    schedule: str = "cosine"          # cosine (after linear warmup) | constant
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.1
    class_weights: bool = True        # inverse label frequency, as in seed 001's EyePACS pipeline
    aux_loss_weight: float = 0.4      # InceptionV3's auxiliary classifier (Szegedy et al.)
    grad_clip: float = 5.0
    augmentation: Augmentation = DRDEMO_AUGMENTATION
    local_contrast: float = 0.0       # preprocessing: drdemo.preprocess.local_contrast's sigma (0: off)
    ema_decay: float = 0.0            # exponential moving average of the weights (0: off); validated and saved
                                      # instead of the raw weights: on a few hundred photos the raw weights'
                                      # validation QWK jumps by 0.1 from one epoch to the next


PRESETS = {
    "drdemo": Recipe(),
    # Seed 000: Adam lr 1e-4, batch 64, plain cross-entropy, constant rate, its augmentation.
    "medmamba-paper": Recipe(optimizer="adam", lr=1e-4, weight_decay=0.0, batch_size=64, epochs=300,
                             warmup_epochs=0.0, schedule="constant", label_smoothing=0.0, class_weights=False,
                             grad_clip=0.0, augmentation=PAPER_AUGMENTATION),
    # A few hundred real photographs from one camera (IDRiD): a lower peak rate, longer warmup, strong
    # camera augmentation, and Ben Graham's local contrast (sigma = side / 60, his 10 px at 300 px
    # radius), which removes most of a camera's illumination and colour before the network sees it.
    "real": Recipe(lr=3e-4, batch_size=16, epochs=30, warmup_epochs=2.0, augmentation=REAL_AUGMENTATION,
                   local_contrast=0.0167),
}


# ---------------------------------------------------------------------------- distributed

@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun set up (WORLD_SIZE > 1); a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))


class EpochSampler(Sampler[int]):
    """The epoch's permutation of (seed, epoch), this rank's share of it, from batch `start_batch` on.

    Every rank draws the same permutation and takes every world_size-th index, cut to a whole
    number of batches per rank so all ranks step together.
    """

    def __init__(self, size: int, batch_size: int, seed: int, dist_info: Distributed):
        self.size, self.batch_size, self.seed, self.dist = size, batch_size, seed, dist_info
        self.epoch, self.start_batch = 0, 0

    def batches_per_epoch(self) -> int:
        return (self.size // self.dist.world_size) // self.batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)[self.dist.rank::self.dist.world_size]
        order = order[:self.batches_per_epoch() * self.batch_size]
        return iter(order[self.start_batch * self.batch_size:].tolist())

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.start_batch) * self.batch_size


# ---------------------------------------------------------------------------- pieces

def class_weights(samples: Sequence[Sample], task: str) -> torch.Tensor:
    """n / (classes * count) per class (scikit-learn's "balanced"); absent classes get weight 0."""
    counts = np.asarray(class_counts(samples, task), dtype=np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms and the parameters a model marks `_no_weight_decay`
    (MedMamba's A_logs and Ds, as in the official code)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.ndim <= 1 or getattr(parameter, "_no_weight_decay", False) or name.endswith(".bias"):
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Linear warmup from ~0, then cosine decay to `min_ratio` (or constant)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


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


def _describe_data(root: Path, layout: str, parts: dict[str, list[Sample]], part: str | None = None) -> str:
    sizes = ", ".join(f"{len(v)} {k}" for k, v in parts.items())
    if layout == "idrid":
        return (f"IDRiD disease grading ({root.name}), its official {part} part ({sum(map(len, parts.values()))} "
                f"photos from one Kowa VX-10 alpha camera at Aravind Eye Hospital, Nanded, India; ICDR grades by "
                f"retina specialists), split grade-stratified into {sizes}. IDRiD: Porwal et al., IEEE Dataport "
                f"2018, doi:10.21227/H25W98, CC BY 4.0.")
    info = generator_info(root) if layout == "synthetic" else None
    if info is not None:
        return (f"Synthetic fundus images made by drdemo.data.synthetic (version {info.get('version')}, seed "
                f"{info.get('seed')}, {info.get('n')} images at {info.get('size')} px, {info.get('class_balance')} "
                f"grade balance), split by patient into {sizes}. No real patient images.")
    return f"{layout} dataset at {root.name}, split by patient into {sizes}."


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
        input_size = options.img_size or defaults.input_size
        self.config = self._initial_config(input_size)
        kwargs = dict(input_size=input_size, mean=self.config.mean, std=self.config.std,
                      interpolation=self.config.preprocessing["interpolation"],
                      crop_fov=self.config.preprocessing["crop_fov"],
                      local_contrast_sigma=self.config.preprocessing["local_contrast"])
        self.train_set = FundusDataset(self.parts["train"], train_transform(augmentation=recipe.augmentation, **kwargs),
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

        self.model = create_model(options.model, num_classes=len(TASK_CLASS_NAMES[options.task]))
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
        groups = parameter_groups(self.model, recipe.weight_decay)
        optimizer_class = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[recipe.optimizer]
        self.optimizer = optimizer_class(groups, lr=recipe.lr)
        self.steps_per_epoch = self.sampler.batches_per_epoch()
        self.total_steps = recipe.epochs * self.steps_per_epoch
        warmup = round(recipe.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(step, self.total_steps, warmup, recipe.schedule, recipe.min_lr_ratio))
        self.autocast_dtype = (torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
                               else torch.float16) if (self.device.type == "cuda" and options.amp) else None
        if self.device.type == "cpu" and options.cpu_bf16:
            self.autocast_dtype = torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast_dtype == torch.float16)

        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.best: dict = {"qwk": -math.inf, "epoch": None, "val_loss": math.inf}
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
        from drdemo.data import detect_layout
        layout = detect_layout(options.data)
        self.part = options.part if options.part is not None or layout not in PARTS else "train"
        samples = load_samples(options.data, layout, part=self.part)
        if options.limit:
            samples = split_samples(samples, {"train": min(1.0, options.limit / len(samples)),
                                              "rest": max(0.0, 1 - options.limit / len(samples))},
                                    seed=options.seed)["train"] if options.limit < len(samples) else samples
        split_path = self.training_dir / SPLIT_NAME
        if options.val_data is not None:
            parts = {"train": samples, "val": load_samples(options.val_data)}
        elif options.resume and split_path.is_file():
            saved = json.loads(split_path.read_text())["parts"]
            by_id = {s.image_id: s for s in samples}
            parts = {name: [by_id[i] for i in ids] for name, ids in saved.items()}
        else:
            parts = split_samples(samples, {"train": 1 - options.val_fraction, "val": options.val_fraction},
                                  seed=options.seed)
        if not parts["val"]:
            raise TrainingError("the validation part is empty: raise --val-fraction or pass --val-data")
        if self.dist.is_main and not (options.resume and split_path.is_file()):
            self.training_dir.mkdir(parents=True, exist_ok=True)
            split_path.write_text(json.dumps({"data": str(options.data), "layout": layout, "part": self.part,
                                              "seed": options.seed,
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
        if source is not None and source.preprocessing["local_contrast"] == self.recipe.local_contrast:
            mean, std = source.mean, source.std  # keep the statistics the weights were trained with
        else:  # new data, or inputs the source never saw (local contrast changes every pixel): measure them
            from drdemo.data.stats import channel_stats
            mean, std = channel_stats(self.parts["train"], input_size=input_size, limit=options.stats_images,
                                      seed=options.seed, local_contrast_sigma=self.recipe.local_contrast)
        recipe = asdict(self.recipe)
        recipe["preset"] = options.preset
        return CheckpointConfig.for_architecture(
            options.model, task=options.task, input_size=input_size,
            mean=tuple(round(float(v), 5) for v in mean), std=tuple(round(float(v), 5) for v in std),
            preprocessing={"interpolation": "bicubic", "crop_fov": True, "local_contrast": self.recipe.local_contrast},
            provenance={"trained": True, "data": _describe_data(options.data, self.layout, self.parts, self.part),
                        "data_command": _data_command(options.data) if self.layout == "synthetic" else None,
                        "recipe": json.dumps(recipe, default=str), "seed": options.seed,
                        "command": options.command, "code_commit": code_commit(),
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
        self.model.load_state_dict(state, strict=True)
        provenance = dict(self.config.provenance, initialised_from=str(folder),
                          initialised_from_provenance=source.provenance)
        self.config = replace(self.config, provenance=provenance)

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

    def _loss(self, output, targets: torch.Tensor) -> torch.Tensor:
        if hasattr(output, "aux_logits") and output.aux_logits is not None:
            return (self.loss_fn(output.logits, targets)
                    + self.recipe.aux_loss_weight * self.loss_fn(output.aux_logits, targets))
        return self.loss_fn(main_logits(output), targets)

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
            targets = targets.to(self.device, non_blocking=True)
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
        """Loss and grading metrics on the validation part (every process computes them alike)."""
        from drdemo.metrics import grading_metrics
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
            improved = (metrics["qwk"], -metrics["loss"]) > (self.best["qwk"], -self.best["val_loss"])
            if improved:
                self.best = {"qwk": metrics["qwk"], "epoch": self.epoch + 1, "val_loss": metrics["loss"]}
                if self.dist.is_main:
                    self._save_best(metrics)
            self._log({"event": "epoch", "epoch": self.epoch + 1, "train_loss": train_loss,
                       "val_loss": metrics["loss"], "val_qwk": metrics["qwk"], "val_accuracy": metrics["accuracy"],
                       "val_referable_auc": metrics.get("referable_auc"), "lr": self.scheduler.get_last_lr()[0],
                       "seconds_trained": self.seconds_trained, "best": improved})
            if self.dist.is_main:
                print(f"epoch {self.epoch + 1}: train loss {train_loss:.4f}, val loss {metrics['loss']:.4f}, "
                      f"val QWK {metrics['qwk']:.4f}, accuracy {metrics['accuracy']:.4f}"
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
        keep = ("qwk", "accuracy", "referable_auc", "referable_sensitivity", "referable_specificity", "any_dr_auc")
        recorded = {f"val_{k}": round(float(metrics[k]), 4) for k in keep if metrics.get(k) is not None}
        provenance = dict(self.config.provenance, epochs=self.recipe.epochs, best_epoch=self.epoch + 1,
                          training_seconds=round(self.seconds_trained))
        self.config = replace(self.config, metrics=recorded, provenance=provenance)
        save_checkpoint(self.kept_model, self.config, self.options.out)


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


# ---------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m drdemo.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=list_models())
    parser.add_argument("--data", required=True, type=Path, help="dataset folder (IDRiD grading, EyePACS, APTOS, "
                        "ImageFolder or synthetic layout, detected)")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    parser.add_argument("--task", default="icdr5", choices=sorted(TASK_CLASS_NAMES))
    parser.add_argument("--preset", default="drdemo", choices=sorted(PRESETS))
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--warmup-epochs", type=float)
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--no-class-weights", action="store_true")
    parser.add_argument("--local-contrast", type=float, help="local contrast sigma as a share of the input size "
                        "(0: off; the real preset's 0.0167 is Ben Graham's)")
    parser.add_argument("--part", choices=("train", "test"), help="official part of a data set that has one "
                        "(IDRiD; default train)")
    parser.add_argument("--ema", type=float, help="decay of an exponential moving average of the weights, which "
                        "is validated and saved instead of the raw weights (0.98: about the last 50 steps)")
    parser.add_argument("--cpu-bf16", action="store_true", help="bfloat16 autocast on CPU (fast on CPUs with "
                        "AVX512-BF16 or AMX)")
    parser.add_argument("--img-size", type=int, help="input size in pixels (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.15, help="share of patients held out to validate")
    parser.add_argument("--val-data", type=Path, help="a separate validation folder instead of a split")
    parser.add_argument("--limit", type=int, help="use only this many images (quick runs)")
    parser.add_argument("--workers", type=int, default=2, help="data loading processes")
    parser.add_argument("--threads", type=int, help="torch CPU threads per process")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--no-amp", action="store_true", help="train in float32 on CUDA too")
    parser.add_argument("--save-every-minutes", type=float, default=10.0)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--init-from", type=Path, help="start from this checkpoint folder's weights (new optimiser)")
    return parser


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    recipe = PRESETS[args.preset]
    overrides = {name: value for name, value in (
        ("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
        ("weight_decay", args.weight_decay), ("warmup_epochs", args.warmup_epochs),
        ("label_smoothing", args.label_smoothing), ("local_contrast", args.local_contrast),
        ("ema_decay", args.ema)) if value is not None}
    if args.no_class_weights:
        overrides["class_weights"] = False
    return replace(recipe, **overrides)


def _validate_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    checks = [
        (args.epochs is not None and args.epochs < 1, "--epochs must be at least 1"),
        (args.batch_size is not None and args.batch_size < 1, "--batch-size must be at least 1"),
        (args.lr is not None and not 0 < args.lr < 1, "--lr must be in (0, 1)"),
        (args.label_smoothing is not None and not 0 <= args.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
        (args.local_contrast is not None and not 0 <= args.local_contrast <= 0.5,
         "--local-contrast must be in [0, 0.5]"),
        (args.ema is not None and not 0 <= args.ema < 1, "--ema must be in [0, 1) (0: off)"),
        (args.img_size is not None and not 64 <= args.img_size <= 1024, "--img-size must be in [64, 1024]"),
        (not 0 < args.val_fraction < 1, "--val-fraction must be in (0, 1)"),
        (args.workers < 0, "--workers must be >= 0"),
        (args.limit is not None and args.limit < 2, "--limit must be at least 2"),
        (not args.data.is_dir(), f"--data {args.data} is not a folder"),
        (args.val_data is not None and not args.val_data.is_dir(), f"--val-data {args.val_data} is not a folder"),
    ]
    for failed, message in checks:
        if failed:
            parser.error(message)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate_args(args, parser)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m drdemo.train " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        command = f"torchrun --nproc_per_node {os.environ['WORLD_SIZE']} -m drdemo.train " + command.split(" ", 3)[3]
    options = RunOptions(model=args.model, data=args.data, out=args.out, task=args.task, preset=args.preset,
                         img_size=args.img_size, seed=args.seed, val_fraction=args.val_fraction,
                         val_data=args.val_data, workers=args.workers, limit=args.limit, resume=args.resume,
                         device=args.device, amp=not args.no_amp, save_every_minutes=args.save_every_minutes,
                         init_from=args.init_from, part=args.part, cpu_bf16=args.cpu_bf16, command=command)
    try:
        trainer = Trainer(options, recipe_from_args(args))
        trainer.run()
    except (TrainingError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if trainer.dist.is_main:
        print(f"best epoch {trainer.best['epoch']} (validation QWK {trainer.best['qwk']:.4f}) saved to {options.out}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
