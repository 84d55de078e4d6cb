"""Train a registry model on a fundus folder and save the best epoch as a drdemo checkpoint.

`python -m drdemo.train`: the command line, its checks, and the recipe it makes from a preset and
the flags that override single fields (the package docstring says what a run leaves behind)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch.distributed as dist

from drdemo.errors import DrdemoError
from drdemo.models import list_models
from drdemo.tasks import TASK_CLASS_NAMES
from drdemo.train.command import recorded_command, set_threads
from drdemo.train.recipes import PRESETS, Recipe
from drdemo.train.trainer import RunOptions, Trainer


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
    parser.add_argument("--no-class-weights", action="store_true", help="plain cross-entropy for the grades")
    parser.add_argument("--no-dme-class-weights", action="store_true", help="plain cross-entropy for the DME risk "
                        "(three-head recipes weigh its risks by inverse frequency otherwise)")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, help="start from the architecture's "
                        "ImageNet weights (the imagenet preset does; InceptionV3 only)")
    parser.add_argument("--freeze-epochs", type=float, help="epochs that train only the new layers before the "
                        "pretrained ones join")
    parser.add_argument("--teacher", type=Path, help="a three-head checkpoint whose grade and DME probabilities the "
                        "model learns (the distill preset)")
    parser.add_argument("--unlabelled", type=Path, nargs="+", default=[], help="folders of photos only the teacher "
                        "labels (IDRiD's segmentation folder gives only photos that copy no grading photo)")
    parser.add_argument("--distill-weight", type=float, help="weight of the teacher's loss (0: off)")
    parser.add_argument("--distill-lesions", action=argparse.BooleanOptionalAction, help="learn the teacher's "
                        "lesion maps too, on the photos without drawn lesion masks")
    parser.add_argument("--lesion-loss-weight", type=float, help="weight of the lesion maps' loss (three-head "
                        "recipes; 1 by default)")
    parser.add_argument("--backbone-lr-ratio", type=float, help="the pretrained layers' rate as a share of --lr")
    parser.add_argument("--local-contrast", type=float, help="local contrast sigma as a share of the input size "
                        "(0: off; the real preset's 0.0167 is Ben Graham's)")
    parser.add_argument("--part", choices=("train", "test"), help="official part of a data set that has one "
                        "(IDRiD; default train)")
    parser.add_argument("--colour-balance", action=argparse.BooleanOptionalAction,
                        help="balance each photo's mean colour inside the field of view before the network sees it "
                             "(default: the preset's; the lesions, imagenet and distill presets do)")
    parser.add_argument("--ema", type=float, help="decay of an exponential moving average of the weights, which "
                        "is validated and saved instead of the raw weights (0.98: about the last 50 steps)")
    parser.add_argument("--cpu-bf16", action="store_true", help="bfloat16 autocast on CPU (fast on CPUs with "
                        "AVX512-BF16 or AMX)")
    parser.add_argument("--img-size", type=int, help="input size in pixels (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, help="seed of the validation split (default: --seed); runs that "
                        "differ only in --seed keep one validation part, so they can be compared and averaged")
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
    parser.add_argument("--lesion-data", type=Path, help="IDRiD's 'A. Segmentation' folder, for the lesions preset's "
                        "lesion maps (default: beside --data)")
    parser.add_argument("--lesion-overlap", type=Path, help="IDRiD's segmentation_grading_overlap.csv (default: "
                        "beside --data's parent)")
    parser.add_argument("--cache-dir", type=Path, help="where prepared photos are kept (default $DRDEMO_CACHE or "
                        "~/.cache/drdemo)")
    return parser


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    recipe = PRESETS[args.preset]
    overrides = {name: value for name, value in (
        ("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
        ("weight_decay", args.weight_decay), ("warmup_epochs", args.warmup_epochs),
        ("label_smoothing", args.label_smoothing), ("local_contrast", args.local_contrast),
        ("ema_decay", args.ema), ("pretrained", args.pretrained), ("freeze_epochs", args.freeze_epochs),
        ("backbone_lr_ratio", args.backbone_lr_ratio), ("distill_weight", args.distill_weight),
        ("distill_lesions", args.distill_lesions), ("lesion_loss_weight", args.lesion_loss_weight),
        ("colour_balance", args.colour_balance))
        if value is not None}
    if args.no_class_weights:
        overrides["class_weights"] = False
    if args.no_dme_class_weights:
        overrides["dme_class_weights"] = False
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
        (args.freeze_epochs is not None and args.freeze_epochs < 0, "--freeze-epochs must be >= 0"),
        (args.distill_weight is not None and args.distill_weight < 0, "--distill-weight must be >= 0"),
        (args.lesion_loss_weight is not None and args.lesion_loss_weight < 0, "--lesion-loss-weight must be >= 0"),
        (PRESETS[args.preset].distill_weight > 0 and args.teacher is None and not args.resume,
         f"--preset {args.preset} learns from a teacher: pass --teacher CHECKPOINT"),
        (args.teacher is not None and not (args.teacher / "config.json").is_file(),
         f"--teacher {args.teacher} is not a checkpoint folder (no config.json)"),
        (args.teacher is not None and not PRESETS[args.preset].heads,
         "--teacher needs a three-head recipe (--preset distill)"),
        (bool(args.distill_lesions) and args.teacher is None and not args.resume,
         "--distill-lesions learns a teacher's lesion maps: pass --teacher CHECKPOINT"),
        (any(not folder.is_dir() for folder in args.unlabelled),
         f"--unlabelled: {', '.join(str(f) for f in args.unlabelled if not f.is_dir())} is not a folder"),
        (args.backbone_lr_ratio is not None and not 0 < args.backbone_lr_ratio <= 1,
         "--backbone-lr-ratio must be in (0, 1]"),
        (bool(args.pretrained or (args.pretrained is None and PRESETS[args.preset].pretrained))
         and args.model not in list_models(pretrained=True),
         f"--model {args.model} has no pretrained weights (only {', '.join(list_models(pretrained=True))} has): "
         f"pass --no-pretrained, or another preset"),
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
    set_threads(parser, args.threads)
    command = recorded_command("drdemo.train", argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        command = f"torchrun --nproc_per_node {os.environ['WORLD_SIZE']} -m drdemo.train " + command.split(" ", 3)[3]
    options = RunOptions(model=args.model, data=args.data, out=args.out, task=args.task, preset=args.preset,
                         img_size=args.img_size, seed=args.seed, split_seed=args.split_seed,
                         val_fraction=args.val_fraction,
                         val_data=args.val_data, workers=args.workers, limit=args.limit, resume=args.resume,
                         device=args.device, amp=not args.no_amp, save_every_minutes=args.save_every_minutes,
                         init_from=args.init_from, part=args.part, cpu_bf16=args.cpu_bf16,
                         lesion_data=args.lesion_data, lesion_overlap=args.lesion_overlap, cache_dir=args.cache_dir,
                         teacher=args.teacher, unlabelled=tuple(args.unlabelled),
                         command=command)
    try:
        trainer = Trainer(options, recipe_from_args(args))
        trainer.run()
    except DrdemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if trainer.dist.is_main:
        print(f"best epoch {trainer.best['epoch']} (validation QWK {trainer.best['qwk']:.4f}) saved to {options.out}",
              file=sys.stderr)
    return 0
