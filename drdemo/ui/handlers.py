"""The page's request handlers: an uploaded file (or files) in, plain values for the page's components out.

Every upload goes through the image gate first; the handlers hand PIL images to predictors and turn
their analyses into Gradio values with `drdemo.ui.views`. Each handler's outputs are a NamedTuple whose
fields `drdemo.ui.page` fills with components of the same names, so an output is added in one place
and the order of values and components cannot drift apart. The named API endpoints `/grade` and
`/compare` take just an image; every other input has a default.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
from PIL import Image

from drdemo import batch as batch_grading
from drdemo.errors import DrdemoError
from drdemo.intake.fundus_check import most_cautious
from drdemo.intake.gate import GateResult, ImageRejected, assess, check_upload, load_image
from drdemo.predictor import Analysis, Predictor
from drdemo.preprocess import prepare_image
from drdemo.serving.slots import ServedModel
from drdemo.ui import views

log = logging.getLogger(__name__)

DEFAULT_METHOD = "default"     # the heat map method each checkpoint's config names
PREDICTED = "predicted"        # the heat map explains the predicted class
# Uploads and outputs Gradio keeps on disk are deleted after this many seconds (checked as often).
CACHE_SECONDS = 300
# Compare draws both heat maps at this size over one view of the photo (InceptionV3's input size, so
# neither map is shrunk below what a model saw).
COMPARE_VIEW_SIZE = 299

try:  # ZeroGPU Spaces: a GPU is attached only inside functions decorated with spaces.GPU
    import spaces
    _on_gpu = spaces.GPU
except ImportError:
    def _on_gpu(function: Callable) -> Callable:
        return function


class GradeOutputs(NamedTuple):
    """The Grade tab's results (and the /grade endpoint's, in this order)."""

    probabilities: Any         # gr.Label value
    maps: Any                  # (what the model saw, the map over it) for gr.ImageSlider
    verdict: Any               # Markdown: the verdict and the image check's outcome
    dme: Any                   # gr.Label value of the DME risk, None without a DME head
    check_details: Any         # Markdown: what the image check measured (a closed section)


class CompareOutputs(NamedTuple):
    """The Compare tab's results (and the /compare endpoint's, in this order)."""

    first_probabilities: Any
    second_probabilities: Any
    first_map: Any
    second_map: Any
    agreement: Any             # Markdown: agreement line, both verdicts, the image check
    chart: Any                 # both models' probabilities as one bar chart
    first_dme: Any
    second_dme: Any
    check_details: Any         # Markdown: what the image check measured, with both models' scores


class BatchOutputs(NamedTuple):
    """The Batch tab's results (and the /batch endpoint's, in this order)."""

    csv: Any
    gallery: Any
    summary: Any


def preview(path: str | None) -> tuple[Image.Image | None, str]:
    """The photo as soon as it is chosen, with the image check's first word on it. A display copy: grading
    reads the uploaded file itself, through the gate, again."""
    if path is None:
        return None, ""
    try:
        image = load_image(path)
    except ImageRejected as exc:
        return None, views.refused_note(str(exc))
    assessment = assess(image)
    return views.preview(image), views.preview_note(assessment.outcome, assessment.reason)


def admit(path: str | Path | None) -> GateResult:
    """The gate: the upright RGB image to grade with what the image check found, or ImageRejected saying why."""
    if path is None:
        raise ImageRejected("Upload a fundus photo first.")
    return check_upload(path)


def image_check(checked: GateResult, served: Sequence[ServedModel], analyses: Sequence[Analysis]) -> tuple[str, str]:
    """(the check's outcome beside the grade, its measured values for the details section): the rules with each
    model's feature score of its grading forward, the most cautious of the models' checks shown."""
    by_model = [(s.predictor.config.display_name, s.check(checked.assessment, a)) for s, a in zip(served, analyses)]
    shown = most_cautious([assessment for _, assessment in by_model])
    return (views.gate_note(shown.outcome, shown.reason, shown.warnings),
            views.check_details(checked.assessment.details, by_model))


def user_errors(function: Callable) -> Callable:
    """Refusals become a message on the page; anything unexpected is logged and summarised, never a traceback."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except DrdemoError as exc:  # refused uploads, CAMs that cannot be made, bad batches: said in words
            log.info("request refused: %s", exc)
            raise gr.Error(str(exc)) from None
        except gr.Error:
            raise
        except Exception:
            log.exception("request failed")
            raise gr.Error("Something went wrong while analysing this image; the error was logged. "
                           "Try another image, or report it if it keeps happening.") from None
    return wrapper


def method_for(predictor: Predictor, method: str | None) -> str | None:
    """The CAM to compute: the checkpoint's default, the one asked for, or none for the lesion map."""
    if method == views.LESION_MAP:
        if not predictor.config.heads:
            raise gr.Error(views.lesion_head_missing(predictor.config.display_name))
        return None
    return predictor.config.cam_method if method in (None, DEFAULT_METHOD) else method


def compare_maps(checked: GateResult, predictors: Sequence[Predictor], analyses: Sequence[Analysis],
                 opacity: float, lesions: bool = False) -> list[Image.Image]:
    """Both heat maps at COMPARE_VIEW_SIZE over one view of the photo, cropped as the models crop it. Were
    the checkpoints to crop differently there is no shared view, and each map is drawn over its own
    model's view, at the same size still."""
    crops = {p.config.preprocessing["crop_fov"] for p in predictors}
    if len(crops) == 1:
        view = prepare_image(checked.image, COMPARE_VIEW_SIZE, predictors[0].config.preprocessing["interpolation"],
                             crops.pop())
        return views.shared_view_overlays(view, analyses, opacity, lesions)
    size = (COMPARE_VIEW_SIZE, COMPARE_VIEW_SIZE)
    return [views.shared_view_overlays(a.model_view.resize(size), [a], opacity, lesions)[0] for a in analyses]


def output_folder() -> Path:
    """Where batch CSVs wait for Gradio to serve them; files older than CACHE_SECONDS are deleted here."""
    folder = Path(tempfile.gettempdir()) / "drdemo-outputs"
    folder.mkdir(exist_ok=True)
    cutoff = time.time() - CACHE_SECONDS
    for old in folder.iterdir():
        if old.stat().st_mtime < cutoff:
            old.unlink(missing_ok=True)
    return folder


@dataclass(frozen=True)
class Handlers:
    """The three model endpoints over the served models, as Gradio calls them."""

    grade: Callable[..., GradeOutputs]
    compare: Callable[..., CompareOutputs]
    grade_batch: Callable[..., BatchOutputs]


def make_handlers(served: Sequence[ServedModel]) -> Handlers:
    """Handlers over `served` (slot order: MedMamba, then InceptionV3); Compare and Batch use the first two."""
    by_slot = {s.slot: s.predictor for s in served}
    served_by_slot = {s.slot: s for s in served}
    predictors = [s.predictor for s in served]

    @user_errors
    @_on_gpu
    def grade(upload, slot="medmamba", method=DEFAULT_METHOD, target=PREDICTED, opacity=0.5, threshold=None,
              tta=False) -> GradeOutputs:
        checked = admit(upload)
        if slot not in by_slot:
            raise gr.Error(f"unknown model {slot!r}; choose one of {', '.join(by_slot)}")
        predictor = by_slot[slot]
        threshold = float(predictor.config.referable_threshold if threshold is None else threshold)
        cam_target = None if target in (None, PREDICTED) else int(target)
        analysis = predictor.analyse(checked.image, cam_method=method_for(predictor, method), cam_target=cam_target,
                                     tta=bool(tta), referable_threshold=threshold)
        lesions = method == views.LESION_MAP
        text = views.verdict(analysis, predictor.config.display_name, predictor.class_names, threshold, lesions)
        note, details = image_check(checked, [served_by_slot[slot]], [analysis])
        return GradeOutputs(views.label_value(analysis), views.overlay_pair(analysis, float(opacity), lesions),
                            f"{text}\n\n{note}", views.dme_value(analysis), details)

    @user_errors
    @_on_gpu
    def compare(upload, method=DEFAULT_METHOD, opacity=0.5, threshold=None,
                second_threshold=None) -> CompareOutputs:
        checked = admit(upload)
        pair = predictors[:2]
        thresholds = [float(p.config.referable_threshold if t is None else t)
                      for p, t in zip(pair, (threshold, second_threshold))]
        lesions = method == views.LESION_MAP
        analyses = [p.analyse(checked.image, cam_method=method_for(p, method), referable_threshold=t)
                    for p, t in zip(pair, thresholds)]
        names = tuple(p.config.display_name for p in pair)
        texts = [views.verdict(a, n, p.class_names, t, lesions)
                 for a, n, p, t in zip(analyses, names, pair, thresholds)]
        note, details = image_check(checked, served[:2], analyses)
        first_map, second_map = compare_maps(checked, pair, analyses, float(opacity), lesions)
        return CompareOutputs(
            views.label_value(analyses[0]), views.label_value(analyses[1]), first_map, second_map,
            "\n\n".join([views.agreement(analyses[0], analyses[1], names), *texts, note]),
            views.probability_chart(names, analyses, views.agreement_headline(*analyses, names)),
            views.dme_value(analyses[0]), views.dme_value(analyses[1]), details)

    @user_errors
    @_on_gpu
    def grade_batch(files, threshold=None, second_threshold=None,
                    progress=gr.Progress()) -> BatchOutputs:  # noqa: B008 (Gradio's progress idiom)
        if not files:
            raise gr.Error("Upload image files or a zip archive first.")
        paths = [getattr(f, "name", f) for f in files]
        with tempfile.TemporaryDirectory(prefix="drdemo-batch-") as workdir:
            items = batch_grading.collect(paths, Path(workdir))
            chosen = {p.name: float(t) for p, t in zip(predictors, (threshold, second_threshold)) if t is not None}
            results = batch_grading.grade(items, served, admit, referable_thresholds=chosen,
                                          progress=lambda share, text: progress(share, desc=text))
        out = output_folder() / f"drdemo_batch_{time.strftime('%Y%m%d_%H%M%S')}_{time.monotonic_ns()}.csv"
        batch_grading.write_csv(results, predictors, out)
        first = predictors[0]
        most, least = batch_grading.extremes(results, first.name)
        gallery = [(r.thumbnail, f"most confident: {r.name}: {r.predictions[first.name].grade_name}")
                   for r in most]
        gallery += [(r.thumbnail, f"least confident: {r.name}: {r.predictions[first.name].grade_name}")
                    for r in least if r not in most]
        return BatchOutputs(str(out), gallery, views.batch_summary(results, first.name, first.config.display_name))

    return Handlers(grade, compare, grade_batch)
