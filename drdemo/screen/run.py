"""Grade a shard of photos in batches through the app's own pieces: the served slots
(drdemo.serving.slots), the image gate (drdemo.intake.gate.check_upload) and each checkpoint's
preprocessing and one inference path (drdemo.preprocess, drdemo.inference, drdemo.calibration).

The predictor grades one image per call; screening needs batched forwards, so `BatchGrader` stacks
`to_model_input` tensors and runs `view_outputs` once per batch, then turns logits into probabilities
exactly as `Predictor.analyse` does (class_probabilities with the checkpoint's calibration, P(referable)
from the task). Three-head checkpoints (config `heads`) add `<slot>_dme_*` columns from the same pass.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from drdemo.calibration import class_probabilities
from drdemo.cam.explain import overlay
from drdemo.inference import view_outputs
from drdemo.intake.gate import ImageRejected, check_upload
from drdemo.metrics import task_probabilities
from drdemo.predictor import Predictor
from drdemo.preprocess import preprocess_kwargs, to_model_input
from drdemo.screen.writer import slug
from drdemo.tasks import REFERABLE_DME_RISK


@dataclass
class Admitted:
    """A photo the gate let through (accepted or warned), ready for the models."""

    name: str
    image: Image.Image
    outcome: str
    reason: str


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
    return Admitted(name, checked.image, checked.outcome, checked.reason), {
        "file": name, "outcome": checked.outcome, "reason": checked.reason}


class BatchGrader:
    """One served model's batched grading: stacked inputs, one forward over the batch, probability columns."""

    def __init__(self, slot: str, predictor: Predictor):
        self.slot, self.predictor, self.config = slot, predictor, predictor.config
        self.kwargs = preprocess_kwargs(self.config)

    @property
    def dme_classes(self) -> tuple[str, ...]:
        return tuple(self.config.heads.get("dme_classes", ())) if self.config.heads else ()

    def inputs(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.cat([to_model_input(image, **self.kwargs) for image in images])

    def forward(self, batch: torch.Tensor) -> dict[str, np.ndarray]:
        return view_outputs(self.predictor.model, batch.to(self.predictor.device), self.config.test_time_views)

    def columns(self, outputs: dict[str, np.ndarray]) -> list[dict]:
        probabilities = class_probabilities(outputs["logits"], self.config.calibration)
        referable = task_probabilities(probabilities, self.config.task).get("referable")
        rows = []
        for i, p in enumerate(probabilities):
            row = {f"{self.slot}_grade": int(np.argmax(p)),
                   f"{self.slot}_p_referable": "" if referable is None else f"{referable[i]:.6f}"}
            row.update({f"{self.slot}_p_{slug(c)}": f"{v:.6f}" for c, v in zip(self.config.class_names, p)})
            rows.append(row)
        if self.dme_classes and "dme_logits" in outputs:
            dme = class_probabilities(outputs["dme_logits"], None)
            for row, p in zip(rows, dme):
                row[f"{self.slot}_dme_p_referable"] = f"{p[REFERABLE_DME_RISK]:.6f}"
                row.update({f"{self.slot}_dme_p_{slug(c)}": f"{v:.6f}" for c, v in zip(self.dme_classes, p)})
        return rows

    def grade(self, images: Sequence[Image.Image]) -> list[dict]:
        return self.columns(self.forward(self.inputs(images)))

    def fingerprint(self) -> dict:
        """What makes this slot's grades what they are: the config and a hash of the weights."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.predictor.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        config = {key: value for key, value in vars(self.config).items() if key != "provenance"}
        return {"config": repr(sorted(config.items())), "weights": digest.hexdigest()}


def grade_batch(root: Path, names: Sequence[str], graders: Sequence[BatchGrader],
                cams: Path | None = None) -> list[dict]:
    """One row per name: the gate's outcome and reason, and each model's columns for the admitted photos."""
    rows, admitted = [], []
    for name in names:
        photo, row = admit(root, name)
        rows.append(row)
        if photo is not None:
            admitted.append((row, photo))
    if admitted:
        for grader in graders:
            for (row, _), columns in zip(admitted, grader.grade([photo.image for _, photo in admitted])):
                row.update(columns)
        if cams is not None:
            for _, photo in admitted:
                save_cams(cams, photo, graders)
    return rows


def save_cams(cams: Path, photo: Admitted, graders: Sequence[BatchGrader]) -> None:
    """Each model's default heat map of `photo`, as the app draws it, to cams/<slot>/<file>.png (the full file name kept, so
    a.jpg and a.png cannot overwrite each other)."""
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
