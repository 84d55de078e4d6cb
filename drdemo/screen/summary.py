"""What a finished run found: counts per outcome, referral rate per model, agreement, throughput."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from drdemo.screen.writer import OUTCOMES


def summarise(rows: list[dict], slots: list[str], ranks: list[dict]) -> dict:
    """Summary of `rows` graded by `slots`: the share each model refers (its `<slot>_referred`, the app's decision:
    retinopathy at its checkpoint's threshold, or macular oedema for three-head models), how often the models agree
    on the grade and on the referral; `ranks` is each rank's {photos, seconds} of this invocation."""
    counts = Counter(row["outcome"] for row in rows)
    graded = [row for row in rows if row.get(f"{slots[0]}_grade") not in (None, "")] if slots else []
    referral = {}
    for slot in slots:
        values = [r[f"{slot}_referred"] == "True" for r in graded if r.get(f"{slot}_referred") not in (None, "")]
        referral[slot] = None if not values else sum(values) / len(values)
    agreement = None
    if len(slots) >= 2 and graded:
        same = sum(len({r[f"{s}_grade"] for s in slots}) == 1 for r in graded)
        referred = sum(len({r[f"{s}_referred"] for s in slots}) == 1 for r in graded)
        agreement = {"exact_grade": same / len(graded), "referral": referred / len(graded), "photos": len(graded)}
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
        shown = "n/a" if rate is None else f"{rate:.1%}"
        lines.append(f"  {slot}: refers {shown} of {summary['graded']} graded photos")
    if summary["agreement"]:
        agreement = summary["agreement"]
        lines.append(f"  the models agree on the exact grade for {agreement['exact_grade']:.1%} and on the referral "
                     f"for {agreement['referral']:.1%}")
    t = summary["throughput"]
    speed = "n/a" if t["photos_per_second"] is None else f"{t['photos_per_second']:.1f} photos/s"
    lines.append(f"  this run: {t['photos_this_run']} photos in {t['seconds']:.1f} s on {t['processes']} "
                 f"process(es), {speed}")
    return "\n".join(lines)
