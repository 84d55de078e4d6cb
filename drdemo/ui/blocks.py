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
from PIL import Image

from drdemo import batch as batch_grading
from drdemo.cam.methods import CAM_METHOD_NAMES
from drdemo.checkpoint import model_card
from drdemo.data.datasets import IDRID_ATTRIBUTION
from drdemo.errors import DrdemoError
from drdemo.cam.explain import CAM_METHODS
from drdemo.intake.gate import GateResult, ImageRejected, assess, check_upload, load_image
from drdemo.predictor import Analysis, Predictor
from drdemo.preprocess import prepare_image
from drdemo.serving.slots import ServedModel
from drdemo.tasks import ICDR_GRADES
from drdemo.ui import views

log = logging.getLogger(__name__)

TITLE = "drdemo: diabetic retinopathy grading with MedMamba and InceptionV3"
NOT_A_DEVICE = ("Research demonstration only. This is not a medical device and must not be used "
                "to diagnose, grade or triage patients.")
DEFAULT_METHOD = "default"
PREDICTED = "predicted"
ASSETS = Path(__file__).resolve().parents[2] / "assets"
EXAMPLES_LABEL = ("Examples (click one): IDRiD test photos, true grade from IDRiD's retina specialists (Porwal et al., "
                  "IDRiD, IEEE Dataport 2018, doi:10.21227/H25W98, CC BY 4.0)")
UPLOAD_TYPES = [".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"]
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


def _name(predictor: Predictor) -> str:
    """The name people read ("MedMamba-T"), from the checkpoint's config; the registry id stays in the details."""
    return predictor.config.display_name


def _real_data_results(predictors: Sequence[Predictor]) -> str:
    """ "MedMamba-T: QWK 0.70, referable AUC 0.90 on IDRiD's 103 test photos; ..." from each model card."""
    parts = []
    for predictor in predictors:
        metrics = predictor.config.metrics
        if "test_qwk" in metrics and "test_referable_auc" in metrics:
            parts.append(f"{_name(predictor)} QWK {metrics['test_qwk']:.2f}, referable-DR AUC "
                         f"{metrics['test_referable_auc']:.2f} (n = {metrics.get('test_n', '?')})")
    return "; ".join(parts)


def _notice(predictors: Sequence[Predictor]) -> str:
    untrained = [_name(p) for p in predictors if not p.trained]
    synthetic = [_name(p) for p in predictors if p.config.trained_on_synthetic_data]
    idrid = [_name(p) for p in predictors if p.config.trained_on_idrid]
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
    """'Grade 0: No DR' from idrid_test_029_grade0_no_dr.jpg: a thumbnail's caption, short enough to be read
    whole (the strip's label says these are IDRiD test photos graded by its specialists)."""
    parts = path.stem.split("_")
    if parts[:2] == ["idrid", "test"] and len(parts) > 3 and parts[3].startswith("grade"):
        grade = int(parts[3][len("grade"):])
        return f"Grade {grade}: {ICDR_GRADES[grade]}"
    return path.stem


def _sources(served: Sequence[ServedModel]) -> str:
    return "\n".join(f"- **{_name(s.predictor)}** (`{s.predictor.name}`): {'⚠️ ' if s.fallback else ''}{s.status}"
                     for s in served)


def _tta_label(predictors: Sequence[Predictor]) -> str:
    """The test-time augmentation checkbox's label, naming the models whose checkpoints average eight views
    anyway (for them the box changes nothing)."""
    label = "Test-time augmentation: grade 8 flips/rotations and show how much they disagree (up to 8x slower)"
    always = [_name(p) for p in predictors if p.config.test_time_views > 1]
    return label + (f"; {' and '.join(always)} always {'does' if len(always) == 1 else 'do'}" if always else "")


def _reading(predictor: Predictor) -> views.ModelReading:
    config = predictor.config
    calibration = config.provenance.get("calibration_choice") or {}
    threshold = config.provenance.get("referable_threshold_choice") or {}
    rule = f"{threshold['rule'].removeprefix('the ')} on {threshold['data']}" if threshold else None
    return views.ModelReading(_name(predictor), config.test_time_views,
                              calibration.get("data", "validation photos") if config.calibration else None,
                              config.referable_threshold, rule, config.dme_threshold if config.heads else None)


def _how_to_read(predictors: Sequence[Predictor]) -> None:
    """The 'How to read this' section beside a tab's results."""
    with gr.Accordion("How to read this", open=True):
        gr.Markdown(views.how_to_read([_reading(p) for p in predictors]), elem_classes=["how-to-read"])


def _preview(path: str | None) -> tuple[Image.Image | None, str]:
    """The photo as soon as it is chosen, with the image check's first word on it. A display copy: grading
    reads the uploaded file itself, through the gate, again."""
    if path is None:
        return None, ""
    try:
        image = load_image(path)
    except ImageRejected as exc:
        return None, f"**Image check: refused.** {exc} It will not be graded."
    assessment = assess(image)
    return views.preview(image), views.preview_note(assessment.outcome, assessment.reason)


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


def build_demo(served: Sequence[ServedModel]) -> gr.Blocks:
    """The whole page. `served` lists the models in slot order (MedMamba, then InceptionV3)."""
    by_slot = {s.slot: s.predictor for s in served}
    predictors = [s.predictor for s in served]
    model_choices = [(_name(p), slot) for slot, p in by_slot.items()]
    method_choices = [("Default for the model", DEFAULT_METHOD)] + [(CAM_METHOD_NAMES[m], m) for m in CAM_METHODS]
    if any(p.config.heads for p in predictors):
        method_choices.append((views.LESION_MAP_LABEL, views.LESION_MAP))
    largest = max(predictors, key=lambda p: p.config.num_classes)
    target_choices = [("Predicted class", PREDICTED)] + [(f"{i}: {name}", str(i))
                                                          for i, name in enumerate(largest.class_names)]

    def method_for(predictor: Predictor, method: str) -> str | None:
        """The CAM to compute: the checkpoint's default, the one asked for, or none for the lesion map."""
        if method == views.LESION_MAP:
            if not predictor.config.heads:
                raise gr.Error(f"{_name(predictor)} has no lesion head, so it has no lesion map; choose a heat map "
                               f"method")
            return None
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
        lesions = method == views.LESION_MAP
        text = views.verdict(analysis, _name(predictor), predictor.class_names, float(threshold), lesions)
        return (views.label_value(analysis), views.overlay_pair(analysis, float(opacity), lesions),
                f"{text}\n\n{_gate_note(checked)}", views.dme_value(analysis))

    @_user_errors
    @_on_gpu
    def compare(upload, method=DEFAULT_METHOD, opacity=0.5, threshold=None, second_threshold=None):
        checked = _admit(upload)
        first, second = predictors[0], predictors[1]
        thresholds = [float(p.config.referable_threshold if t is None else t)
                      for p, t in ((first, threshold), (second, second_threshold))]
        lesions = method == views.LESION_MAP
        analyses = [p.analyse(checked.image, cam_method=method_for(p, method), referable_threshold=t)
                    for p, t in zip((first, second), thresholds)]
        names = (_name(first), _name(second))
        texts = [views.verdict(a, n, p.class_names, t, lesions)
                 for a, n, p, t in zip(analyses, names, (first, second), thresholds)]
        line = views.agreement(analyses[0], analyses[1], names)
        return (views.label_value(analyses[0]), views.label_value(analyses[1]),
                *_compare_maps(checked, (first, second), analyses, float(opacity), lesions),
                "\n\n".join([line, *texts, _gate_note(checked)]),
                views.probability_chart(names, analyses, views.agreement_headline(*analyses, names)),
                views.dme_value(analyses[0]), views.dme_value(analyses[1]))

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
        summary = views.batch_summary(results, predictors[0].name, _name(predictors[0]))
        return str(out), gallery, summary

    example_paths = sorted((ASSETS / "examples").glob("*.jp*g"))
    examples = [(str(p), _example_label(p)) for p in example_paths]
    if examples:
        gr.set_static_paths([ASSETS / "examples"])   # served as they are, from wherever the app is started
    own = {slot: p.config.referable_threshold for slot, p in by_slot.items()}

    def threshold_slider(predictor: Predictor, label: str) -> gr.Slider:
        return gr.Slider(0.01, 0.99, value=predictor.config.referable_threshold, step=0.01,
                         label=f"{label} (its checkpoint's: {predictor.config.referable_threshold:g})")

    def pick_example(event: gr.SelectData) -> str:
        return examples[event.index][0]

    def example_strip(elem_id: str) -> gr.Gallery | None:
        """The example photos as a strip of captioned thumbnails across the tab."""
        if not examples:
            return None
        return gr.Gallery(examples, label=EXAMPLES_LABEL, columns=len(examples), rows=1, height=270,
                          allow_preview=False, interactive=False, object_fit="contain", elem_id=f"{elem_id}-examples")

    def photo_input(label: str, elem_id: str, strip: gr.Gallery | None) -> gr.File:
        """The upload (the file itself reaches the gate), with the photo shown as soon as it is chosen;
        a thumbnail picked in `strip` fills it in."""
        upload = gr.File(label=label, type="filepath", file_types=UPLOAD_TYPES, height=90, elem_id=f"{elem_id}-file")
        shown = gr.Image(label="Your photo", type="pil", interactive=False, height=300, elem_id=f"{elem_id}-preview",
                         alt_text="the uploaded fundus photo", buttons=[])
        note = gr.Markdown(elem_id=f"{elem_id}-check")
        upload.change(_preview, inputs=upload, outputs=[shown, note], api_visibility="private",
                      concurrency_id="preview", concurrency_limit=4)
        if strip is not None:
            strip.select(pick_example, inputs=None, outputs=upload, api_visibility="private")
        return upload

    with gr.Blocks(title="drdemo", delete_cache=(CACHE_SECONDS, CACHE_SECONDS), analytics_enabled=False) as demo:
        gr.Markdown(f"# {TITLE}")
        gr.Markdown(_notice(predictors), elem_id="notice")
        with gr.Accordion("Models served", open=any(s.fallback for s in served)):
            gr.Markdown(_sources(served), elem_id="sources")
        with gr.Tabs():
            with gr.Tab("Grade", id="grade"):
                strip = example_strip("grade")
                with gr.Row():
                    with gr.Column(scale=1):
                        upload = photo_input("Colour fundus photo (JPEG, PNG, TIFF, BMP, WebP)", "grade", strip)
                        model = gr.Dropdown(model_choices, value=model_choices[0][1], label="Model")
                        threshold = gr.Slider(0.01, 0.99, value=own[model_choices[0][1]], step=0.01,
                                              label="Referral threshold: refer when P(grade ≥ 2) reaches (the "
                                                    "chosen model's own until you move it)")
                        with gr.Accordion("Heat map and stability options", open=False):
                            method = gr.Dropdown(method_choices, value=DEFAULT_METHOD, label="Heat map method")
                            target = gr.Dropdown(target_choices, value=PREDICTED, label="Heat map explains")
                            opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Heat map opacity")
                            tta = gr.Checkbox(False, label=_tta_label(predictors))
                        button = gr.Button("Grade", variant="primary")
                    with gr.Column(scale=2):
                        label = gr.Label(num_top_classes=5, label="Probability of each grade")
                        verdict = gr.Markdown(elem_id="verdict")
                        slider = gr.ImageSlider(label="What the model saw | heat map", type="pil",
                                                interactive=False)
                        dme = gr.Label(num_top_classes=3, label="Risk of macular oedema (DME)", elem_id="dme",
                                       visible=any(p.config.heads for p in predictors))
                        if any(p.config.heads for p in predictors):
                            gr.HTML(views.lesion_legend(), elem_id="lesion-legend")
                        _how_to_read([by_slot[slot] for slot in by_slot])
                model.change(lambda slot: own[slot], inputs=model, outputs=threshold, api_name=False)
                inputs = [upload, model, method, target, opacity, threshold, tta]
                button.click(grade, inputs=inputs, outputs=[label, slider, verdict, dme], api_name="grade",
                             concurrency_id="models")
            with gr.Tab("Compare", id="compare"):
                c_strip = example_strip("compare")
                with gr.Row():
                    with gr.Column(scale=1):
                        c_upload = photo_input("Colour fundus photo", "compare", c_strip)
                        c_threshold = threshold_slider(predictors[0], f"Referral threshold, {_name(predictors[0])}")
                        c_threshold_b = threshold_slider(predictors[1], f"Referral threshold, {_name(predictors[1])}")
                        with gr.Accordion("Heat map options", open=False):
                            c_method = gr.Dropdown(method_choices, value=DEFAULT_METHOD, label="Heat map method")
                            c_opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Heat map opacity")
                        c_button = gr.Button("Compare both models", variant="primary")
                    with gr.Column(scale=2):
                        chart = gr.Plot(label="Probability of each grade, both models", show_label=False,
                                        format="png", elem_id="compare-chart")
                        with gr.Row(equal_height=True):
                            with gr.Column():
                                c_label_a = gr.Label(num_top_classes=5, label=_name(predictors[0]))
                                c_cam_a = gr.Image(label=f"{_name(predictors[0])}: heat map", type="pil",
                                                   height=COMPARE_VIEW_SIZE, interactive=False,
                                                   elem_id="compare-cam-a")
                            with gr.Column():
                                c_label_b = gr.Label(num_top_classes=5, label=_name(predictors[1]))
                                c_cam_b = gr.Image(label=f"{_name(predictors[1])}: heat map", type="pil",
                                                   height=COMPARE_VIEW_SIZE, interactive=False,
                                                   elem_id="compare-cam-b")
                        with gr.Row(equal_height=True, visible=any(p.config.heads for p in predictors[:2])):
                            c_dme_a = gr.Label(num_top_classes=3, label=f"{_name(predictors[0])}: DME risk")
                            c_dme_b = gr.Label(num_top_classes=3, label=f"{_name(predictors[1])}: DME risk")
                        if any(p.config.heads for p in predictors[:2]):
                            gr.HTML(views.lesion_legend(), elem_id="compare-lesion-legend")
                        agreement = gr.Markdown(elem_id="agreement")
                        _how_to_read(predictors[:2])
                c_button.click(compare, inputs=[c_upload, c_method, c_opacity, c_threshold, c_threshold_b],
                               outputs=[c_label_a, c_label_b, c_cam_a, c_cam_b, agreement, chart, c_dme_a, c_dme_b],
                               api_name="compare",
                               concurrency_id="models")
            with gr.Tab("Batch", id="batch"):
                b_files = gr.File(label=f"Images or a zip archive (up to {batch_grading.MAX_IMAGES} images)",
                                  file_count="multiple", type="filepath", file_types=[*UPLOAD_TYPES, ".zip"])
                b_threshold = threshold_slider(predictors[0], f"Referral threshold, {_name(predictors[0])}")
                b_threshold_b = threshold_slider(predictors[1], f"Referral threshold, {_name(predictors[1])}")
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


def _compare_maps(checked: GateResult, predictors: Sequence[Predictor], analyses: Sequence[Analysis],
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
        sections.append(f"## Model card: {_name(model.predictor)} (`{model.predictor.name}`)\n\n"
                        + body.replace("\n# ", "\n### "))
    return "\n\n".join(sections)
