"""How the image gate does on real fundus photos, on synthetic ones and on pictures that are not fundus photos,
and what it costs on a 12 MP upload. "The check" is what the app runs before grading: the rules
(drdemo.intake.fundus_check) and then the learned fundus-versus-everyday check (drdemo.serving.photo_check, with
the classifier benchmarks/gate_fit.py fitted).

    python -m benchmarks gate [--data ../shared/data] [--repeats 20] [--json OUT] [--readme benchmarks/README.md]
    python -m benchmarks.gate [--data ../shared/data] [--repeats 20]     # the 12 MP timing alone

Prints, per set of real photos under `--data` (IDRiD, DRIVE, CHASE_DB1; sets that are absent are skipped), how
many are refused, warned that they may not be colour fundus photos, warned about their quality only, and
accepted; the same for synthetic photos from the project's generator; per category of the non-fundus corpus
(benchmarks/gate_corpus.py, made at run time), how many are refused, warned and accepted without a warning; and,
on a 4000 x 3000 JPEG, the p50 time of the check (rules and learned check) plus the feature score against its 100 ms
target, beside the time to decode it and each bundled model's grading forward. Which photos the rules' thresholds
were chosen on is in `drdemo.intake.fundus_check`, the learned check's in its classifier file's metadata
(`python -m benchmarks.gate_fit` fits it and reports on held-out photos).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from benchmarks import gate_corpus, gate_setup
from drdemo.data.synthetic import generate_fundus
from drdemo.intake.fundus_check import second_opinion
from drdemo.intake.gate import ImageRejected, assess, load_image
from drdemo.intake.ood import load_feature_score
from drdemo.serving.ood_fit import image_features
from drdemo.serving.photo_check import shared_photo_check

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
README_START, README_END = "<!-- bench:gate:start -->", "<!-- bench:gate:end -->"
SYNTHETIC_SEED, SYNTHETIC_COUNT = 7, 100   # a generator seed no tuning looked at
CAMERA_SIZE, CAMERA_QUALITY = (4000, 3000), 92   # a 12 MP camera JPEG
CHECK_TARGET_MS = 100.0   # the check (rules and learned check) plus the feature score, beyond the grading forward
WARM_UP = 2
TUNED_ON = ("IDRiD grading train", "DRIVE training")


def _tally(outcomes: list) -> dict[str, int]:
    """Counts of refused; warned about what it is (may not be a colour fundus photo, red-free, inside a larger
    picture); warned about its quality only; accepted; and, among the graded, how many carry a quality note."""
    counts = Counter()
    for assessment in outcomes:
        if assessment is None or assessment.outcome == "refused":
            counts["refused"] += 1
            continue
        counts["quality notes"] += bool(assessment.quality)
        if not assessment.is_fundus:
            counts["warned: what it is"] += 1
        elif assessment.quality:
            counts["warned: quality only"] += 1
        else:
            counts["accepted"] += 1
    return {"n": len(outcomes), **{key: counts[key] for key in ("refused", "warned: what it is", "warned: quality only",
                                                               "accepted", "quality notes")}}


def check(picture: Image.Image):
    """What the app's check finds before grading: the rules, then the learned fundus-versus-everyday check."""
    return shared_photo_check().judged(assess(picture), picture)


def _assess_file(path: Path):
    try:
        return check(load_image(path))
    except ImageRejected:
        return None


def bench_gate(data: Path, repeats: int) -> dict:
    """The report: outcomes per real set, on synthetic photos and per corpus category, and the 12 MP timing."""
    report: dict = {"real": {}, "warned_real": {}}
    for name, paths in gate_corpus.real_photo_sets(data).items():
        outcomes = [_assess_file(path) for path in paths]
        report["real"][name] = _tally(outcomes)
        report["warned_real"][name] = {path.name: list(a.warnings) if a else ["refused"]
                                       for path, a in zip(paths, outcomes) if a is None or a.warnings}
    synthetic = [check(Image.fromarray(generate_fundus(np.random.SeedSequence([SYNTHETIC_SEED, i]), i % 5,
                                                       size=(256, 384, 512)[i % 3]).image))
                 for i in range(SYNTHETIC_COUNT)]
    report["synthetic"] = _tally(synthetic)
    by_category: dict[str, list] = {}
    report["corpus_cases"] = {}
    for name, (category, picture) in gate_corpus.non_fundus_cases(data).items():
        assessment = check(picture)
        by_category.setdefault(category, []).append(assessment)
        report["corpus_cases"][name] = {"category": category, "outcome": assessment.outcome,
                                        "reason": assessment.reason}
    report["corpus"] = {category: _tally(items) for category, items in by_category.items()}
    report["timing"] = time_camera_upload(data, repeats)
    report["second_opinion"] = bench_second_opinion(data, gate_setup.DEFAULT_OUT)
    return report


def _everyday_report_part(root: Path) -> list[Path]:
    manifest = root / "manifest.json"
    if not manifest.is_file():
        return []
    entries = json.loads(manifest.read_text())["photos"]
    return [root / e["file"] for e in entries if e["part"] == "report"]


def bench_second_opinion(data: Path, everyday: Path, slots: tuple[str, ...] | None = None) -> dict:
    """Rules alone, rules with the learned check, those with the borderless-crop rule but no model score, and those
    with each bundled checkpoint's stored feature score, on the real photos, the report part of the everyday corpus
    (benchmarks/gate_setup.py) and the drawn corpus; a photo counts as caught when refused or warned that it may not
    be a fundus photo."""
    from drdemo.checkpoint import load_model
    from drdemo.predictor import Predictor
    from drdemo.serving.slots import SLOTS
    sets: dict[str, list] = {name: [(p.name, _decoded(p)) for p in paths]
                             for name, paths in gate_corpus.real_photo_sets(data).items()}
    sets["everyday (report part)"] = [(p.name, _decoded(p)) for p in _everyday_report_part(everyday)]
    sets["drawn and library pictures"] = [(name, picture) for name, (_, picture)
                                          in gate_corpus.non_fundus_cases(data).items()]
    alone = {name: [(label, image, assess(image) if image is not None else None) for label, image in items]
             for name, items in sets.items()}
    photo_check = shared_photo_check()
    rules = {name: [(label, image, a and photo_check.judged(a, image)) for label, image, a in items]
             for name, items in alone.items()}
    report: dict = {"rules alone": {n: _tally([a for *_, a in items]) for n, items in alone.items()},
                    "rules": {n: _tally([a for *_, a in items]) for n, items in rules.items()},
                    "no score": {n: _tally([a and second_opinion(a, None, None) for *_, a in items])
                                 for n, items in rules.items()}, "models": {}}
    for slot, (folder, _) in SLOTS.items():
        if slots is not None and slot not in slots:
            continue
        score = load_feature_score(folder)
        if score is None:
            report["models"][slot] = "no ood.safetensors"
            continue
        predictor = Predictor.from_loaded(load_model(folder, device="cpu"))
        per_set, distances, silent = {}, {}, {}
        for name, items in rules.items():
            graded = [(label, image, a) for label, image, a in items if a is not None and a.outcome != "refused"]
            values = score.score(image_features(predictor, [image for _, image, _ in graded])) if graded else []
            combined = [second_opinion(a, float(v), score.threshold) for (*_, a), v in zip(graded, values)]
            per_set[name] = _tally(combined + [None] * (len(items) - len(graded)))
            silent[name] = [(label, c.field_of_view) for (label, *_), c in zip(graded, combined) if c.is_fundus]
            if len(values):
                distances[name] = {"n": len(values), "median": round(float(np.median(values)), 3),
                                   "max": round(float(np.max(values)), 3),
                                   "above_threshold": int((np.asarray(values) > score.threshold).sum())}
        report["models"][slot] = {"threshold": round(score.threshold, 3), "threshold_from": score.threshold_from,
                                  "fitted_on": score.fitted_on, "sets": per_set, "distances": distances,
                                  "graded_as_fundus": silent}
    return report


def _decoded(path: Path):
    try:
        return load_image(path)
    except ImageRejected:
        return None


def _bundled_models(slots: tuple[str, ...] | None = None) -> dict:
    """slot -> (Predictor on the CPU, its stored feature score or None) for each bundled checkpoint."""
    from drdemo.checkpoint import load_model
    from drdemo.predictor import Predictor
    from drdemo.serving.slots import SLOTS
    return {slot: (Predictor.from_loaded(load_model(folder, device="cpu")), load_feature_score(folder))
            for slot, (folder, _) in SLOTS.items() if slots is None or slot in slots}


def time_camera_upload(data: Path, repeats: int, forward_repeats: int = 5,
                       slots: tuple[str, ...] | None = None) -> dict:
    """p50 ms on a 12 MP (4000 x 3000) JPEG of: decoding it (load_image), the check (the rules, `assess`, and the
    learned check, `PhotoCheck.judged`: EfficientNet-Lite0 on the assessment's 224 px view and the classifier), each
    model's feature score of its grading forward's features (FeatureScore.score and second_opinion), the check plus
    the slowest score beside CHECK_TARGET_MS, and each bundled model's grading forward (Predictor.analyse without a
    CAM: model view and forward). Decode, check and scores alternate in each round, after WARM_UP rounds; the
    forwards, slower, run `forward_repeats` times. Threads and the load average go with the numbers, as the
    machine may be shared."""
    photos = [p for paths in gate_corpus.real_photo_sets(data).values() for p in paths]
    source = Image.open(photos[0]).convert("RGB") if photos else Image.fromarray(generate_fundus(0, 2, 768).image)
    models = _bundled_models(slots)
    photo_check = shared_photo_check()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="drdemo-bench-gate-") as folder:
        path = Path(folder) / "camera.jpg"
        source.resize(CAMERA_SIZE, Image.Resampling.BICUBIC).save(path, quality=CAMERA_QUALITY)
        image = load_image(path)
        analyses = {slot: predictor.analyse(image) for slot, (predictor, _) in models.items()}
        times: dict[str, list[float]] = {"decode": [], "rules": [], "learned": [], "check": [], "score": [],
                                         "check_and_score": []}
        for round_ in range(repeats + WARM_UP):
            photo_check.forget()   # time a first upload: the same photo every round must not be timed remembered
            start = time.perf_counter()
            image = load_image(path)
            decoded = time.perf_counter()
            assessment = assess(image)
            ruled = time.perf_counter()
            assessment = photo_check.judged(assessment, image)
            checked = time.perf_counter()
            slowest = 0.0
            for slot, (_, score) in models.items():
                begin = time.perf_counter()
                if score is None or analyses[slot].features is None:   # rules only, as ServedModel.check
                    second_opinion(assessment, None, None)
                else:
                    second_opinion(assessment, float(score.score(analyses[slot].features)[0]), score.threshold)
                slowest = max(slowest, time.perf_counter() - begin)
            if round_ >= WARM_UP:
                for key, seconds in (("decode", decoded - start), ("rules", ruled - decoded),
                                     ("learned", checked - ruled), ("check", checked - decoded), ("score", slowest),
                                     ("check_and_score", checked - decoded + slowest)):
                    times[key].append(seconds)
        forwards: dict[str, list[float]] = {slot: [] for slot in models}
        for round_ in range(forward_repeats + 1):
            for slot, (predictor, _) in models.items():
                start = time.perf_counter()
                predictor.analyse(image)
                if round_:
                    forwards[slot].append(time.perf_counter() - start)
    p50 = {key: round(statistics.median(values) * 1000, 2) for key, values in times.items()}
    return {"upload": f"{CAMERA_SIZE[0]} x {CAMERA_SIZE[1]} JPEG (quality {CAMERA_QUALITY}) of "
                      f"{photos[0].name if photos else 'a synthetic photo'}",
            "decoded_to": list(image.size), "outcome": assessment.outcome, "repeats": repeats,
            **{f"{key}_p50_ms": value for key, value in p50.items()},
            "target_ms": CHECK_TARGET_MS, "target_ratio": round(p50["check_and_score"] / CHECK_TARGET_MS, 3),
            "scored_by": {slot: score is not None for slot, (_, score) in models.items()},
            "learned_check": photo_check.available,
            "fundus_likelihood": assessment.measurements.get("fundus_likelihood"),
            "forward_p50_ms": {slot: round(statistics.median(v) * 1000, 1) for slot, v in forwards.items()},
            "forward_repeats": forward_repeats, "cv2_threads": cv2.getNumThreads(),
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "load_average": [round(v, 2) for v in (load_before[0], os.getloadavg()[0])]}


def timing_markdown(timing: dict) -> str:
    """One paragraph: the 12 MP upload's decode, check and score against the target, beside the forwards."""
    forwards = ", ".join(f"{slot} {ms} ms" for slot, ms in timing["forward_p50_ms"].items())
    unscored = [slot for slot, scored in timing["scored_by"].items() if not scored]
    return (f"A {timing['upload']}: decoded (at reduced scale, to {timing['decoded_to'][0]} x "
            f"{timing['decoded_to'][1]}) in {timing['decode_p50_ms']} ms p50; **the check plus the feature score "
            f"{timing['check_and_score_p50_ms']} ms p50, {timing['target_ratio']:.2f} x the {timing['target_ms']:.0f} "
            f"ms target** (check {timing['check_p50_ms']} ms: rules {timing['rules_p50_ms']} ms, learned check "
            f"{timing['learned_p50_ms']} ms{'' if timing['learned_check'] else ' (unavailable)'}; score "
            f"{timing['score_p50_ms']} ms"
            + (f"; {', '.join(unscored)} without a stored score" if unscored else "") + f"; {timing['repeats']} "
            f"rounds). For comparison, the grading forward (model view and forward, no CAM, "
            f"{timing['forward_repeats']} rounds): {forwards or 'no bundled model'}. {timing['cv2_threads']} OpenCV "
            f"/ {timing['torch_threads']} torch threads on {timing['cpus']} CPUs, load average "
            f"{timing['load_average'][0]} before and {timing['load_average'][1]} after.")


def markdown(report: dict) -> str:
    """The README section: real sets, synthetic photos, the corpus by category, and the timing."""
    lines = ["Measured by `python -m benchmarks gate`. Thresholds were chosen on "
             f"{' and '.join(TUNED_ON)} (and synthetic photos of other seeds); the other sets are held out.", "",
             "| photos | n | refused | warned: what it is | warned: quality only | accepted | with a quality note |",
             "|---|---|---|---|---|---|---|"]
    rows = [(name + (" (tuning)" if name in TUNED_ON else ""), counts) for name, counts in report["real"].items()]
    rows.append((f"synthetic (generator seed {SYNTHETIC_SEED})", report["synthetic"]))
    for name, c in rows:
        lines.append(_row(name, c) + f" {c['quality notes']} |")
    real = list(report["real"].values())
    if real:
        n, warned = sum(c["n"] for c in real), sum(c["n"] - c["accepted"] - c["refused"] for c in real)
        lines += ["", f"Real photos: {sum(c['refused'] for c in real)} of {n} refused, {warned} ({warned / n:.1%}) "
                      f"graded with a warning, {sum(c['quality notes'] for c in real)} of them with a quality note."]
    lines += ["", "| non-fundus corpus | n | refused | warned: what it is | warned: quality only | accepted |",
              "|---|---|---|---|---|---|"]
    lines += [_row(category, c) for category, c in report["corpus"].items()]
    total = sum(c["n"] for c in report["corpus"].values())
    caught = sum(c["refused"] + c["warned: what it is"] for c in report["corpus"].values())
    timing = report["timing"]
    lines += ["", f"Corpus: {caught} of {total} ({caught / total:.0%}) refused or warned that they may not be colour "
                  f"fundus photos; {total - caught} graded without such a warning.",
              "", timing_markdown(timing)]
    lines += second_opinion_markdown(report["second_opinion"])
    return "\n".join(lines)


def second_opinion_markdown(report: dict) -> list[str]:
    """Caught (refused, or warned that it may not be a fundus photo) per set: rules, rules without a score,
    rules with each model's score; and how far each set's photos fall from the training photos."""
    def caught(c: dict) -> str:
        hit = c["refused"] + c["warned: what it is"]
        return f"{hit} / {c['n']} ({hit / c['n']:.1%})" if c["n"] else "-"

    models = {slot: r for slot, r in report["models"].items() if isinstance(r, dict)}
    lines = ["", "The learned check and the model's second opinion: a photo counts as caught when it is refused or "
                 "warned that it may not be a colour fundus photo (on the real photos a catch is a false alarm). "
                 "Rules alone; the rules with the learned fundus-versus-everyday check; those with every crop "
                 "without a border that the learned check did not confirm warned (no score); and those with each "
                 "bundled checkpoint's feature score of its own grading forward, as the app runs them.",
             "", "| photos | rules alone | rules + learned check | the same, unconfirmed crops warned | "
             + " | ".join(f"+ {s} score" for s in models)
             + " |", "|---|---|---|---|" + "---|" * len(models)]
    for name in report["rules"]:
        lines.append(f"| {name} | {caught(report['rules alone'][name])} | {caught(report['rules'][name])} | "
                     f"{caught(report['no score'][name])} | "
                     + " | ".join(caught(r["sets"][name]) for r in models.values()) + " |")
    everyday = "everyday (report part)"
    for slot, r in models.items():
        missed = r["graded_as_fundus"].get(everyday, [])
        borderless = sum(view == "no border" for _, view in missed)
        lines += ["", f"{slot}: {len(missed)} everyday photos graded as fundus photos ("
                      + (", ".join(f"{label}: field of view {view}" for label, view in missed) or "none")
                      + f"); {borderless} of them without a fundus-like frame."]
    for slot, r in models.items():
        lines += ["", f"{slot}: threshold {r['threshold']} ({r['threshold_from']}); fitted on {r['fitted_on']}. "
                      "Feature distance of the photos the rules let through: " + "; ".join(
                          f"{name} median {d['median']}, max {d['max']}, {d['above_threshold']} of {d['n']} above"
                          for name, d in r["distances"].items()) + "."]
    return lines


def _row(name: str, c: dict[str, int]) -> str:
    return (f"| {name} | {c['n']} | {c['refused']} | {c['warned: what it is']} | {c['warned: quality only']} | "
            f"{c['accepted']} |")


def main(argv: list[str] | None = None) -> int:
    """The 12 MP timing alone, a quick measurement beside the full suite."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gate", description=main.__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    print(timing_markdown(time_camera_upload(args.data, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
