"""`python -m drdemo.screen INPUT --out DIR [--models medmamba inception] [--cams DIR] [--batch-size 16]
[--device auto]`, and the same under `torchrun --nproc_per_node N [--nnodes M ...] -m drdemo.screen ...`.

Each rank grades every world_size-th photo of the sorted input list, skipping photos any part file in DIR already
holds, and appends its rows to its own part file after every batch; rank 0 merges the parts into DIR/grades.csv
and writes DIR/summary.json. Ranks join through torchrun's rendezvous (gloo on CPU, nccl on GPU, one process per
GPU); the process group is used only for the final barrier.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from drdemo.errors import DrdemoError
from drdemo.screen import writer
from drdemo.screen.run import BatchGrader, screen
from drdemo.screen.shards import ScreenError, list_inputs, shard
from drdemo.screen.summary import summarise, summary_text
from drdemo.serving.slots import SLOTS, load_settings, serve


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m drdemo.screen", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="folder of photos (read recursively) or a CSV with a 'file' column")
    parser.add_argument("--out", type=Path, required=True, help="folder for grades.csv, summary.json and the parts")
    parser.add_argument("--models", nargs="+", choices=list(SLOTS), default=list(SLOTS),
                        help="served slots to grade with (default: all)")
    parser.add_argument("--cams", type=Path, default=None, help="also save each model's default heat map here")
    parser.add_argument("--batch-size", type=int, default=16, help="photos per forward pass (default 16)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto; under torchrun "
                                                         "on GPU each rank takes cuda:LOCAL_RANK)")
    return parser


def _world() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def _device(requested: str, local_rank: int, world_size: int) -> str:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and world_size > 1:
        return f"cuda:{local_rank}"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ScreenError(f"--device {requested}: CUDA is not available on this machine")
    if not (requested == "cpu" or requested.startswith("cuda")):
        raise ScreenError(f"--device {requested!r}: choose auto, cpu, cuda or cuda:N")
    return requested


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.batch_size < 1:
        parser().error(f"--batch-size must be at least 1, got {args.batch_size}")
    rank, world_size, local_rank = _world()
    try:
        device = _device(args.device, local_rank, world_size)
        root, names = list_inputs(args.input)
    except DrdemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    distributed = world_size > 1
    if distributed:
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        return _run(args, root, names, device, rank, world_size, distributed)
    except DrdemoError as exc:
        print(f"error (rank {rank}): {exc}", file=sys.stderr)
        return 2
    finally:
        if distributed:
            dist.destroy_process_group()


def _run(args, root: Path, names: list[str], device: str, rank: int, world_size: int, distributed: bool) -> int:
    os.environ["DRDEMO_DEVICE"] = device          # the served slots load onto this rank's device
    settings = {s.slot: s for s in load_settings()}
    graders = []
    for slot in dict.fromkeys(args.models):
        served = serve(settings[slot])
        if rank == 0:
            print(f"{slot}: {served.status}", file=sys.stderr)
        graders.append(BatchGrader(served))
    fieldnames = writer.columns({g.slot: (g.config.class_names, g.dme_classes) for g in graders})
    fingerprint = {"models": {g.slot: g.fingerprint() for g in graders}, "columns": fieldnames,
                   "input": str(args.input.resolve()), "files": len(names)}
    if rank == 0:
        writer.claim(args.out, fingerprint)
    if distributed:
        dist.barrier()
    writer.claim(args.out, fingerprint)
    done = {row["file"] for part in args.out.glob("part-*-of-*.csv") for row in writer.read_part(part, fieldnames)}
    mine = [name for name in shard(names, rank, world_size) if name not in done]
    part = writer.PartWriter(writer.part_path(args.out, rank, world_size), fieldnames)
    bar = tqdm(total=len(mine), unit="photo", desc=f"rank {rank}", file=sys.stderr, position=rank,
               disable=None if rank == 0 else True, dynamic_ncols=True)
    try:
        seconds = screen(root, mine, graders, args.batch_size, part.append, args.cams, bar.update)
    finally:
        bar.close()
        part.close()
    throughput = {"rank": rank, "photos": len(mine), "seconds": seconds}
    gathered = [throughput]
    if distributed:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, throughput)
    if rank != 0:
        return 0
    rows = writer.merge(args.out, names, fieldnames)
    summary = summarise(rows, [g.slot for g in graders], gathered)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(summary_text(summary, args.out / writer.GRADES))
    return 0
