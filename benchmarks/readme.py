"""Rewriting one generated section of benchmarks/README.md, between its start and end markers."""

from __future__ import annotations

from pathlib import Path


def update_section(path: Path, table: str, start: str, end: str) -> None:
    """Replace what stands between `start` and `end` in `path` with `table`; the rest stays as it is."""
    text = path.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {start} ... {end} section to update")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{table}\n{end}{tail}")
