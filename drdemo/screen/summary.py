"""What a finished run found: counts per outcome, referral rate per model, agreement, throughput."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from drdemo.screen.writer import OUTCOMES


def summarise(rows: list[dict], thresholds: dict[str, float], ranks: list[dict]) -> dict:
    """Summary of `rows` graded by the slots of `thresholds` (slot -> its checkpoint's referable threshold); `ranks` is each rank's {photos, seconds} of this invocation."""
    slots = list(thresholds)
    counts = Counter(row["outcome"] for row in rows)
    graded = [row for row in rows if row.get(f"{slots[0]}_grade") not in (None, "")] if slots else []
    referral = {}
    for slot in slots:
        values = [float(r[f"{slot}_p_referable"]) for r in graded if r.get(f"{slot}_p_referable") not in (None, "")]
        referral[slot] = None if not values else sum(v >= thresholds[slot] for v in values) / len(values)
    agreement = None
    if len(slots) >= 2 and graded:
        same = sum(len({r[f"{s}_grade"] for s in slots}) == 1 for r in graded)
        agreement = {"exact_grade": same / len(graded), "photos": len(graded)}
    photos = sum(r["photos"] for r in ranks)
    wall = max((r["seconds"] for r in ranks), default=0.0)
    return {"photos": len(rows), "outcomes": {o: counts.get(o, 0) for o in OUTCOMES}, "graded": len(graded),
            "referral_rate": referral, "agreement": agreement,
            "throughput": {"photos_this_run": photos, "seconds": wall, "processes": len(ranks),
                           "photos_per_second": photos / wall if wall > 0 else None}}


def summary_text(summary: dict, grades: Path) -> str:
    outcomes = ", ".join(f"{n} {o}" for o, n in summary["outcomes"].items())
    lines = [f"{summary['photos']} photos -> {grades}: {outcomes}"]
    for slot, rate in summary["referral_rate"].items():
        lines.append(f"  {slot}: referral rate {'n/a' if rate is None else f'{rate:.1%}'} of {summary['graded']} graded")
    if summary["agreement"]:
        lines.append(f"  models agree on the exact grade for {summary['agreement']['exact_grade']:.1%}")
    t = summary["throughput"]
    speed = "n/a" if t["photos_per_second"] is None else f"{t['photos_per_second']:.1f} photos/s"
    lines.append(f"  this run: {t['photos_this_run']} photos in {t['seconds']:.1f} s on {t['processes']} "
                 f"process(es), {speed}")
    return "\n".join(lines)
