"""The page: upload a fundus photo, see each model's probability for every ICDR grade."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import gradio as gr

from drdemo.gate import ImageRejected, load_image
from drdemo.predictor import Predictor
from drdemo.serving import ServedModel

log = logging.getLogger(__name__)

TITLE = "drdemo: diabetic retinopathy grading with MedMamba and InceptionV3"
NOT_A_DEVICE = ("Research demonstration only. This is not a medical device and must not be used "
                "to diagnose, grade or triage patients.")


def _notice(predictors: Sequence[Predictor]) -> str:
    untrained = [p.name for p in predictors if not p.trained]
    synthetic = [p.name for p in predictors if p.synthetic_training_data]
    if synthetic and not untrained:
        return (f"**The models on this page ({', '.join(synthetic)}) were trained only on synthetic fundus images "
                f"made by this project's generator, not on patient photographs: their grades on real photos are not "
                f"validated.** {NOT_A_DEVICE}")
    if not untrained:
        return f"**{NOT_A_DEVICE}**"
    return (f"**The models on this page ({', '.join(untrained)}) are untrained: their weights are randomly "
            f"initialised, so the probabilities below are meaningless.** Trained checkpoints will replace "
            f"them. {NOT_A_DEVICE}")


def _sources(served: Sequence[ServedModel]) -> str:
    return "\n".join(f"- **{s.predictor.name}**: {'⚠️ ' if s.fallback else ''}{s.status}" for s in served)


def build_demo(served: Sequence[ServedModel]) -> gr.Blocks:
    """One gr.Blocks page running every served model on the uploaded image (API endpoint `/grade`)."""
    predictors = [s.predictor for s in served]

    def grade(upload: str | None):
        if upload is None:
            raise gr.Error("Upload a fundus photo first.")
        try:
            image = load_image(upload)
        except ImageRejected as exc:
            log.info("upload refused: %s", exc)
            raise gr.Error(str(exc)) from None
        predictions = [p.predict(image) for p in predictors]
        lines = [f"- **{p.name}**: {pred.grade_name} (grade {pred.grade}), {pred.seconds * 1000:.0f} ms"
                 for p, pred in zip(predictors, predictions)]
        return (image, *[pred.probabilities for pred in predictions], "\n".join(lines))

    with gr.Blocks(title="drdemo") as demo:
        gr.Markdown(f"# {TITLE}")
        gr.Markdown(_notice(predictors), elem_id="notice")
        gr.Markdown(f"Models served:\n{_sources(served)}", elem_id="sources")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Colour fundus photo (JPEG, PNG, TIFF, BMP, WebP)", type="filepath")
                button = gr.Button("Grade", variant="primary")
                shown = gr.Image(label="The image as the models received it", type="pil", interactive=False)
            with gr.Column():
                labels = [gr.Label(num_top_classes=5, label=p.name) for p in predictors]
                summary = gr.Markdown()
        button.click(grade, inputs=upload, outputs=[shown, *labels, summary], api_name="grade")
    return demo
