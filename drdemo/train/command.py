"""What the training command lines share: the command a checkpoint's provenance records, and --threads."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

import torch


def recorded_command(module: str, argv: Sequence[str] | None) -> str:
    """`python -m MODULE ARGS` as typed (`argv`, or the process's own arguments), quoted for a shell."""
    return f"python -m {module} " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def set_threads(parser: argparse.ArgumentParser, threads: int | None) -> None:
    """torch's CPU threads from --threads (None keeps torch's default); below 1 is a usage error, not a traceback."""
    if threads is None:
        return
    if threads < 1:
        parser.error("--threads must be at least 1")
    torch.set_num_threads(threads)
