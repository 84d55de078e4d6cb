"""The run's files in DIR: per-rank part files appended after every batch, the fingerprint that ties DIR to one
model configuration, and the merged grades.csv.

A part file is only ever appended to and flushed (with fsync) after each batch, so a kill at any moment leaves
complete rows and at most one half-written last line; reading a part drops that line, and the rank grades the
photo again.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from drdemo.screen.shards import ScreenError

FINGERPRINT = "screen.json"
GRADES = "grades.csv"
OUTCOMES = ("accepted", "warned", "refused", "unreadable")


def columns(slots: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]) -> list[str]:
    """CSV columns for `slots` = {slot: (class names, DME class names or () for a single-head model)}."""
    names = ["file", "outcome", "reason"]
    for slot, (classes, dme_classes) in slots.items():
        names += [f"{slot}_grade", f"{slot}_p_referable", f"{slot}_referred"] + [f"{slot}_p_{slug(c)}" for c in classes]
        if dme_classes:
            names += [f"{slot}_dme_p_referable"] + [f"{slot}_dme_p_{slug(c)}" for c in dme_classes]
    return names


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


def claim(out: Path, fingerprint: dict) -> None:
    """Tie `out` to `fingerprint` (models, weights, settings, input list); refuse a DIR tied to another one."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / FINGERPRINT
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored != fingerprint:
            changed = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
            raise ScreenError(f"{out} holds a run with a different configuration ({', '.join(changed)} changed); "
                              f"it cannot resume there. Use another --out, or delete {out} to start over.")
        return
    path.write_text(json.dumps(fingerprint, indent=2, sort_keys=True))


def part_path(out: Path, rank: int, world_size: int) -> Path:
    return out / f"part-{rank:05d}-of-{world_size:05d}.csv"


def read_part(path: Path, fieldnames: list[str]) -> list[dict]:
    """Complete rows of a part file; a half-written last line (no newline yet) is cut off the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
    rows = list(csv.DictReader(io.StringIO(data[:end].decode("utf-8"), newline=""), fieldnames=fieldnames))
    return [row for row in rows if row["outcome"] in OUTCOMES]


class PartWriter:
    """Append rows to one part file, flushed to disk after each batch."""

    def __init__(self, path: Path, fieldnames: list[str]):
        self.handle = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.handle, fieldnames=fieldnames, lineterminator="\n")

    def append(self, rows: list[dict]) -> None:
        self.writer.writerows(rows)
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def merge(out: Path, names: list[str], fieldnames: list[str]) -> list[dict]:
    """Every part's rows, one per name in `names` order, written to grades.csv (atomically)."""
    found: dict[str, dict] = {}
    for part in sorted(out.glob("part-*-of-*.csv")):
        for row in read_part(part, fieldnames):
            found.setdefault(row["file"], row)
    missing = [name for name in names if name not in found]
    if missing:
        raise ScreenError(f"{len(missing)} photos have no row yet (first: {missing[0]}); run the command again")
    rows = [found[name] for name in names]
    temporary = out / f".{GRADES}.tmp"
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, out / GRADES)
    return rows
