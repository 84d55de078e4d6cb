"""Would cut-offs on the expected grade name better grades than the served rule? Validation photos only.

    python scripts/grade_cutoffs.py CHECKPOINT [--data "IDRiD/B. Disease Grading"]

The issue's "regression with cut-offs", tried after training on the served checkpoint's probabilities: the expected
grade sum(k * P(k)) cut at four thresholds chosen to maximise QWK (as Kaggle's DR entries did), and the same inside
the referral's side (grade >= 2 exactly when referred: P(1 | not referable) cut once, the expected grade given
referable cut twice). Thresholds fitted on the photos they grade would flatter them, so each of the run's held-out
validation photos is graded by cut-offs fitted on the other ones (leave-one-out). Prints QWK and DR accuracy beside
the served rule (drdemo.tasks.named_classes). Never reads IDRiD's test split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from drdemo.checkpoint import load_model  # noqa: E402
from drdemo.data import load_samples  # noqa: E402
from drdemo.evaluate.predictions import predict_probabilities  # noqa: E402
from drdemo.metrics import quadratic_weighted_kappa  # noqa: E402
from drdemo.tasks import DERIVED_MIN_GRADE, ICDR_GRADES, named_classes, task_probabilities  # noqa: E402

GRADES = len(ICDR_GRADES)
FIRST_REFERABLE = DERIVED_MIN_GRADE["referable"]   # grades 2-4
EXPECTED_STEPS = np.linspace(0, 4, 41)          # cut-offs on the expected grade
SIDE_LOW_STEPS = np.linspace(0, 1, 11)          # on P(1 | not referable)
SIDE_HIGH_STEPS = np.linspace(0, 2, 21)         # on E[grade - 2 | referable]


def qwk(grades: np.ndarray, named: np.ndarray) -> float:
    return quadratic_weighted_kappa(grades, named, GRADES)


def expected_cut(probabilities: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.sort(cuts), probabilities @ np.arange(GRADES), side="right")


def fit_expected(probabilities: np.ndarray, grades: np.ndarray) -> np.ndarray:
    """Four cut-offs by coordinate search from the rounding ones (0.5, 1.5, 2.5, 3.5)."""
    cuts = np.array([0.5, 1.5, 2.5, 3.5])
    best = qwk(grades, expected_cut(probabilities, cuts))
    for _ in range(3):
        for i in range(len(cuts)):
            for value in EXPECTED_STEPS:
                trial = cuts.copy()
                trial[i] = value
                if np.all(np.diff(trial) > 0) and (score := qwk(grades, expected_cut(probabilities, trial))) > best:
                    best, cuts = score, trial
    return cuts


def side_cut(probabilities: np.ndarray, threshold: float, cuts: tuple[float, float, float]) -> np.ndarray:
    referable = task_probabilities(probabilities, "icdr5")["referable"]
    mild = probabilities[:, 1] / np.maximum(1 - referable, 1e-9)
    above = (probabilities[:, FIRST_REFERABLE:] @ np.arange(GRADES - FIRST_REFERABLE)) / np.maximum(referable, 1e-9)
    return np.where(referable >= threshold, FIRST_REFERABLE + (above >= cuts[1]) + (above >= cuts[2]),
                    (mild >= cuts[0]).astype(int))


def fit_side(probabilities: np.ndarray, grades: np.ndarray, threshold: float) -> tuple[float, float, float]:
    candidates = [(low, a, b) for low in SIDE_LOW_STEPS for a in SIDE_HIGH_STEPS for b in SIDE_HIGH_STEPS if b > a]
    return max(candidates, key=lambda cuts: qwk(grades, side_cut(probabilities, threshold, cuts)))


def leave_one_out(probabilities: np.ndarray, grades: np.ndarray, fit, name) -> np.ndarray:
    named = np.zeros_like(grades)
    for i in range(len(grades)):
        others = np.arange(len(grades)) != i
        named[i] = name(probabilities[i:i + 1], fit(probabilities[others], grades[others]))[0]
    return named


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/idrid/B. Disease Grading")
    args = parser.parse_args(argv)
    split_file = args.checkpoint / "training" / "split.json"
    if not (args.checkpoint / "config.json").is_file() or not split_file.is_file():
        parser.error(f"{args.checkpoint} is not a trained checkpoint folder (it needs config.json and "
                     "training/split.json, whose validation photos are graded)")
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder: pass IDRiD's 'B. Disease Grading' folder")
    split = json.loads(split_file.read_text())["parts"]
    by_id = {s.image_id: s for s in load_samples(args.data, "idrid", part="train")}
    samples = [by_id[i] for i in split["val"]]
    loaded = load_model(args.checkpoint, device="cpu")
    probabilities = predict_probabilities(loaded, samples, progress=False)
    grades = np.array([s.grade for s in samples])
    threshold = loaded.config.referable_threshold
    rules = {"served rule (named grade)": named_classes(probabilities, "icdr5", threshold),
             "cut-offs on the expected grade": leave_one_out(probabilities, grades, fit_expected, expected_cut),
             "cut-offs inside the referral's side": leave_one_out(
                 probabilities, grades, lambda p, g: fit_side(p, g, threshold),
                 lambda p, cuts: side_cut(p, threshold, cuts))}
    print(f"{args.checkpoint}: {len(samples)} validation photos (cut-offs: leave-one-out)")
    for rule, named in rules.items():
        print(f"  {rule:38s} QWK {qwk(grades, named):.3f}  DR accuracy {(named == grades).mean():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
