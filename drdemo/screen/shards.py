"""Which photos a run grades, and which of them each rank takes: a sorted list, cut deterministically."""

from __future__ import annotations

import csv
from pathlib import Path

from drdemo.batch import IMAGE_SUFFIXES
from drdemo.errors import DrdemoError


class ScreenError(DrdemoError, ValueError):
    """A screening run that cannot start (no input, a bad CSV, a DIR holding another configuration's parts)."""


def list_inputs(source: Path) -> tuple[Path, list[str]]:
    """(root, sorted file names relative to root) of a folder read recursively for image files, or of a CSV
    with a `file` column (relative paths are relative to the CSV's folder). Every listed CSV row is kept, so a
    missing file becomes an unreadable row rather than vanishing."""
    if source.is_dir():
        names = sorted(str(path.relative_to(source)) for path in source.rglob("*")
                       if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."))
        root = source
    elif source.is_file() and source.suffix.lower() == ".csv":
        with open(source, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if "file" not in (reader.fieldnames or []):
                raise ScreenError(f"{source}: a CSV input needs a 'file' column; its columns are "
                                  f"{', '.join(reader.fieldnames or []) or 'none'}")
            names = sorted({row["file"].strip() for row in reader if row["file"] and row["file"].strip()})
        root = source.parent
    elif source.exists():
        raise ScreenError(f"{source}: INPUT must be a folder of photos or a .csv with a 'file' column")
    else:
        raise ScreenError(f"{source} does not exist")
    if not names:
        raise ScreenError(f"{source}: no image files found ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return root, names


def shard(names: list[str], rank: int, world_size: int) -> list[str]:
    """Rank `rank`'s share of the sorted `names`: every world_size-th one, so shards differ by at most one photo
    and every photo belongs to exactly one rank."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    return names[rank::world_size]
