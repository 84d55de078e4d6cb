"""Train a registry model on a fundus folder and save the best epoch as a drdemo checkpoint.

    python -m drdemo.train --model medmamba_t --data DIR --out FOLDER [--epochs 30 --batch-size 32 ...]
    torchrun --nproc_per_node 2 -m drdemo.train ...        (DDP: gloo on CPU, nccl on CUDA)

The best epoch by validation quadratic weighted kappa is written to FOLDER in the checkpoint
format (model.safetensors, config.json, README.md). FOLDER/training/ keeps what a run needs to
go on after an interruption (state.pt, rewritten every few minutes and at each epoch's end) and
what it did (log.jsonl, curves.png, split.json). `--resume` continues a run from state.pt,
mid-epoch included: each epoch's order is a fixed permutation of (seed, epoch), so the
remaining batches are the ones the interrupted run had not seen.

The package: recipes.py (the recipe and its presets), distributed.py (ranks and the epoch
sampler), trainer.py (the run), cli.py (the command line; command.py holds what it shares with the other training
commands); `python -m drdemo.train` runs cli.main.
"""

from drdemo.train.cli import build_parser, main, recipe_from_args
from drdemo.train.distributed import Distributed, EpochSampler, init_distributed
from drdemo.train.recipes import PRESETS, Recipe, class_weights, lr_factor, parameter_groups
from drdemo.train.trainer import (
    CURVES_NAME,
    LOG_NAME,
    SPLIT_NAME,
    STATE_NAME,
    RunOptions,
    Trainer,
    TrainingError,
    _data_command,
    plot_curves,
)

__all__ = [
    "CURVES_NAME", "LOG_NAME", "PRESETS", "SPLIT_NAME", "STATE_NAME", "Distributed", "EpochSampler", "Recipe",
    "RunOptions", "Trainer", "TrainingError", "_data_command", "build_parser", "class_weights", "init_distributed",
    "lr_factor", "main", "parameter_groups", "plot_curves", "recipe_from_args",
]
