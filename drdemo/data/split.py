"""Patient-grouped, grade-stratified splits, and their JSON file so training and evaluation reuse one split.

A patient's two eyes are strongly correlated (same person, usually the same grade), so they always
land in the same part; otherwise validation scores leak. Patients are stratified by their worst
(highest-grade) eye.

    python -m drdemo.data.split --data DIR --out split.json [--val 0.15] [--test 0.0] [--seed 0] [--part train]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from drdemo.data.datasets import DatasetError, Sample, detect_layout, load_samples
from drdemo.tasks import NUM_GRADES

DEFAULT_FRACTIONS = {"train": 0.8, "val": 0.2}
SPLIT_FORMAT = "drdemo-split/1"


def _check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    if not fractions:
        raise ValueError("fractions is empty; give at least one part, e.g. {'train': 0.8, 'val': 0.2}")
    checked = {}
    for name, value in fractions.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"part names must be non-empty strings, got {name!r}")
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"fraction of {name!r} is {value}; fractions must be between 0 and 1")
        checked[name] = value
    total = sum(checked.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"fractions {checked} sum to {total:g}; they must sum to 1")
    return checked


def split_samples(samples: Sequence[Sample], fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
                  seed: int = 0) -> dict[str, list[Sample]]:
    """Parts of `samples` (each sorted by image id) of about the given fractions of images.

    Deterministic for a given seed and set of samples. Within each grade stratum patients are shuffled,
    then each goes to the part furthest below its share of that stratum (ties: of the whole set), and
    every part with a positive fraction gets at least one patient of each grade that has enough patients
    - so tiny sets still have every grade in validation. Parts with fraction 0 come back empty.
    """
    fractions = _check_fractions(fractions)
    names = list(fractions)
    shares = np.array([fractions[name] for name in names])
    positive = [i for i, share in enumerate(shares) if share > 0]

    by_patient: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_patient[sample.patient].append(sample)
    strata: dict[int, list[str]] = defaultdict(list)
    for patient in sorted(by_patient):
        strata[max(s.grade for s in by_patient[patient])].append(patient)

    rng = np.random.default_rng(seed)
    total_counts = np.zeros(len(names))
    assigned: dict[str, int] = {}
    # Rare grades first: their rounding is settled while the common grades can still even out the totals.
    for grade in sorted(strata, key=lambda g: (len(strata[g]), g)):
        patients = [strata[grade][i] for i in rng.permutation(len(strata[grade]))]
        counts = np.zeros(len(names))
        holders = np.zeros(len(names), dtype=int)  # patients of this stratum per part
        for remaining, patient in zip(range(len(patients), 0, -1), patients):
            size = len(by_patient[patient])
            empty = [i for i in positive if holders[i] == 0]
            candidates = empty if remaining <= len(empty) else positive
            stratum_deficit = shares * (counts.sum() + size) - counts
            total_deficit = shares * (total_counts.sum() + size) - total_counts
            part = max(candidates, key=lambda i: (stratum_deficit[i], total_deficit[i], -i))
            assigned[patient] = part
            counts[part] += size
            total_counts[part] += size
            holders[part] += 1

    parts: dict[str, list[Sample]] = {name: [] for name in names}
    for patient, members in by_patient.items():
        parts[names[assigned[patient]]].extend(members)
    return {name: sorted(part, key=lambda s: s.image_id) for name, part in parts.items()}


def grade_counts(samples: Sequence[Sample]) -> dict[str, int]:
    """Images per ICDR grade, every grade listed; string keys as in the JSON file."""
    counts = {str(grade): 0 for grade in range(NUM_GRADES)}
    for sample in samples:
        counts[str(sample.grade)] += 1
    return counts


def save_split(path: Path | str, parts: Mapping[str, Sequence[Sample]], layout: str, seed: int) -> Path:
    """Write a split as JSON: layout, seed, the image ids of each part and its grade counts."""
    path = Path(path)
    document = {
        "format": SPLIT_FORMAT,
        "layout": layout,
        "seed": seed,
        "parts": {name: [s.image_id for s in part] for name, part in parts.items()},
        "grade_counts": {name: grade_counts(part) for name, part in parts.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    return path


def load_split(path: Path | str, samples: Sequence[Sample]) -> dict[str, list[Sample]]:
    """The parts of a saved split, as samples of the data set it was made from.

    The split and the data set must match exactly: ids that are missing from the data, or images
    that are in no part, mean the split was made for another data set (or another version of it).
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read the split file ({exc}); write one with "
                           "python -m drdemo.data.split") from exc
    parts = document.get("parts") if isinstance(document, dict) else None
    if not isinstance(parts, dict) or not all(isinstance(ids, list) and all(isinstance(i, str) for i in ids)
                                              for ids in parts.values()):
        raise DatasetError(f"{path}: not a split file (needs \"parts\": {{name: [image ids]}}); write one with "
                           "python -m drdemo.data.split")
    by_id = {sample.image_id: sample for sample in samples}
    seen: dict[str, str] = {}
    unknown: list[str] = []
    result: dict[str, list[Sample]] = {}
    for name, ids in parts.items():
        for image_id in ids:
            if image_id in seen:
                raise DatasetError(f"{path}: image {image_id!r} is in both {seen[image_id]!r} and {name!r}")
            seen[image_id] = name
            if image_id not in by_id:
                unknown.append(image_id)
        result[name] = sorted((by_id[i] for i in ids if i in by_id), key=lambda s: s.image_id)
    if unknown:
        raise DatasetError(f"{path}: {len(unknown)} id(s) of the split are not in the data set, e.g. "
                           f"{', '.join(unknown[:3])}; the split was made for other data - make a new one")
    unplaced = sorted(set(by_id) - set(seen))
    if unplaced:
        raise DatasetError(f"{path}: {len(unplaced)} image(s) of the data set are in no part, e.g. "
                           f"{', '.join(unplaced[:3])}; the split was made for other data - make a new one")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drdemo.data.split",
                                     description="patient-grouped, grade-stratified train/val(/test) split")
    parser.add_argument("--data", type=Path, required=True, help="data set folder (layout detected)")
    parser.add_argument("--out", type=Path, required=True, help="split JSON file to write")
    parser.add_argument("--val", type=float, default=0.15, help="validation fraction (default 0.15)")
    parser.add_argument("--test", type=float, default=0.0, help="test fraction (default 0: no test part)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--part", help="official part to split, for data sets that have one (IDRiD: train)")
    args = parser.parse_args(argv)
    try:
        for option, value in (("--val", args.val), ("--test", args.test)):
            if not 0 <= value < 1:
                raise ValueError(f"{option} must be at least 0 and below 1, got {value}")
        if args.val + args.test >= 1:
            raise ValueError(f"--val {args.val} and --test {args.test} leave nothing to train on")
        fractions = {"train": 1 - args.val - args.test, "val": args.val}
        if args.test > 0:
            fractions["test"] = args.test
        layout = detect_layout(args.data)
        parts = split_samples(load_samples(args.data, layout, part=args.part), fractions, args.seed)
        save_split(args.out, parts, layout, args.seed)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = ", ".join(f"{name} {len(part)}" for name, part in parts.items())
    print(f"wrote {args.out} ({layout}; {summary} images)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
