"""Grade many images at once: a zip or a list of files in, one CSV row per image out.

Zip archives are read member by member into a private temporary folder with bounded sizes and
counts (no path from inside the archive is ever used as a path on disk), every image goes
through the same image check as a single upload (the rules, then each served model's feature
score), and each row carries the check's outcome (accepted, warned or refused), its reason and the
measured values; an image that is refused becomes a row saying why instead of stopping the batch.
"""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from drdemo.errors import DrdemoError
from drdemo.intake.fundus_check import Assessment, most_cautious
from drdemo.intake.gate import MAX_BYTES, GateResult, ImageRejected
from drdemo.predictor import Prediction, Predictor

if TYPE_CHECKING:
    from drdemo.serving.slots import ServedModel

MAX_IMAGES = 200
MAX_ARCHIVE_TOTAL_BYTES = 2 * 1024**3
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


class BatchError(DrdemoError, ValueError):
    """A batch that cannot be run at all (nothing to grade, too many files, a broken archive)."""


@dataclass
class BatchItem:
    name: str                                    # as the user knows it: file name, or archive/member
    path: Path
    predictions: dict[str, Prediction] = field(default_factory=dict)   # model name -> prediction
    outcome: str = ""                                                  # the gate's: accepted, warned, refused
    reason: str = ""                                                   # ... why, in one sentence
    details: str = ""                                                  # ... and the values it measured
    notes: list[str] = field(default_factory=list)                    # gate refusals and warnings
    thumbnail: Image.Image | None = None


def collect(paths: Sequence[str | Path], workdir: Path) -> list[tuple[str, Path]]:
    """(display name, file) for every image among `paths`, zip archives expanded into `workdir`."""
    items: list[tuple[str, Path]] = []
    total = 0
    for path in map(Path, paths):
        if zipfile.is_zipfile(path):
            for name, member_path, size in _extract(path, workdir, len(items)):
                total += size
                if total > MAX_ARCHIVE_TOTAL_BYTES:
                    raise BatchError(f"{path.name}: the archives hold more than "
                                     f"{MAX_ARCHIVE_TOTAL_BYTES // 1024**3} GB of images")
                items.append((name, member_path))
        else:
            items.append((path.name, path))
        if len(items) > MAX_IMAGES:
            raise BatchError(f"more than {MAX_IMAGES} images in one batch; split it into smaller batches")
    if not items:
        raise BatchError("no images found: upload image files or a zip archive of them")
    return items


def _extract(archive: Path, workdir: Path, already: int) -> Iterator[tuple[str, Path, int]]:
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [m for m in bundle.infolist() if not m.is_dir()
                       and Path(m.filename).suffix.lower() in IMAGE_SUFFIXES
                       and not Path(m.filename).name.startswith(".")]          # macOS ._ resource forks
            if already + len(members) > MAX_IMAGES:
                raise BatchError(f"{archive.name} holds {len(members)} images; at most {MAX_IMAGES} per batch")
            for index, member in enumerate(members):
                if member.file_size > MAX_BYTES:
                    raise BatchError(f"{archive.name}/{member.filename}: {member.file_size / 2**20:.0f} MB "
                                     f"uncompressed, over the {MAX_BYTES // 2**20} MB limit per image")
                target = workdir / f"{already + index:04d}{Path(member.filename).suffix.lower()}"
                with bundle.open(member) as source, open(target, "wb") as sink:
                    sink.write(source.read(MAX_BYTES + 1))   # never more than the limit, whatever the header says
                yield f"{archive.name}/{member.filename}", target, member.file_size
    except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError) as exc:  # RuntimeError: encrypted members
        raise BatchError(f"{archive.name}: the archive cannot be read ({exc})") from exc


def grade(items: Sequence[tuple[str, Path]], models: Sequence[ServedModel], admit: Callable[[Path], GateResult],
          referable_threshold: float | None = None,
          progress: Callable[[float, str], None] | None = None,
          referable_thresholds: Mapping[str, float] | None = None) -> list[BatchItem]:
    """Run every served model on every admitted image. `admit(path)` is the gate
    (`drdemo.intake.gate.check_upload`): it returns the image with what the rules found, or raises ImageRejected.
    Each model then adds its feature score to the check, as on the Grade tab, and the most cautious check is the
    row's. A model refers at `referable_thresholds[its name]`, else `referable_threshold`, else its checkpoint's
    own threshold."""
    thresholds = dict(referable_thresholds or {})
    results = []
    for index, (name, path) in enumerate(items):
        if progress is not None:
            progress(index / len(items), f"{index + 1}/{len(items)}: {name}")
        item = BatchItem(name=name, path=path)
        try:
            checked = admit(path)
        except ImageRejected as exc:
            item.outcome, item.reason, item.details = "refused", exc.reason, exc.details
            item.notes.append(f"refused: {exc}")
            results.append(item)
            continue
        checks = []
        for model in models:
            predictor = model.predictor
            threshold = thresholds.get(predictor.name, referable_threshold)
            analysis = predictor.analyse(checked.image, referable_threshold=threshold)
            item.predictions[predictor.name] = analysis.prediction
            checks.append((predictor.config.display_name, model.check(checked.assessment, analysis)))
        shown = most_cautious([check for _, check in checks]) if checks else checked.assessment
        item.outcome, item.reason = shown.outcome, attributed_reason(checked.assessment, checks, shown)
        item.details = _details(checked.details, checks)
        item.notes.extend(shown.warnings)
        item.thumbnail = models[0].predictor.model_view(checked.image) if models else None
        results.append(item)
    if progress is not None:
        progress(1.0, "done")
    return results


def attributed_reason(rules: Assessment, checks: Sequence[tuple[str, Assessment]], shown: Assessment) -> str:
    """The reason of the check shown, prefixed with the model whose own feature score made it, so that one model's
    number is never read as another's reason (the rules' reasons belong to no model)."""
    if shown.reason == rules.reason:
        return shown.reason
    owner = next((name for name, check in checks if check is shown), None)
    return f"{owner}: {shown.reason}" if owner else shown.reason


def _details(rules: str, checks: Sequence[tuple[str, Assessment]]) -> str:
    """The rules' measured values, then each model's feature distance and threshold where it has a score."""
    scores = [f"{name} feature distance {c.measurements['feature_distance']:.2f} (unlike the training photos above "
              f"{c.measurements['feature_threshold']:.2f})"
              for name, c in checks if "feature_distance" in c.measurements]
    return "; ".join([rules.rstrip("."), *scores]) + "." if scores else rules


def write_csv(results: Sequence[BatchItem], predictors: Sequence[Predictor], path: Path) -> Path:
    """One row per image: the image check's outcome, reason and measured values, every model's class
    probabilities and the grade named (the one agreeing with the decision), its one referral decision
    (`<model>_decision`: refer or do not refer)
    with the reason (`<model>_decision_reason`: retinopathy, macular oedema or both) and the probabilities it was
    read from (P(grade >= 2) and, for three-head models, the DME risk), and the check's warnings as notes."""
    columns = ["file", "outcome", "reason", "details"]
    for predictor in predictors:
        prefix = predictor.name
        columns += [f"{prefix}_decision", f"{prefix}_decision_reason"]
        columns += [f"{prefix}_p_{_slug(c)}" for c in predictor.class_names]
        columns += [f"{prefix}_grade", f"{prefix}_grade_name", f"{prefix}_referable_probability"]
        if predictor.config.heads:
            columns += [f"{prefix}_dme_p_{_slug(c)}" for c in predictor.config.heads["dme_classes"]]
            columns += [f"{prefix}_dme_referable_probability"]
    columns += ["notes"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for item in results:
            row = {"file": item.name, "outcome": item.outcome, "reason": item.reason, "details": item.details,
                   "notes": " | ".join(item.notes)}
            for predictor in predictors:
                prediction = item.predictions.get(predictor.name)
                if prediction is not None:
                    row.update(_prediction_columns(predictor.name, prediction))
            writer.writerow(row)
    return path


def _prediction_columns(prefix: str, prediction: Prediction) -> dict[str, object]:
    row: dict[str, object] = {f"{prefix}_p_{_slug(c)}": f"{p:.6f}" for c, p in prediction.probabilities.items()}
    referred = prediction.referred
    reasons = prediction.referral_reasons or (("retinopathy",) if referred else ())
    row.update({f"{prefix}_decision": "" if referred is None else ("refer" if referred else "do not refer"),
                f"{prefix}_decision_reason": " and ".join(reasons),
                f"{prefix}_grade": prediction.grade, f"{prefix}_grade_name": prediction.grade_name,
                f"{prefix}_referable_probability": "" if prediction.referable_probability is None
                else f"{prediction.referable_probability:.6f}"})
    if prediction.dme_referable_probability is not None:
        row.update({f"{prefix}_dme_p_{_slug(c)}": f"{p:.6f}" for c, p in prediction.dme_probabilities.items()})
        row.update({f"{prefix}_dme_referable_probability": f"{prediction.dme_referable_probability:.6f}"})
    return row


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
