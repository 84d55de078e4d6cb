"""The page's request handlers: an uploaded file (or files) in, plain values for the page's components out.

Every upload goes through the image gate first; the handlers hand PIL images to predictors and turn
their analyses into Gradio values with `drdemo.ui.views`. Each handler's outputs are a NamedTuple whose
fields `drdemo.ui.page` fills with components of the same names, so an output is added in one place
and the order of values and components cannot drift apart. The named API endpoints `/grade` and
`/compare` take just an image; every other input has a default.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
from PIL import Image

from drdemo import batch as batch_grading
from drdemo.errors import DrdemoError
from drdemo.intake.fundus_check import Assessment, most_cautious
from drdemo.intake.gate import GateResult, ImageRejected, admitted, assess, load_image
from drdemo.predictor import Analysis, Predictor, PreparedPhoto
from drdemo.preprocess import prepare_image
from drdemo.serving.photo_check import judged as photo_classifier_judged
from drdemo.serving.photo_check import screen as photo_classifier_screen
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
    """The Grade tab's results (and the /grade endpoint's, in this order; page.py labels each component by its
    field name, which is what the API page calls it)."""

    decision: Any              # Markdown, first under the photo: refer or not, why, each probability vs its threshold
    upload_note: Any           # the line under the photo: the image check's final outcome (replaces the preview's)
    probabilities: Any         # gr.Label value (no heading: the decision is the heading)
    dme: Any                   # gr.Label value of the DME risk, None without a DME head
    maps: Any                  # (what the model saw, the map over it) for gr.ImageSlider
    explanation: Any           # Markdown: what the map shows, the spread over views, the time
    check_details: Any         # Markdown: what the image check measured (a closed section)
    result: Any                # JSON: the whole answer, with which checkpoint gave it


class CompareOutputs(NamedTuple):
    """The Compare tab's results (and the /compare endpoint's, in this order)."""

    decision: Any              # Markdown: both models' decisions, their agreement, the image check
    upload_note: Any
    first_chart: Any           # gr.BarPlot values, one per model, drawn by the browser
    second_chart: Any
    first_probabilities: Any
    second_probabilities: Any
    first_map: Any
    second_map: Any
    first_dme: Any
    second_dme: Any
    check_details: Any         # Markdown: what the image check measured, with both models' scores
    result: Any                # JSON: both answers


class BatchOutputs(NamedTuple):
    """The Batch tab's results (and the /batch endpoint's, in this order)."""

    summary: Any               # Markdown: counts, then one row per photo with both models' grades and decisions
    csv: Any
    gallery: Any


def preview(path: str | None) -> tuple[Image.Image | None, str]:
    """The photo as soon as it is chosen, with the image check's first word on it. A display copy: grading
    reads the uploaded file itself, through the gate, again."""
    if path is None:
        return None, ""
    try:
        image = load_image(path)
    except ImageRejected as exc:
        return None, views.refused_note(str(exc))
    assessment = photo_classifier_judged(assess(image), image)
    return views.preview(image), views.preview_note(assessment.outcome, assessment.reason)


def admit(path: str | Path | None) -> GateResult:
    """The gate and the learned fundus-versus-everyday check, once per upload and before any grading forward: the
    upright RGB image to grade with what the check found, or ImageRejected saying why."""
    return admit_prepared(path, ())[0]


# Each model's input is made from the decoded photo on these threads while the image check's rules look at the same
# photo: the rules are numpy and OpenCV on one core, the crop and resize PIL on the other.
_PREPARING = ThreadPoolExecutor(max_workers=2, thread_name_prefix="drdemo-prepare")


def admit_prepared(path: str | Path | None, predictors: Sequence[Predictor]
                   ) -> tuple[GateResult, list[PreparedPhoto]]:
    """`admit(path)`, with each predictor's `prepare` of the photo made meanwhile; still no grading forward before
    the check has passed the photo (a refused photo's preparations are dropped). The gate's steps are
    drdemo.intake.gate.check_upload's, taken apart so the decoded photo can be handed out before the rules run."""
    if path is None:
        raise ImageRejected("Upload a fundus photo first.")
    image = load_image(path)
    jobs = [_PREPARING.submit(predictor.prepare, image) for predictor in predictors]
    try:
        checked = photo_classifier_screen(admitted(Path(path).name, image, assess(image)))
    except BaseException:
        for job in jobs:
            job.cancel()
        raise
    return checked, [job.result() for job in jobs]


@dataclass(frozen=True)
class CheckResult:
    """The image check over every model asked: the outcome shown, its lines for the page, the values behind it."""

    assessment: Assessment     # the most cautious of the models' checks
    note: str                  # Markdown: the outcome and its warnings
    details: str               # Markdown: what was measured, with each model's feature score

    def as_dict(self) -> dict:
        return {"outcome": self.assessment.outcome, "reason": self.assessment.reason,
                "warnings": list(self.assessment.warnings)}


def image_check(checked: GateResult, served: Sequence[ServedModel], analyses: Sequence[Analysis]) -> CheckResult:
    """The rules with each model's feature score of its grading forward, the most cautious of the models' checks
    shown (a refusal by any one refuses the photo)."""
    by_model = [(s.predictor.config.display_name, s.check(checked.assessment, a)) for s, a in zip(served, analyses)]
    shown = most_cautious([assessment for _, assessment in by_model])
    reason = batch_grading.attributed_reason(checked.assessment, by_model, shown)
    shown = replace(shown, reason=reason, warnings=tuple(reason if w == shown.reason else w for w in shown.warnings))
    return CheckResult(shown, views.gate_note(shown.outcome, shown.reason, shown.warnings),
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
        interpolation = predictors[0].config.preprocessing["interpolation"]
        # a model that sees the photo at this size, resized the same way, already made this view (InceptionV3's)
        made = [a.model_view for a, p in zip(analyses, predictors)
                if a.model_view.size == (COMPARE_VIEW_SIZE, COMPARE_VIEW_SIZE)
                and p.config.preprocessing["interpolation"] == interpolation]
        view = made[0] if made else prepare_image(checked.image, COMPARE_VIEW_SIZE, interpolation, crops.pop())
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
    """The page's endpoints over the served models, as Gradio calls them, and the agents' tools."""

    grade: Callable[..., GradeOutputs]
    compare: Callable[..., CompareOutputs]
    grade_batch: Callable[..., BatchOutputs]
    grade_tool: Callable[..., tuple[str, Image.Image | None]]
    compare_tool: Callable[..., tuple[str, Image.Image | None]]


def _thresholds(predictor: Predictor, threshold: float | None) -> tuple[float, float | None]:
    """(the referral threshold on P(grade >= 2) in use, the checkpoint's on P(DME risk 2) where it has a DME head)."""
    config = predictor.config
    return (float(config.referable_threshold if threshold is None else threshold),
            config.dme_threshold if config.heads else None)


def refused_check(reason: str) -> dict:
    """The image check's part of an answer for an upload the gate refused before any model saw it."""
    return {"outcome": "refused", "reason": reason}


def refusal(image_check: dict, answered_by: dict | list | None = None) -> dict:
    """The answer for a photo that is not graded: the check that refused it, and the checkpoints asked, if any."""
    answer = {"graded": False, "image_check": image_check}
    if answered_by is not None:
        answer["answered_by"] = answered_by
    return answer


def as_json(answer: dict) -> str:
    """A tool's answer as JSON text: what an MCP client reads (a dict would reach it as Python's repr)."""
    return json.dumps(answer, indent=1, ensure_ascii=False)


def make_handlers(served: Sequence[ServedModel]) -> Handlers:
    """Handlers over `served` (slot order: MedMamba, then InceptionV3); Compare and Batch use the first two."""
    by_slot = {s.slot: s for s in served}
    predictors = [s.predictor for s in served]

    def grade_one(upload, slot, method, target, tta, threshold) -> tuple[GateResult, Analysis, CheckResult,
                                                                            tuple[float, float | None]]:
        if slot not in by_slot:
            raise gr.Error(f"unknown model {slot!r}; choose one of {', '.join(by_slot)}")
        model = by_slot[slot]
        checked, (prepared,) = admit_prepared(upload, [model.predictor])
        thresholds = _thresholds(model.predictor, threshold)
        cam_target = None if target in (None, PREDICTED) else int(target)
        analysis = model.predictor.analyse(prepared, cam_method=method_for(model.predictor, method),
                                           cam_target=cam_target, tta=bool(tta), referable_threshold=thresholds[0])
        return checked, analysis, image_check(checked, [model], [analysis]), thresholds

    def result_of(model: ServedModel, analysis: Analysis, thresholds, check: CheckResult) -> dict:
        return views.structured_result(analysis, thresholds[0], thresholds[1], check.as_dict(), model.answered_by())

    @user_errors
    @_on_gpu
    def grade_page(upload, slot="medmamba", method=DEFAULT_METHOD, target=PREDICTED, opacity=0.5, threshold=None,
                   tta=False) -> GradeOutputs:
        try:
            checked, analysis, check, thresholds = grade_one(upload, slot, method, target, tta, threshold)
        except ImageRejected as exc:   # said where the decision would be, and it stays there
            return GradeOutputs(views.refused_decision(str(exc)), views.refused_note(str(exc)), None, None, None, "",
                                exc.details, refusal(refused_check(str(exc))))
        model = by_slot[slot]
        if check.assessment.outcome == "refused":
            return GradeOutputs(views.refused_decision(check.assessment.reason), check.note, None, None, None, "",
                                check.details, refusal(check.as_dict(), model.answered_by()))
        lesions = method == views.LESION_MAP
        name = model.predictor.config.display_name
        decision = "\n\n".join([views.decision(analysis.prediction, name, *thresholds), check.note,
                                 views.answered_by(model.answered_by())])
        return GradeOutputs(decision, check.note, views.label_value(analysis), views.dme_value(analysis),
                            views.overlay_pair(analysis, float(opacity), lesions),
                            views.explanation(analysis, model.predictor.class_names, lesions), check.details,
                            result_of(model, analysis, thresholds, check))

    def compare_two(upload, method, thresholds_asked) -> tuple[GateResult, list[Analysis], CheckResult, list]:
        pair = served[:2]
        checked, prepared = admit_prepared(upload, [m.predictor for m in pair])
        thresholds = [_thresholds(m.predictor, t) for m, t in zip(pair, thresholds_asked)]
        analyses = [m.predictor.analyse(photo, cam_method=method_for(m.predictor, method), referable_threshold=t[0])
                    for m, photo, t in zip(pair, prepared, thresholds)]
        return checked, analyses, image_check(checked, pair, analyses), thresholds

    @user_errors
    @_on_gpu
    def compare_page(upload, method=DEFAULT_METHOD, opacity=0.5, threshold=None,
                     second_threshold=None) -> CompareOutputs:
        try:
            checked, analyses, check, thresholds = compare_two(upload, method, (threshold, second_threshold))
        except ImageRejected as exc:
            return CompareOutputs(views.refused_decision(str(exc)), views.refused_note(str(exc)), None, None, None,
                                  None, None, None, None, None, exc.details,
                                  refusal(refused_check(str(exc))))
        pair = served[:2]
        if check.assessment.outcome == "refused":
            return CompareOutputs(views.refused_decision(check.assessment.reason), check.note, None, None, None,
                                  None, None, None, None, None, check.details,
                                  refusal(check.as_dict(), [m.answered_by() for m in pair]))
        lesions = method == views.LESION_MAP
        names = tuple(m.predictor.config.display_name for m in pair)
        decisions = [views.decision(a.prediction, n, *t) for a, n, t in zip(analyses, names, thresholds)]
        text = "\n\n".join([*decisions, views.agreement(analyses[0], analyses[1], names), check.note,
                             "; ".join(views.answered_by(m.answered_by()) for m in pair)])
        first_map, second_map = compare_maps(checked, [m.predictor for m in pair], analyses, float(opacity), lesions)
        return CompareOutputs(
            text, check.note, views.probability_frame(names[0], analyses[0]),
            views.probability_frame(names[1], analyses[1]), views.label_value(analyses[0]),
            views.label_value(analyses[1]), first_map, second_map, views.dme_value(analyses[0]),
            views.dme_value(analyses[1]), check.details,
            {"models": [result_of(m, a, t, check) for m, a, t in zip(pair, analyses, thresholds)]})

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
        shown = [(p.name, p.config.display_name) for p in predictors]
        return BatchOutputs(views.batch_summary(results, shown), str(out), views.batch_gallery(results, shown[0]))

    def grade(image: str, model: str = "medmamba") -> tuple[str, Image.Image | None]:
        """Grade one colour fundus photo for diabetic retinopathy (ICDR grades 0-4) and macular oedema risk,
        and say whether to refer the patient. A research demonstration, not a medical device.

        Args:
            image: the colour fundus photo (a URL or a base64 data URL of a JPEG, PNG, TIFF, BMP or WebP file).
            model: "medmamba" (MedMamba-T) or "inception" (InceptionV3).

        Returns:
            The answer as JSON (the referral decision with its reasons, each probability beside its threshold, the
            grade and DME probabilities, the image check's outcome and which checkpoint answered) and the photo as
            the model saw it with the model's heat map over it. A photo that is not a colour fundus photo is not
            graded: the JSON says it was refused and why.
        """
        try:
            checked, analysis, check, thresholds = grade_one(image, model, DEFAULT_METHOD, PREDICTED, False, None)
        except DrdemoError as exc:
            return as_json(refusal(refused_check(str(exc)))), None
        served_model = by_slot[model]
        if check.assessment.outcome == "refused":
            return as_json(refusal(check.as_dict(), served_model.answered_by())), None
        return (as_json({"graded": True, **result_of(served_model, analysis, thresholds, check)}),
                views.overlay_pair(analysis, 0.5)[1])

    def compare(image: str) -> tuple[str, Image.Image | None]:
        """Grade one colour fundus photo with both models (MedMamba-T and InceptionV3) and say whether they agree
        on the grade and on referral. A research demonstration, not a medical device.

        Args:
            image: the colour fundus photo (a URL or a base64 data URL of a JPEG, PNG, TIFF, BMP or WebP file).

        Returns:
            Both models' answers as JSON (each with its referral decision, reasons, probabilities beside thresholds
            and the checkpoint that answered), whether they agree, the image check's outcome, and both heat maps
            side by side over one view of the photo. A photo that is not a colour fundus photo is not graded: the
            JSON says it was refused and why.
        """
        try:
            checked, analyses, check, thresholds = compare_two(image, DEFAULT_METHOD, (None, None))
        except DrdemoError as exc:
            return as_json(refusal(refused_check(str(exc)))), None
        pair = served[:2]
        if check.assessment.outcome == "refused":
            return as_json(refusal(check.as_dict(), [m.answered_by() for m in pair])), None
        a, b = (x.prediction for x in analyses)
        maps = compare_maps(checked, [m.predictor for m in pair], analyses, 0.5)
        return (as_json({"graded": True, "same_grade": a.grade_name == b.grade_name,
                         "same_referral": a.referred == b.referred,
                         "models": [result_of(m, x, t, check) for m, x, t in zip(pair, analyses, thresholds)]}),
                views.side_by_side(maps))

    return Handlers(grade_page, compare_page, grade_batch, user_errors(_on_gpu(grade)), user_errors(_on_gpu(compare)))
