"""The page: Grade, Compare, Batch and About tabs over the served models.

Every upload goes through the image gate first; the handlers hand PIL images to predictors and
turn their analyses into Gradio values with `drdemo.ui.views`. The named API endpoints `/grade`
and `/compare` take just an image; every other input has a default.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import gradio as gr

from drdemo import batch as batch_grading
from drdemo.checkpoint import model_card
from drdemo.data.datasets import IDRID_ATTRIBUTION
from drdemo.explain import CAM_METHOD_NAMES, CAM_METHODS, ExplainError
from drdemo.gate import GateResult, ImageRejected, check_upload
from drdemo.models import ICDR_GRADES
from drdemo.predictor import Predictor
from drdemo.serving import ServedModel
from drdemo.ui import views

log = logging.getLogger(__name__)

TITLE = "drdemo: diabetic retinopathy grading with MedMamba and InceptionV3"
NOT_A_DEVICE = ("Research demonstration only. This is not a medical device and must not be used "
                "to diagnose, grade or triage patients.")
DEFAULT_METHOD = "default"
PREDICTED = "predicted"
ASSETS = Path(__file__).resolve().parents[2] / "assets"
EXAMPLES_LABEL = ("Examples: IDRiD test photos, true grade from IDRiD's retina specialists (Porwal et al., IDRiD, "
                  "IEEE Dataport 2018, doi:10.21227/H25W98, CC BY 4.0)")
UPLOAD_TYPES = [".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"]
# Uploads and outputs Gradio keeps on disk are deleted after this many seconds (checked as often).
CACHE_SECONDS = 300

try:  # ZeroGPU Spaces: a GPU is attached only inside functions decorated with spaces.GPU
    import spaces
    _on_gpu = spaces.GPU
except ImportError:
    def _on_gpu(function: Callable) -> Callable:
        return function


def _real_data_results(predictors: Sequence[Predictor]) -> str:
    """ "MedMamba-T: QWK 0.70, referable AUC 0.90 on IDRiD's 103 test photos; ..." from each model card."""
    parts = []
    for predictor in predictors:
        metrics = predictor.config.metrics
        if "test_qwk" in metrics and "test_referable_auc" in metrics:
            parts.append(f"{predictor.name} QWK {metrics['test_qwk']:.2f}, referable-DR AUC "
                         f"{metrics['test_referable_auc']:.2f} (n = {metrics.get('test_n', '?')})")
    return "; ".join(parts)


def _notice(predictors: Sequence[Predictor]) -> str:
    untrained = [p.name for p in predictors if not p.trained]
    synthetic = [p.name for p in predictors if p.config.trained_on_synthetic_data]
    idrid = [p.name for p in predictors if p.config.trained_on_idrid]
    if untrained:
        return (f"**The models on this page ({', '.join(untrained)}) are untrained: their weights are randomly "
                f"initialised, so the probabilities below are meaningless.** {NOT_A_DEVICE}")
    if synthetic:
        return (f"**The models on this page ({', '.join(synthetic)}) were trained only on synthetic fundus images "
                f"made by this project's generator, not on patient photographs: their grades on real photos are not "
                f"validated.** {NOT_A_DEVICE}")
    if idrid:
        results = _real_data_results(predictors)
        return (f"**The models on this page ({', '.join(idrid)}) were trained on photos of one camera from one "
                f"hospital in India (IDRiD){'; on IDRiD' + chr(39) + 's test photos: ' + results if results else ''}. "
                f"Other cameras, populations and image quality were not validated.** {NOT_A_DEVICE}")
    return f"**{NOT_A_DEVICE}**"


def _example_label(path: Path) -> str:
    """'IDRiD test photo 029: true grade 0 (No DR)' from idrid_test_029_grade0_no_dr.jpg."""
    parts = path.stem.split("_")
    if parts[:2] == ["idrid", "test"] and len(parts) > 3 and parts[3].startswith("grade"):
        grade = int(parts[3][len("grade"):])
        return f"IDRiD test photo {parts[2]}: true grade {grade} ({ICDR_GRADES[grade]})"
    return path.stem


def _sources(served: Sequence[ServedModel]) -> str:
    return "\n".join(f"- **{s.predictor.name}**: {'⚠️ ' if s.fallback else ''}{s.status}" for s in served)


def _admit(path: str | Path | None) -> GateResult:
    """The gate: the upright RGB image to grade with what the image check found, or ImageRejected saying why."""
    if path is None:
        raise ImageRejected("Upload a fundus photo first.")
    return check_upload(path)


def _gate_note(checked: GateResult) -> str:
    return views.gate_note(checked.outcome, checked.reason, checked.notes, checked.details)


def _user_errors(function: Callable) -> Callable:
    """Refusals become a message on the page; anything unexpected is logged and summarised, never a traceback."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (ImageRejected, ExplainError, batch_grading.BatchError) as exc:
            log.info("request refused: %s", exc)
            raise gr.Error(str(exc)) from None
        except gr.Error:
            raise
        except Exception:
            log.exception("request failed")
            raise gr.Error("Something went wrong while analysing this image; the error was logged. "
                           "Try another image, or report it if it keeps happening.") from None
    return wrapper


def build_demo(served: Sequence[ServedModel]) -> gr.Blocks:
    """The whole page. `served` lists the models in slot order (MedMamba, then InceptionV3)."""
    by_slot = {s.slot: s.predictor for s in served}
    predictors = [s.predictor for s in served]
    model_choices = [(f"{p.name} ({slot})", slot) for slot, p in by_slot.items()]
    method_choices = [("Default for the model", DEFAULT_METHOD)] + [(CAM_METHOD_NAMES[m], m) for m in CAM_METHODS]
    largest = max(predictors, key=lambda p: p.config.num_classes)
    target_choices = [("Predicted class", PREDICTED)] + [(f"{i}: {name}", str(i))
                                                          for i, name in enumerate(largest.class_names)]

    def method_for(predictor: Predictor, method: str) -> str:
        return predictor.config.cam_method if method in (None, DEFAULT_METHOD) else method

    @_user_errors
    @_on_gpu
    def grade(upload, slot="medmamba", method=DEFAULT_METHOD, target=PREDICTED, opacity=0.5, threshold=None,
              tta=False):
        checked = _admit(upload)
        if slot not in by_slot:
            raise gr.Error(f"unknown model {slot!r}; choose one of {', '.join(by_slot)}")
        predictor = by_slot[slot]
        threshold = predictor.config.referable_threshold if threshold is None else threshold
        cam_target = None if target in (None, PREDICTED) else int(target)
        analysis = predictor.analyse(checked.image, cam_method=method_for(predictor, method), cam_target=cam_target,
                                     tta=bool(tta), referable_threshold=float(threshold))
        text = views.verdict(analysis, predictor.name, predictor.class_names, float(threshold))
        return (views.label_value(analysis), views.overlay_pair(analysis, float(opacity)),
                f"{text}\n\n{_gate_note(checked)}")

    @_user_errors
    @_on_gpu
    def compare(upload, method=DEFAULT_METHOD, opacity=0.5, threshold=None, second_threshold=None):
        checked = _admit(upload)
        first, second = predictors[0], predictors[1]
        thresholds = [float(p.config.referable_threshold if t is None else t)
                      for p, t in ((first, threshold), (second, second_threshold))]
        analyses = [p.analyse(checked.image, cam_method=method_for(p, method), referable_threshold=t)
                    for p, t in zip((first, second), thresholds)]
        texts = [views.verdict(a, p.name, p.class_names, t) for a, p, t in zip(analyses, (first, second), thresholds)]
        line = views.agreement(analyses[0], analyses[1], (first.name, second.name))
        return (views.label_value(analyses[0]), views.label_value(analyses[1]),
                views.overlay_pair(analyses[0], float(opacity))[1], views.overlay_pair(analyses[1], float(opacity))[1],
                "\n\n".join([line, *texts, _gate_note(checked)]))

    @_user_errors
    @_on_gpu
    def grade_batch(files, threshold=None, second_threshold=None,
                    progress=gr.Progress()):  # noqa: B008 (Gradio's progress idiom)
        if not files:
            raise gr.Error("Upload image files or a zip archive first.")
        paths = [getattr(f, "name", f) for f in files]
        with tempfile.TemporaryDirectory(prefix="drdemo-batch-") as workdir:
            items = batch_grading.collect(paths, Path(workdir))
            chosen = {p.name: float(t) for p, t in zip(predictors, (threshold, second_threshold)) if t is not None}
            results = batch_grading.grade(items, predictors, _admit, referable_thresholds=chosen,
                                          progress=lambda share, text: progress(share, desc=text))
        out = _output_folder() / f"drdemo_batch_{time.strftime('%Y%m%d_%H%M%S')}_{time.monotonic_ns()}.csv"
        batch_grading.write_csv(results, predictors, out)
        most, least = batch_grading.extremes(results, predictors[0].name)
        gallery = [(r.thumbnail, f"most confident: {r.name}: {r.predictions[predictors[0].name].grade_name}")
                   for r in most]
        gallery += [(r.thumbnail, f"least confident: {r.name}: {r.predictions[predictors[0].name].grade_name}")
                    for r in least if r not in most]
        summary = views.batch_summary(results, predictors[0].name)
        return str(out), gallery, summary

    example_paths = sorted((ASSETS / "examples").glob("*.jp*g"))
    examples, example_labels = [str(p) for p in example_paths], [_example_label(p) for p in example_paths]
    own = {slot: p.config.referable_threshold for slot, p in by_slot.items()}

    def threshold_slider(predictor: Predictor, label: str) -> gr.Slider:
        return gr.Slider(0.01, 0.99, value=predictor.config.referable_threshold, step=0.01,
                         label=f"{label} (its checkpoint's: {predictor.config.referable_threshold:g})")
    with gr.Blocks(title="drdemo", delete_cache=(CACHE_SECONDS, CACHE_SECONDS), analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}")
        gr.Markdown(_notice(predictors), elem_id="notice")
        with gr.Accordion("Models served", open=any(s.fallback for s in served)):
            gr.Markdown(_sources(served), elem_id="sources")
        with gr.Tabs():
            with gr.Tab("Grade", id="grade"):
                with gr.Row():
                    with gr.Column(scale=1):
                        upload = gr.File(label="Colour fundus photo (JPEG, PNG, TIFF, BMP, WebP)", type="filepath",
                                         file_types=UPLOAD_TYPES)
                        model = gr.Dropdown(model_choices, value=model_choices[0][1], label="Model")
                        method = gr.Dropdown(method_choices, value=DEFAULT_METHOD, label="Heat map method")
                        target = gr.Dropdown(target_choices, value=PREDICTED, label="Heat map explains")
                        opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Heat map opacity")
                        threshold = gr.Slider(0.01, 0.99, value=own[model_choices[0][1]], step=0.01,
                                              label="Referral threshold: refer when P(grade ≥ 2) reaches (the "
                                                    "chosen model's own until you move it)")
                        tta = gr.Checkbox(False, label="Test-time augmentation (8 flips/rotations: shows how stable "
                                                       "the answer is, 8x slower)")
                        button = gr.Button("Grade", variant="primary")
                        if examples:
                            gr.Examples(examples, inputs=upload, example_labels=example_labels,
                                        label=EXAMPLES_LABEL)
                    with gr.Column(scale=2):
                        label = gr.Label(num_top_classes=5, label="Probability of each grade")
                        verdict = gr.Markdown(elem_id="verdict")
                        slider = gr.ImageSlider(label="What the model saw | heat map", type="pil",
                                                interactive=False)
                model.change(lambda slot: own[slot], inputs=model, outputs=threshold, api_name=False)
                inputs = [upload, model, method, target, opacity, threshold, tta]
                button.click(grade, inputs=inputs, outputs=[label, slider, verdict], api_name="grade",
                             concurrency_id="models")
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    with gr.Column(scale=1):
                        c_upload = gr.File(label="Colour fundus photo", type="filepath", file_types=UPLOAD_TYPES)
                        c_method = gr.Dropdown(method_choices, value=DEFAULT_METHOD, label="Heat map method")
                        c_opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Heat map opacity")
                        c_threshold = threshold_slider(predictors[0], f"Referral threshold, {predictors[0].name}")
                        c_threshold_b = threshold_slider(predictors[1], f"Referral threshold, {predictors[1].name}")
                        c_button = gr.Button("Compare both models", variant="primary")
                        if examples:
                            gr.Examples(examples, inputs=c_upload, example_labels=example_labels,
                                        label=EXAMPLES_LABEL)
                    with gr.Column(scale=2):
                        agreement = gr.Markdown(elem_id="agreement")
                        with gr.Row():
                            with gr.Column():
                                c_label_a = gr.Label(num_top_classes=5, label=predictors[0].name)
                                c_cam_a = gr.Image(label=f"{predictors[0].name}: heat map", type="pil")
                            with gr.Column():
                                c_label_b = gr.Label(num_top_classes=5, label=predictors[1].name)
                                c_cam_b = gr.Image(label=f"{predictors[1].name}: heat map", type="pil")
                c_button.click(compare, inputs=[c_upload, c_method, c_opacity, c_threshold, c_threshold_b],
                               outputs=[c_label_a, c_label_b, c_cam_a, c_cam_b, agreement], api_name="compare",
                               concurrency_id="models")
            with gr.Tab("Batch", id="batch"):
                b_files = gr.File(label=f"Images or a zip archive (up to {batch_grading.MAX_IMAGES} images)",
                                  file_count="multiple", type="filepath", file_types=[*UPLOAD_TYPES, ".zip"])
                b_threshold = threshold_slider(predictors[0], f"Referral threshold, {predictors[0].name}")
                b_threshold_b = threshold_slider(predictors[1], f"Referral threshold, {predictors[1].name}")
                b_button = gr.Button("Grade all", variant="primary")
                b_summary = gr.Markdown()
                b_csv = gr.File(label="Results (CSV)")
                b_gallery = gr.Gallery(label="Most and least confident", columns=4, height="auto")
                b_button.click(grade_batch, inputs=[b_files, b_threshold, b_threshold_b],
                               outputs=[b_csv, b_gallery, b_summary],
                               api_name="batch", concurrency_id="models")
            with gr.Tab("About", id="about"):
                gr.Markdown(_about(served))
    return demo


def _output_folder() -> Path:
    """Where batch CSVs wait for Gradio to serve them; files older than CACHE_SECONDS are deleted here."""
    folder = Path(tempfile.gettempdir()) / "drdemo-outputs"
    folder.mkdir(exist_ok=True)
    cutoff = time.time() - CACHE_SECONDS
    for old in folder.iterdir():
        if old.stat().st_mtime < cutoff:
            old.unlink(missing_ok=True)
    return folder


def _about(served: Sequence[ServedModel]) -> str:
    predictors = [model.predictor for model in served]
    if any(p.config.trained_on_idrid for p in predictors):
        results = _real_data_results(predictors)
        what = (f"{NOT_A_DEVICE} The models were trained on IDRiD's training photos (a part of them held out to "
                f"choose epochs and thresholds): one camera (Kowa VX-10 alpha) at one hospital in India, graded by "
                f"retina specialists. "
                f"{'On IDRiD' + chr(39) + 's 103 test photos: ' + results + '. ' if results else ''}"
                f"Other cameras, populations and image quality were not validated; the model cards below give "
                f"every number with its data. Example photos: {IDRID_ATTRIBUTION}")
    else:
        what = (f"{NOT_A_DEVICE} The demo models were trained on synthetic fundus images made by this project's "
                f"generator; how they behave on real photographs is unknown.")
    sections = [f"## What this is\n\n{what}",
                "## ICDR grades\n\n" + views.grades_table(),
                "## Models served\n\n" + _sources(served)]
    for model in served:
        card = model_card(model.predictor.config)
        body = card.split("\n---\n", 1)[1] if card.startswith("---") else card
        sections.append(f"## Model card: {model.predictor.name}\n\n" + body.replace("\n# ", "\n### "))
    return "\n\n".join(sections)
