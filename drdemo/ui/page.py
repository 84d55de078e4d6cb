"""The page's layout: Grade, Compare, Batch and About tabs over the served models, as one gr.Blocks.

Components only: what each tab computes is in `drdemo.ui.handlers`, what it says in `drdemo.ui.views`.
A tab's result components are gathered in its handler's outputs NamedTuple, field by field, so the
endpoint and the components stay in one order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from drdemo import batch as batch_grading
from drdemo.cam.explain import CAM_METHODS
from drdemo.cam.methods import CAM_METHOD_NAMES
from drdemo.predictor import Predictor
from drdemo.serving.photo_check import shared_photo_check
from drdemo.serving.slots import ServedModel
from drdemo.ui import views
from drdemo.ui.handlers import (
    CACHE_SECONDS,
    COMPARE_VIEW_SIZE,
    DEFAULT_METHOD,
    PREDICTED,
    BatchOutputs,
    CompareOutputs,
    GradeOutputs,
    Handlers,
    make_handlers,
    preview,
)

ASSETS = Path(__file__).resolve().parents[2] / "assets"
# Gradio's MCP server lists an endpoint's function as a tool unless its `_mcp_type` says otherwise (gradio/mcp.py,
# list_tools): the page's own endpoints return page values, so only `grade` and `compare` are tools.
PAGE_ONLY = "page"
UPLOAD_TYPES = [".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"]


def _examples() -> list[tuple[str, str]]:
    """(path, caption) of each example photo in assets/examples."""
    return [(str(p), views.example_label(p)) for p in sorted((ASSETS / "examples").glob("*.jp*g"))]


def _example_strip(examples: list[tuple[str, str]], elem_id: str) -> gr.Gallery | None:
    """The example photos as a strip of captioned thumbnails, with their credit under it."""
    if not examples:
        return None
    strip = gr.Gallery(examples, label=views.EXAMPLES_LABEL, columns=len(examples), rows=1, height=200,
                       allow_preview=False, interactive=False, object_fit="contain", elem_id=f"{elem_id}-examples")
    gr.Markdown(views.EXAMPLES_CREDIT, elem_classes=["examples-credit"])
    return strip


def _photo_input(label: str, elem_id: str) -> tuple[gr.File, gr.Markdown]:
    """The upload (the file itself reaches the gate), the photo shown as soon as it is chosen, and the line under
    it that says what the image check found (the grading's outcome replaces the preview's)."""
    upload = gr.File(label=label, type="filepath", file_types=UPLOAD_TYPES, height=90, elem_id=f"{elem_id}-file")
    note = gr.Markdown(elem_id=f"{elem_id}-check", label="upload_note")
    return upload, note


def _photo_preview(upload: gr.File, note: gr.Markdown, elem_id: str, examples: list[tuple[str, str]],
                   strip: gr.Gallery | None) -> None:
    """The photo shown as soon as it is chosen, with the check's first word in `note`; a thumbnail picked in
    `strip` fills the upload in."""
    shown = gr.Image(label="Your photo", type="pil", interactive=False, height=260, elem_id=f"{elem_id}-preview",
                     alt_text="the uploaded fundus photo", buttons=[])
    upload.change(preview, inputs=upload, outputs=[shown, note], api_visibility="private",
                  concurrency_id="preview", concurrency_limit=4)
    if strip is not None:
        def pick_example(event: gr.SelectData) -> str:
            return examples[event.index][0]
        strip.select(pick_example, inputs=None, outputs=upload, api_visibility="private")


def _threshold_slider(predictor: Predictor, label: str) -> gr.Slider:
    return gr.Slider(0.01, 0.99, value=predictor.config.referable_threshold, step=0.01,
                     label=f"{label} (its checkpoint's: {predictor.config.referable_threshold:g})")


def _how_to_read(predictors: Sequence[Predictor]) -> None:
    """The 'How to read this' section beside a tab's results."""
    with gr.Accordion("How to read this", open=True):
        readings = [views.reading(p.config, p.lesion_cell_px) for p in predictors]
        gr.Markdown(views.how_to_read(readings), elem_classes=["how-to-read"])


def _check_details(elem_id: str) -> gr.Markdown:
    """The closed "Image check details" section: the values behind the check's one-line outcome."""
    with gr.Accordion(views.CHECK_DETAILS_LABEL, open=False, elem_id=f"{elem_id}-check-details"):
        return gr.Markdown(elem_id=f"{elem_id}-check-values", label="check_details")


def _result_json(elem_id: str) -> gr.JSON:
    """The closed "Answer as JSON" section: what the API returns, with the checkpoint that answered."""
    with gr.Accordion("Answer as JSON (what the API and the MCP tools return)", open=False):
        return gr.JSON(label="result", elem_id=f"{elem_id}-result")


def _lesion_legend(predictors: Sequence[Predictor], elem_id: str) -> None:
    """The lesion map's colours, placed right under the map they explain."""
    if any(p.config.heads for p in predictors):
        gr.HTML(views.lesion_legend(), elem_id=elem_id, padding=False)


def _method_dropdown(predictors: Sequence[Predictor]) -> gr.Dropdown:
    choices = [("Default for the model", DEFAULT_METHOD)] + [(CAM_METHOD_NAMES[m], m) for m in CAM_METHODS]
    if any(p.config.heads for p in predictors):
        choices.append((views.LESION_MAP_LABEL, views.LESION_MAP))
    return gr.Dropdown(choices, value=DEFAULT_METHOD, label="Heat map method")


def _opacity_slider() -> gr.Slider:
    return gr.Slider(0, 1, value=0.5, step=0.05, label="Heat map opacity")


def _grade_tab(served: Sequence[ServedModel], grade, examples: list[tuple[str, str]]) -> None:
    by_slot = {s.slot: s.predictor for s in served}
    predictors = list(by_slot.values())
    model_choices = [(p.config.display_name, slot) for slot, p in by_slot.items()]
    own = {slot: p.config.referable_threshold for slot, p in by_slot.items()}
    largest = max(predictors, key=lambda p: p.config.num_classes)
    target_choices = [("Predicted class", PREDICTED)] + [(f"{i}: {name}", str(i))
                                                          for i, name in enumerate(largest.class_names)]
    with gr.Row():
        with gr.Column(scale=1):
            # the button right under the upload and the model: visible without scrolling on a 1366 x 768 screen
            upload, note = _photo_input("Colour fundus photo (JPEG, PNG, TIFF, BMP, WebP)", "grade")
            model = gr.Dropdown(model_choices, value=model_choices[0][1], label="Model")
            button = gr.Button("Grade", variant="primary", elem_id="grade-button")
            strip = _example_strip(examples, "grade")
            _photo_preview(upload, note, "grade", examples, strip)
            threshold = gr.Slider(0.01, 0.99, value=own[model_choices[0][1]], step=0.01,
                                  label="Referral threshold: refer when P(grade ≥ 2) reaches (the "
                                        "chosen model's own until you move it)")
            with gr.Accordion("Heat map and stability options", open=False):
                method = _method_dropdown(predictors)
                target = gr.Dropdown(target_choices, value=PREDICTED, label="Heat map explains")
                opacity = _opacity_slider()
                tta = gr.Checkbox(False, label=views.tta_label([p.config for p in predictors]))
        with gr.Column(scale=2):
            decision = gr.Markdown(elem_id="verdict", label="decision")
            with gr.Row(equal_height=True):
                probabilities = gr.Label(num_top_classes=5, label="Grade probabilities", show_heading=False,
                                         elem_id="grade-probabilities")
                dme = gr.Label(num_top_classes=3, label="DME risk probabilities", elem_id="dme", show_heading=False,
                               visible=any(p.config.heads for p in predictors))
            # the overlay opens fully visible: the slider starts at the left edge, over the photo as the model saw it;
            # JPEG, as on Compare: Gradio's default WebP took ~8 ms more per answer for a 224-299 px picture
            maps = gr.ImageSlider(label="Heat map (drag the handle to uncover the photo)", type="pil",
                                  interactive=False, slider_position=0, format="jpeg",
                                  elem_id="grade-maps")
            _lesion_legend(predictors, "lesion-legend")
            explanation = gr.Markdown(elem_id="explanation", label="explanation")
            details = _check_details("grade")
            result = _result_json("grade")
            _how_to_read(predictors)
    model.change(lambda slot: own[slot], inputs=model, outputs=threshold, api_name=False)
    outputs = GradeOutputs(decision=decision, upload_note=note, probabilities=probabilities, dme=dme, maps=maps,
                           explanation=explanation, check_details=details, result=result)
    button.click(grade, inputs=[upload, model, method, target, opacity, threshold, tta], outputs=list(outputs),
                 api_name="grade", concurrency_id="models")


def _probability_plot(name: str, colour: str, elem_id: str, label: str) -> gr.BarPlot:
    """One model's grade probabilities, drawn by the browser."""
    return gr.BarPlot(x="grade", y="probability", color="model", color_map={name: colour}, title=name,
                      y_lim=[0, 1], y_title="probability", x_title="", sort=None, height=220,
                      label=label, show_label=False, elem_id=elem_id, tooltip=["grade", "probability"])


def _compare_tab(predictors: Sequence[Predictor], compare, examples: list[tuple[str, str]]) -> None:
    first, second = predictors[0], predictors[1]
    with gr.Row():
        with gr.Column(scale=1):
            upload, note = _photo_input("Colour fundus photo", "compare")
            button = gr.Button("Compare both models", variant="primary", elem_id="compare-button")
            strip = _example_strip(examples, "compare")
            _photo_preview(upload, note, "compare", examples, strip)
            threshold = _threshold_slider(first, f"Referral threshold, {first.config.display_name}")
            second_threshold = _threshold_slider(second, f"Referral threshold, {second.config.display_name}")
            with gr.Accordion("Heat map options", open=False):
                method = _method_dropdown(predictors)
                opacity = _opacity_slider()
        with gr.Column(scale=2):
            decision = gr.Markdown(elem_id="agreement", label="decision")
            charts, labels, cams, dmes = [], [], [], []
            with gr.Row(equal_height=True):
                for index, (predictor, side) in enumerate(((first, "a"), (second, "b"))):
                    name = predictor.config.display_name
                    ordinal = ("first", "second")[index]
                    with gr.Column():
                        charts.append(_probability_plot(name, views.CHART_COLOURS[index], f"compare-chart-{side}",
                                                        f"{ordinal}_chart"))
                        cams.append(gr.Image(label=f"{ordinal}_map", type="pil", height=COMPARE_VIEW_SIZE,
                                             interactive=False, elem_id=f"compare-cam-{side}", format="jpeg",
                                             show_label=False))
                        labels.append(gr.Label(num_top_classes=5, label=f"{ordinal}_probabilities",
                                               show_heading=False, show_label=False))
                        dmes.append(gr.Label(num_top_classes=3, label=f"{ordinal}_dme", show_heading=False,
                                             show_label=False, visible=bool(predictor.config.heads)))
            _lesion_legend(predictors, "compare-lesion-legend")
            details = _check_details("compare")
            result = _result_json("compare")
            _how_to_read(predictors)
    outputs = CompareOutputs(decision=decision, upload_note=note, first_chart=charts[0], second_chart=charts[1],
                             first_probabilities=labels[0], second_probabilities=labels[1], first_map=cams[0],
                             second_map=cams[1], first_dme=dmes[0], second_dme=dmes[1], check_details=details,
                             result=result)
    button.click(compare, inputs=[upload, method, opacity, threshold, second_threshold], outputs=list(outputs),
                 api_name="compare", concurrency_id="models")


def _batch_tab(predictors: Sequence[Predictor], grade_batch) -> None:
    first, second = predictors[0], predictors[1]
    files = gr.File(label=f"Images or a zip archive (up to {batch_grading.MAX_IMAGES} images)",
                    file_count="multiple", type="filepath", file_types=[*UPLOAD_TYPES, ".zip"], elem_id="batch-files")
    threshold = _threshold_slider(first, f"Referral threshold, {first.config.display_name}")
    second_threshold = _threshold_slider(second, f"Referral threshold, {second.config.display_name}")
    button = gr.Button("Grade all", variant="primary")
    summary = gr.Markdown(label="Summary", elem_id="batch-summary")
    csv = gr.File(label="Results (CSV)")
    gr.Markdown(f"Gallery: the photos {first.config.display_name} gives its highest and its lowest top-grade "
                "probability, each with that probability and its decision.")
    gallery = gr.Gallery(label="Gallery", show_label=False, columns=4, height="auto")
    outputs = BatchOutputs(summary=summary, csv=csv, gallery=gallery)
    button.click(grade_batch, inputs=[files, threshold, second_threshold], outputs=list(outputs),
                 api_name="batch", concurrency_id="models")


def _tools(handlers: Handlers) -> None:
    """The agents' tools, `grade` and `compare`: no place on the page, one API endpoint each (also served as MCP
    tools), a structured answer and the heat map."""
    with gr.Row(visible=False):
        image = gr.Image(type="filepath", label="image")
        model = gr.Dropdown(["medmamba", "inception"], value="medmamba", label="model")
        result, overlay = gr.Textbox(label="result"), gr.Image(type="pil", label="heat_map", format="jpeg")
        grade_button, compare_button = gr.Button(), gr.Button()
    # queue=False: Gradio's MCP server then calls the function directly and returns each output as its own content
    # item (through the queue it wraps a several-output answer into one text, gradio/mcp.py, as of 6.31)
    grade_button.click(handlers.grade_tool, inputs=[image, model], outputs=[result, overlay],
                       api_name="grade_tool", queue=False)
    compare_button.click(handlers.compare_tool, inputs=[image], outputs=[result, overlay],
                         api_name="compare_tool", queue=False)


def build_demo(served: Sequence[ServedModel]) -> gr.Blocks:
    """The whole page. `served` lists the models in slot order (MedMamba, then InceptionV3)."""
    handlers = make_handlers(served)
    for page_only in (handlers.grade, handlers.compare, handlers.grade_batch):
        page_only._mcp_type = PAGE_ONLY
    predictors = [s.predictor for s in served]
    examples = _examples()
    if examples:
        gr.set_static_paths([ASSETS / "examples"])   # served as they are, from wherever the app is started
    with gr.Blocks(title="drdemo", delete_cache=(CACHE_SECONDS, CACHE_SECONDS), analytics_enabled=False) as demo:
        gr.Markdown(f"# {views.TITLE}")
        gr.Markdown(views.notice([p.config for p in predictors]), elem_id="notice")
        with gr.Accordion("Models served", open=any(s.fallback for s in served)):
            gr.Markdown(views.sources(served), elem_id="sources")
        with gr.Tabs():
            with gr.Tab("Grade", id="grade"):
                _grade_tab(served, handlers.grade, examples)
            with gr.Tab("Compare", id="compare"):
                _compare_tab(predictors[:2], handlers.compare, examples)
            with gr.Tab("Batch", id="batch"):
                _batch_tab(predictors, handlers.grade_batch)
            with gr.Tab("About", id="about"):
                gr.Markdown(views.about(served, shared_photo_check().describe()))
        _tools(handlers)
    return demo
