"""Fit a three-head checkpoint's lesion evidence: its grade and DME risk read from its own lesion maps.

drdemo.models.lesion_evidence turns each photo's lesion maps into a few statistics per lesion type (how much,
how many cells, how spread over the quadrants, how central). This command runs the source checkpoint once over
its training and validation photos (its training/split.json), fits on the training photos' statistics one
multinomial logistic regression for the grade (or, with `--grade-regression proportional_odds`, an ordinal one:
one direction along which the grades lie in order) and one for the DME risk (their L2 strength chosen by 5-fold
cross-validation of log-loss on the same photos), and chooses on the validation photos how much they count
beside the network: the blend weight with the lowest validation log-loss, grade plus DME risk. No weight of
the network changes; the test split is never read. With `--augmented-views K` each training photo also gives K
views through the networks' training augmentation (colour, exposure, illumination, blur, scale, rotation, a
clipped field of view), labels copied and cross-validation folds grouped by photo, so the regressions learn how
much of what the maps show moves when only a photo's appearance does.

    python -m drdemo.train.lesion_evidence --checkpoint FOLDER --out NEW_FOLDER [--data "IDRiD/B. Disease Grading"]
        [--grade-regression multinomial|proportional_odds] [--augmented-views K]

The new folder is the source's, with `lesion_evidence_weight` in config.json's heads, the regressions in its
weights, one more training stage in its provenance, and none of the source's evaluations: its probabilities
changed, and with them every gradient heat map (the grade's logit now reads the lesion maps too). Choose its
thresholds again (`python -m drdemo.evaluate heads --checkpoint NEW_FOLDER --part val --choose-thresholds`),
then evaluate it as any new checkpoint.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader

from drdemo.checkpoint import CheckpointError, LoadedModel, load_model, save_checkpoint
from drdemo.checkpoint.io import code_commit
from drdemo.checkpoint.layout import EVAL_DIR
from drdemo.data import Sample, load_samples
from drdemo.data.augment import REAL_AUGMENTATION
from drdemo.data.prepared import LesionGradingDataset, prepare_cached
from drdemo.errors import DrdemoError
from drdemo.inference import loader_outputs
from drdemo.models import create_model, model_defaults
from drdemo.models.lesion_evidence import (
    GRADE_REGRESSIONS,
    LesionEvidence,
    blend,
    lesion_statistics,
    proportional_odds_log_probabilities,
)
from drdemo.preprocess import normalise_kwargs
from drdemo.train.command import recorded_command, set_threads
from drdemo.train.lesion_head import require_new_folder
from drdemo.train.trainer import SPLIT_NAME

STRENGTHS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)    # inverse L2 strengths (sklearn's C) tried by cross-validation
BLEND_WEIGHTS = tuple(round(0.1 * i, 1) for i in range(1, 11))
FOLDS = 5
AUGMENTED_SEED = 1000   # view k of --seed s is drawn from torch seed 1000 (s + 1) + k: other seeds, other views


class LesionEvidenceError(DrdemoError, ValueError):
    """A fit that cannot run or would not help: no lesion maps, no split, a grade missing, validation worse."""


def network_outputs(loaded: LoadedModel, samples: Sequence[Sample], augmented_seed: int | None = None
                    ) -> dict[str, np.ndarray]:
    """One view of each photo through `loaded`: its grade and DME logits (n, classes) and its lesion maps'
    statistics; the view as served, or with `augmented_seed` one drawn through REAL_AUGMENTATION from that seed."""
    config = loaded.config
    p = config.preprocessing
    images = prepare_cached(list(samples), config.input_size, p["interpolation"], p["crop_fov"])
    augment = None
    if augmented_seed is not None:
        torch.manual_seed(augmented_seed)
        augment = REAL_AUGMENTATION.build()
    dataset = LesionGradingDataset(list(samples), images, {}, normalise_kwargs(config), augment=augment)
    arrays, _ = loader_outputs(loaded.model, DataLoader(dataset, batch_size=16), 1, keep_lesions=True,
                               progress="photos", memory_format=model_defaults(config.architecture).memory_format)
    return {"grade": arrays["logits"][:, 0], "dme": arrays["dme_logits"][:, 0],
            "statistics": lesion_statistics(torch.from_numpy(arrays["lesion_probabilities"])).numpy()}


class ProportionalOddsRegression(ClassifierMixin, BaseEstimator):
    """An ordinal logistic regression for scikit-learn (drdemo.models.lesion_evidence.ProportionalOdds is the
    model it fits): minimises C x the summed log-loss + |direction|^2 / 2, as LogisticRegression's L2 does, with
    L-BFGS in float64; the thresholds stay ordered (the first free, each next one a softplus above it)."""

    def __init__(self, C: float = 1.0):
        self.C = C

    def fit(self, x: np.ndarray, y: np.ndarray) -> ProportionalOddsRegression:
        self.classes_, indices = np.unique(y, return_inverse=True)   # ordered: the k-th class is the k-th grade
        inputs, targets = torch.from_numpy(np.asarray(x, np.float64)), torch.from_numpy(indices.astype(np.int64))
        direction = torch.zeros(inputs.shape[1], dtype=torch.float64, requires_grad=True)
        steps = torch.linspace(-1, 1, len(self.classes_) - 1, dtype=torch.float64).requires_grad_(True)
        optimiser = torch.optim.LBFGS([direction, steps], max_iter=500, line_search_fn="strong_wolfe",
                                      tolerance_grad=1e-9)

        def thresholds() -> torch.Tensor:
            return torch.cumsum(torch.cat([steps[:1], torch.nn.functional.softplus(steps[1:])]), 0)

        def loss() -> torch.Tensor:
            optimiser.zero_grad()
            log_probabilities = proportional_odds_log_probabilities(inputs @ direction, thresholds())
            value = -self.C * log_probabilities.gather(1, targets[:, None]).sum() + 0.5 * (direction @ direction)
            value.backward()
            return value

        with torch.enable_grad():
            optimiser.step(loss)
        self.direction_, self.thresholds_ = direction.detach().numpy(), thresholds().detach().numpy()
        return self

    def predict_log_proba(self, x: np.ndarray) -> np.ndarray:
        scores = torch.from_numpy(np.asarray(x, np.float64) @ self.direction_)
        return proportional_odds_log_probabilities(scores, torch.from_numpy(self.thresholds_)).numpy()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.exp(self.predict_log_proba(x))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_log_proba(x).argmax(1)]


def fit_regression(statistics: np.ndarray, labels: np.ndarray, classes: int, seed: int = 0,
                   photos: np.ndarray | None = None, regression: str = "multinomial") -> tuple[object, dict]:
    """A standardised logistic regression of `labels` on `statistics`, multinomial or proportional-odds
    (`regression`), its strength chosen by FOLDS-fold cross-validated log-loss; returns the fitted pipeline and
    each strength's mean log-loss. Rows that are views of one photo share a `photos` id and always fall in the
    same fold (else a photo's other views would score the strength that fits it best)."""
    if regression not in GRADE_REGRESSIONS:
        raise LesionEvidenceError(f"the regression must be one of {', '.join(GRADE_REGRESSIONS)}, got {regression!r}")
    missing = sorted(set(range(classes)) - set(labels.tolist()))
    if missing:
        raise LesionEvidenceError(f"the training photos have no example of class {missing}: nothing to fit it on")
    if photos is None:
        smallest = int(np.bincount(labels).min())
        folds = StratifiedKFold(min(FOLDS, smallest), shuffle=True, random_state=seed)
    else:
        smallest = min(len(set(photos[labels == label].tolist())) for label in range(classes))
        folds = StratifiedGroupKFold(min(FOLDS, smallest), shuffle=True, random_state=seed)
    if folds.n_splits < 2:
        raise LesionEvidenceError("a class has a single training photo: too few to cross-validate the fit")

    def pipeline(strength: float):
        estimator = (LogisticRegression(C=strength, max_iter=5000) if regression == "multinomial"
                     else ProportionalOddsRegression(C=strength))
        return make_pipeline(StandardScaler(), estimator)

    losses = {strength: float(-cross_val_score(pipeline(strength), statistics, labels, cv=folds, groups=photos,
                                               scoring="neg_log_loss").mean()) for strength in STRENGTHS}
    best = min(losses, key=losses.get)
    return pipeline(best).fit(statistics, labels), {"strength": best, "cross_validated_log_loss": losses}


def evidence_module(grade_fit, dme_fit, lesion_types: int) -> LesionEvidence:
    """The two fitted pipelines as a LesionEvidence (both standardise with the same training statistics)."""
    scaler, grade, dme = grade_fit[0], grade_fit[-1], dme_fit[-1]
    ordinal = isinstance(grade, ProportionalOddsRegression)
    module = LesionEvidence(lesion_types, len(grade.classes_), dme.coef_.shape[0],
                            "proportional_odds" if ordinal else "multinomial")
    with torch.no_grad():
        module.mean.copy_(torch.from_numpy(scaler.mean_))
        module.scale.copy_(torch.from_numpy(scaler.scale_))
        if ordinal:
            module.grade.direction.copy_(torch.from_numpy(grade.direction_))
            module.grade.thresholds.copy_(torch.from_numpy(grade.thresholds_))
        linear = [(module.dme, dme)] if ordinal else [(module.grade, grade), (module.dme, dme)]
        for layer, fitted in linear:
            layer.weight.copy_(torch.from_numpy(fitted.coef_))
            layer.bias.copy_(torch.from_numpy(fitted.intercept_))
    return module


def choose_weight(module: LesionEvidence, validation: dict[str, np.ndarray], grades: np.ndarray,
                  risks: np.ndarray) -> tuple[float, list[dict]]:
    """The blend weight with the lowest validation log-loss (grade + DME risk), and every weight's losses
    (weight 0: the network alone). Raises when none beats the network alone."""
    with torch.no_grad():
        evidence = module.read(torch.from_numpy(validation["statistics"]).float())
    network = torch.from_numpy(validation["grade"]), torch.from_numpy(validation["dme"])
    tried = []
    for weight in (0.0, *BLEND_WEIGHTS):
        grade, dme = (blend(n, e, weight).softmax(-1).numpy() for n, e in zip(network, evidence))
        tried.append({"weight": weight,
                      "grade_log_loss": round(log_loss(grades, grade, labels=range(grade.shape[1])), 4),
                      "dme_log_loss": round(log_loss(risks, dme, labels=range(dme.shape[1])), 4)})
    best = min(tried, key=lambda t: (t["grade_log_loss"] + t["dme_log_loss"], t["weight"]))
    if best["weight"] == 0.0:
        raise LesionEvidenceError("the lesion evidence does not lower the validation log-loss at any weight: "
                                  "the network alone is better, so nothing was written")
    return best["weight"], tried


def fit(source: Path, out: Path, data: Path | None, seed: int, command: str, augmented_views: int = 0,
        grade_regression: str = "multinomial") -> dict:
    """Write `out`: `source` with lesion evidence fitted and weighted as the module says; returns the stage
    recorded in its provenance."""
    try:
        loaded = load_model(source, device="cpu")
    except CheckpointError as exc:
        raise LesionEvidenceError(f"--checkpoint: {exc}") from exc
    config = loaded.config
    if not config.heads:
        raise LesionEvidenceError("a single-head checkpoint has no lesion maps: fit the evidence of a three-head one")
    if config.heads.get("lesion_evidence_weight") is not None:
        raise LesionEvidenceError(f"{source} already weighs lesion evidence: fit it on the checkpoint it came from")
    if config.calibration:
        raise LesionEvidenceError(f"{source} is calibrated for its network's probabilities alone, which the evidence "
                                  f"changes: fit the evidence on the uncalibrated checkpoint, then calibrate")
    split_path = source / "training" / SPLIT_NAME
    if not split_path.is_file():
        raise LesionEvidenceError(f"{split_path} is missing: the fit needs the source's training and validation parts")
    split = json.loads(split_path.read_text())
    data = data or Path(split.get("data", ""))
    try:
        photos = {s.image_id: s for s in load_samples(data, "idrid", part="train")}
    except DrdemoError as exc:
        raise LesionEvidenceError(f"--data: {exc}") from exc
    try:
        parts = {name: [photos[i] for i in split["parts"][name]] for name in ("train", "val")}
    except KeyError as exc:
        raise LesionEvidenceError(f"{data} lacks photo {exc} of {split_path}: point --data at the grading folder "
                                  f"the source was trained on") from exc
    if any(s.dme is None or s.dme < 0 for s in parts["train"] + parts["val"]):
        raise LesionEvidenceError("every training and validation photo needs a DME risk")
    started = time.monotonic()
    outputs = {name: network_outputs(loaded, samples) for name, samples in parts.items()}
    labels = {name: (np.asarray([s.grade for s in samples]), np.asarray([s.dme for s in samples]))
              for name, samples in parts.items()}
    statistics, grades, risks = outputs["train"]["statistics"], *labels["train"]
    row_photos, first_view = None, AUGMENTED_SEED * (seed + 1)   # which training photo each row is a view of
    if augmented_views:
        views = [network_outputs(loaded, parts["train"], augmented_seed=first_view + view)["statistics"]
                 for view in range(augmented_views)]
        statistics = np.concatenate([statistics, *views])
        grades, risks = (np.tile(labels_, augmented_views + 1) for labels_ in labels["train"])
        row_photos = np.tile(np.arange(len(parts["train"])), augmented_views + 1)
    grade_fit, grade_choice = fit_regression(statistics, grades, config.num_classes, seed, row_photos,
                                             grade_regression)
    dme_fit, dme_choice = fit_regression(statistics, risks, len(config.heads["dme_classes"]), seed, row_photos)
    lesion_types = len(config.heads["lesion_types"])
    evidence = evidence_module(grade_fit, dme_fit, lesion_types)
    weight, tried = choose_weight(evidence, outputs["val"], *labels["val"])
    heads = dict(config.heads, lesion_evidence_weight=weight, lesion_evidence_grade=grade_regression)
    model = create_model(config.architecture, num_classes=config.num_classes, heads=heads, **config.model_options)
    state = dict(loaded.model.state_dict())
    state.update({f"lesion_evidence.{key}": value for key, value in evidence.state_dict().items()})
    model.load_state_dict(state, strict=True)
    stage = {
        "trained": True,
        "data": f"{(config.provenance.get('data') or str(source)).rstrip('.')}; then the lesion evidence alone, "
                f"on the lesion maps of its {len(parts['train'])} training photos (blend weight chosen on its "
                f"{len(parts['val'])} validation photos)",
        "recipe": {"preset": "lesion_evidence", "trained": "two logistic regressions on lesion-map statistics; "
                   "every network weight frozen", "strengths_tried": list(STRENGTHS), "folds": FOLDS,
                   "blend_weights_tried": list(BLEND_WEIGHTS), "grade_regression": grade_regression,
                   "augmented_views": augmented_views,
                   **({"augmentation": "REAL_AUGMENTATION (drdemo.data.augment), the views seeded "
                       f"{first_view}..{first_view + augmented_views - 1}; folds grouped "
                       "by photo"} if augmented_views else {})},
        "lesion_evidence": {"weight": weight, "grade": grade_choice, "dme": dme_choice,
                            "training_photos": len(parts["train"]), "validation_photos": len(parts["val"]),
                            "validation": tried},
        "seed": seed, "command": command, "code_commit": code_commit(), "torch": torch.__version__, "device": "cpu",
        "processes": 1, "initialised_from": str(source), "initialised_from_provenance": config.provenance,
        "training_seconds": round(time.monotonic() - started)}
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("model.safetensors", "README.md"))
    shutil.rmtree(out / EVAL_DIR, ignore_errors=True)  # they scored the network's probabilities alone
    save_checkpoint(model, replace(config, heads=heads, provenance=stage, metrics={}, cam_evaluation={}), out)
    return stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drdemo.train.lesion_evidence",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="a three-head checkpoint folder")
    parser.add_argument("--out", required=True, type=Path, help="new checkpoint folder to write")
    parser.add_argument("--data", type=Path, help="IDRiD's 'B. Disease Grading' folder (default: the one the "
                        "source's training/split.json names)")
    parser.add_argument("--seed", type=int, default=0, help="the cross-validation folds' seed")
    parser.add_argument("--grade-regression", choices=GRADE_REGRESSIONS, default="multinomial",
                        help="the grade's regression: a weight vector per grade, or one direction cut at ordered "
                             "thresholds (default: multinomial)")
    parser.add_argument("--augmented-views", type=int, default=0, metavar="K",
                        help="also fit on K augmented views of each training photo (default 0: the photos as served)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    require_new_folder(parser, args.checkpoint, args.out)
    if not 0 <= args.augmented_views <= 32:
        parser.error(f"--augmented-views is a count of views from 0 to 32, got {args.augmented_views}")
    set_threads(parser, args.threads)
    command = recorded_command("drdemo.train.lesion_evidence", argv)
    try:
        stage = fit(args.checkpoint, args.out, args.data, args.seed, command, args.augmented_views,
                    args.grade_regression)
    except DrdemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (lesion evidence weight {stage['lesion_evidence']['weight']}); choose its thresholds: "
          f"python -m drdemo.evaluate heads --checkpoint {args.out} --part val --choose-thresholds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
