"""Grade a shard of photos in batches through the app's own pieces: the served slots and their image check
(drdemo.serving.slots: the gate's rules, drdemo.intake.gate.check_upload, with each model's feature score) and
the predictor's batched forward (drdemo.predictor.Predictor.predict_batch), which shares its preprocessing,
inference and probabilities with the app's single-photo path. Three-head checkpoints (config `heads`) add
`<slot>_dme_*` columns from the same pass.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from drdemo.cam.explain import overlay
from drdemo.intake.fundus_check import Assessment, most_cautious
from drdemo.intake.gate import ImageRejected, check_upload
from drdemo.predictor import Prediction
from drdemo.screen.writer import slug
from drdemo.serving.slots import ServedModel


@dataclass
class Admitted:
    """A photo the gate's rules let through (accepted or warned), ready for the models."""

    name: str
    image: Image.Image
    assessment: Assessment


def admit(root: Path, name: str) -> tuple[Admitted | None, dict]:
    """Run the app's gate on one file: (the admitted photo, its row so far) or (None, the finished row of a refused
    or unreadable file)."""
    try:
        checked = check_upload(root / name)
    except ImageRejected as exc:
        unreadable = not exc.details           # the gate measured nothing: the file did not decode
        return None, {"file": name, "outcome": "unreadable" if unreadable else "refused", "reason": exc.reason}
    except OSError as exc:                     # missing or unreadable on disk
        return None, {"file": name, "outcome": "unreadable", "reason": f"cannot read the file ({exc.strerror or exc})"}
    return Admitted(name, checked.image, checked.assessment), {
        "file": name, "outcome": checked.outcome, "reason": checked.reason}


class BatchGrader:
    """One served model's batched grading: one forward over the batch, the model's own image check of each photo
    (its feature score added to the rules) and the probability columns."""

    def __init__(self, served: ServedModel):
        self.served, self.slot, self.predictor = served, served.slot, served.predictor
        self.config = served.predictor.config

    @property
    def dme_classes(self) -> tuple[str, ...]:
        return tuple(self.config.heads.get("dme_classes", ())) if self.config.heads else ()

    def grade(self, photos: Sequence[Admitted]) -> list[tuple[dict, Assessment]]:
        """(this model's columns, its image check) for each photo."""
        analyses = self.predictor.predict_batch([photo.image for photo in photos])
        return [(self.columns(analysis.prediction), self.served.check(photo.assessment, analysis))
                for photo, analysis in zip(photos, analyses)]

    def columns(self, prediction: Prediction) -> dict:
        referable = prediction.referable_probability
        row = {f"{self.slot}_grade": prediction.grade,
               f"{self.slot}_p_referable": "" if referable is None else f"{referable:.6f}",
               f"{self.slot}_referred": "" if prediction.referred is None else prediction.referred}
        row.update({f"{self.slot}_p_{slug(c)}": f"{v:.6f}" for c, v in prediction.probabilities.items()})
        if self.dme_classes and prediction.dme_referable_probability is not None:
            row[f"{self.slot}_dme_p_referable"] = f"{prediction.dme_referable_probability:.6f}"
            row.update({f"{self.slot}_dme_p_{slug(c)}": f"{v:.6f}" for c, v in prediction.dme_probabilities.items()})
        return row

    def fingerprint(self) -> dict:
        """What makes this slot's rows what they are: the config, a hash of the weights and of the feature score."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.predictor.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        config = {key: value for key, value in vars(self.config).items() if key != "provenance"}
        score = self.served.feature_score
        score_digest = None
        if score is not None:
            scored = hashlib.sha256(repr(score.threshold).encode())
            for array in (score.mean, score.components, score.class_means, score.precision):
                scored.update(array.tobytes())
            score_digest = scored.hexdigest()
        return {"config": repr(sorted(config.items())), "weights": digest.hexdigest(), "feature_score": score_digest}


def grade_batch(root: Path, names: Sequence[str], graders: Sequence[BatchGrader],
                cams: Path | None = None) -> list[dict]:
    """One row per name: the image check's outcome and reason (the most cautious of the models' checks, as the
    app shows it) and each model's columns for the admitted photos."""
    rows, admitted = [], []
    for name in names:
        photo, row = admit(root, name)
        rows.append(row)
        if photo is not None:
            admitted.append((row, photo))
    if admitted:
        photos = [photo for _, photo in admitted]
        checks: list[list[Assessment]] = [[] for _ in admitted]
        for grader in graders:
            for (row, _), own, (columns, check) in zip(admitted, checks, grader.grade(photos)):
                row.update(columns)
                own.append(check)
        for (row, _), own in zip(admitted, checks):
            shown = most_cautious(own)
            row.update(outcome=shown.outcome, reason=shown.reason)
        if cams is not None:
            for photo in photos:
                save_cams(cams, photo, graders)
    return rows


def save_cams(cams: Path, photo: Admitted, graders: Sequence[BatchGrader]) -> None:
    """Each model's default heat map of `photo`, as the app draws it, to cams/<slot>/<file>.png (the full file name
    kept, so a.jpg and a.png cannot overwrite each other)."""
    for grader in graders:
        analysis = grader.predictor.analyse(photo.image, cam_method=grader.config.cam_method)
        target = cams / grader.slot / f"{photo.name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        overlay(analysis.model_view, analysis.heatmap).save(target)


def screen(root: Path, names: Sequence[str], graders: Sequence[BatchGrader], batch_size: int,
           append, cams: Path | None = None, progress=None) -> float:
    """Grade `names` batch by batch, handing each batch's rows to `append`; returns seconds spent."""
    start = time.perf_counter()
    for first in range(0, len(names), batch_size):
        chunk = names[first:first + batch_size]
        append(grade_batch(root, chunk, graders, cams))
        if progress is not None:
            progress(len(chunk))
    return time.perf_counter() - start
