"""Everything the page says and shows, from plain values: the notice and the About text from checkpoint
configs, label values, verdict text, overlay images and agreement lines from analyses.

No Gradio and no tensors here, so the wording is tested on its own; `handlers` calls these with what the
models returned and `page` with what the served checkpoints are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from drdemo.batch import BatchItem
from drdemo.cam.explain import overlay
from drdemo.cam.lesion_maps import LESION_COLOURS, lesion_overlay
from drdemo.cam.methods import CAM_METHOD_NAMES, CLASS_INDEPENDENT_METHODS
from drdemo.checkpoint import CheckpointConfig, model_card
from drdemo.data.datasets import IDRID_ATTRIBUTION, IDRID_CAMERA
from drdemo.intake.fundus_check import Assessment
from drdemo.intake.gate import OUTCOME_WORDS
from drdemo.intake.ood import describe as describe_feature_score
from drdemo.predictor import Analysis, Prediction
from drdemo.serving.slots import ServedModel
from drdemo.tasks import ICDR_GRADES

TITLE = "drdemo: diabetic retinopathy grading with MedMamba and InceptionV3"
NOT_A_DEVICE = ("Research demonstration only. This is not a medical device and must not be used "
                "to diagnose, grade or triage patients.")
EXAMPLES_LABEL = "Examples (click one): IDRiD test photos, true grade from IDRiD's retina specialists"
EXAMPLES_CREDIT = f"Example photos: {IDRID_ATTRIBUTION}"

CHECK_DETAILS_LABEL = "Image check details"
PREVIEW_SIDE = 640          # the longest side of the photo shown on upload (a display copy only)
CHART_COLOURS = ("#4C72B0", "#DD8452")   # colour-blind-safe blue and orange, one per model

# (grade, name, what a grader sees), one row per ICDR grade.
ICDR_MEANINGS = tuple((str(grade), name, meaning) for grade, (name, meaning) in enumerate(zip(ICDR_GRADES, (
    "No abnormalities.",
    "Microaneurysms only.",
    "More than microaneurysms but less than severe NPDR: dot/blot haemorrhages, hard exudates or cotton-wool spots.",
    "Any of: more than 20 intraretinal haemorrhages in each of 4 quadrants, venous beading in 2 or more quadrants, "
    "IRMA in 1 or more quadrant; no signs of proliferation.",
    "Neovascularisation and/or vitreous or pre-retinal haemorrhage.",
), strict=True)))


def real_data_results(configs: Sequence[CheckpointConfig]) -> str:
    """ "MedMamba-T QWK 0.70, referable-DR AUC 0.90 (n = 103); ..." from each checkpoint's test metrics."""
    parts = []
    for config in configs:
        metrics = config.metrics
        if "test_qwk" in metrics and "test_referable_auc" in metrics:
            parts.append(f"{config.display_name} QWK {metrics['test_qwk']:.2f}, referable-DR AUC "
                         f"{metrics['test_referable_auc']:.2f} (n = {metrics.get('test_n', '?')})")
    return "; ".join(parts)


def notice(configs: Sequence[CheckpointConfig]) -> str:
    """The bold line under the title: what the served models were trained on, and that this is no device."""
    untrained = [c.display_name for c in configs if not c.trained]
    synthetic = [c.display_name for c in configs if c.trained_on_synthetic_data]
    idrid = [c.display_name for c in configs if c.trained_on_idrid]
    if untrained:
        return (f"**The models on this page ({', '.join(untrained)}) are untrained: their weights are randomly "
                f"initialised, so the probabilities below are meaningless.** {NOT_A_DEVICE}")
    if synthetic:
        return (f"**The models on this page ({', '.join(synthetic)}) were trained only on synthetic fundus images "
                f"made by this project's generator, not on patient photographs: their grades on real photos are not "
                f"validated.** {NOT_A_DEVICE}")
    if idrid:
        results = real_data_results(configs)
        on_test = f"; on IDRiD's test photos: {results}" if results else ""
        return (f"**The models on this page ({', '.join(idrid)}) were trained on photos of one camera from one "
                f"hospital in India (IDRiD){on_test}. "
                f"Other cameras, populations and image quality were not validated.** {NOT_A_DEVICE}")
    return f"**{NOT_A_DEVICE}**"


def example_label(path: Path) -> str:
    """'Grade 0: No DR' from idrid_test_029_grade0_no_dr.jpg: a thumbnail's caption, short enough to be read
    whole (the strip's label says these are IDRiD test photos graded by its specialists)."""
    parts = path.stem.split("_")
    if parts[:2] == ["idrid", "test"] and len(parts) > 3 and parts[3].startswith("grade"):
        grade = int(parts[3][len("grade"):])
        return f"Grade {grade}: {ICDR_GRADES[grade]}"
    return path.stem


def sources(served: Sequence[ServedModel]) -> str:
    """Markdown list: each slot's model by name and registry id, with where its checkpoint came from."""
    return "\n".join(f"- **{s.predictor.config.display_name}** (`{s.predictor.name}`): "
                     f"{'⚠️ ' if s.fallback else ''}{s.status}" for s in served)


def image_checks(served: Sequence[ServedModel], learned_check: str = "") -> str:
    """Markdown list: the learned fundus-versus-everyday check every upload passes (`learned_check`, one line),
    then for each served model whether the image check adds its own feature score to the rules."""
    lines = [f"- Every upload: {learned_check}"] if learned_check else []
    lines += [f"- {s.predictor.config.display_name}: {describe_feature_score(s.feature_score)}" for s in served]
    return "\n".join(lines)


def tta_label(configs: Sequence[CheckpointConfig]) -> str:
    """The test-time augmentation checkbox's label, naming the models whose checkpoints average eight views
    anyway (for them the box changes nothing)."""
    label = "Test-time augmentation: grade 8 flips/rotations and show how much they disagree (up to 8x slower)"
    always = [c.display_name for c in configs if c.test_time_views > 1]
    return label + (f"; {' and '.join(always)} always {'does' if len(always) == 1 else 'do'}" if always else "")


def about(served: Sequence[ServedModel], learned_check: str = "") -> str:
    """The About tab: what the models are, the ICDR grades, where each checkpoint came from, the model cards."""
    configs = [model.predictor.config for model in served]
    if any(c.trained_on_idrid for c in configs):
        results = real_data_results(configs)
        on_test = f"On IDRiD's 103 test photos: {results}. " if results else ""
        what = (f"{NOT_A_DEVICE} The models were trained on IDRiD's training photos (a part of them held out to "
                f"choose epochs and thresholds): {IDRID_CAMERA}, graded by retina specialists. {on_test}Other "
                f"cameras, populations and image quality were not validated; the model cards below give every "
                f"number with its data. Example photos: {IDRID_ATTRIBUTION}")
    else:
        what = (f"{NOT_A_DEVICE} The demo models were trained on synthetic fundus images made by this project's "
                f"generator; how they behave on real photographs is unknown.")
    sections = [f"## What this is\n\n{what}", "## ICDR grades\n\n" + grades_table(),
                "## Models served\n\n" + sources(served) + "\n\n" + image_checks(served, learned_check)]
    for model in served:
        card = model_card(model.predictor.config)
        body = card.split("\n---\n", 1)[1] if card.startswith("---") else card
        sections.append(f"## Model card: {model.predictor.config.display_name} (`{model.predictor.name}`)\n\n"
                        + body.replace("\n# ", "\n### "))
    return "\n\n".join(sections)


def reading(config: CheckpointConfig, lesion_cell_px: float | None = None) -> ModelReading:
    """What 'How to read this' says of one checkpoint: its views, calibration, thresholds and how they were chosen,
    and (`lesion_cell_px`, the predictor's) how fine its lesion map is."""
    calibration = config.provenance.get("calibration_choice") or {}
    threshold = config.provenance.get("referable_threshold_choice") or {}
    rule = f"{threshold['rule'].removeprefix('the ')} on {threshold['data']}" if threshold else None
    return ModelReading(config.display_name, config.test_time_views,
                        calibration.get("data", "validation photos") if config.calibration else None,
                        config.referable_threshold, rule, config.dme_threshold if config.heads else None,
                        lesion_cell_px if config.heads else None, config.heads.get("lesion_evidence_weight"))


def lesion_head_missing(model_name: str) -> str:
    """The refusal when a lesion map is asked of a model without a lesion head."""
    return f"{model_name} has no lesion head, so it has no lesion map; choose a heat map method"


def label_value(analysis: Analysis) -> dict[str, float]:
    """gr.Label value: every class with its probability."""
    return dict(analysis.prediction.probabilities)


# The heat-map choice that shows a three-head model's lesion map instead of a CAM.
LESION_MAP = "lesions"
LESION_MAP_LABEL = "Lesion map (models with a lesion head)"
LESION_NAMES = {"microaneurysm": "Microaneurysms", "haemorrhage": "Haemorrhages", "hard_exudate": "Hard exudates",
                "soft_exudate": "Soft exudates (cotton-wool spots)"}


def dme_value(analysis: Analysis) -> dict[str, float] | None:
    """gr.Label value of the macular oedema risk, or None for a model without a DME head."""
    return dict(analysis.prediction.dme_probabilities) or None


def lesion_legend() -> str:
    """HTML legend of the lesion map's colours."""
    swatch = ('<span style="display:inline-block;width:0.9em;height:0.9em;background:rgb{};'
              'border:1px solid #444;margin:0 0.3em 0 0.8em;vertical-align:middle"></span>{}')
    return "Lesion map: " + "".join(swatch.format(LESION_COLOURS[k], v) for k, v in LESION_NAMES.items())


def overlay_pair(analysis: Analysis, opacity: float, show_lesions: bool = False) -> tuple[Image.Image, Image.Image]:
    """(what the model saw, the same with the CAM, or with `show_lesions` the lesion map, over it), equal sizes
    for an image slider."""
    if show_lesions and analysis.lesion_maps is not None:
        return analysis.model_view, lesion_overlay(analysis.model_view, analysis.lesion_maps, opacity)
    if analysis.heatmap is None:
        return analysis.model_view, analysis.model_view
    return analysis.model_view, overlay(analysis.model_view, analysis.heatmap, opacity)


def shared_view_overlays(view: Image.Image, analyses: Sequence[Analysis], opacity: float,
                         show_lesions: bool = False) -> list[Image.Image]:
    """Each analysis's heat map (or lesion map, with `show_lesions`) over the same picture `view`, so maps of
    models with different input sizes are drawn at one size over one view of the photo and can be compared
    point by point."""
    drawn = []
    for analysis in analyses:
        if show_lesions and analysis.lesion_maps is not None:
            maps = {k: cv2.resize(v, view.size, interpolation=cv2.INTER_LINEAR)
                    for k, v in analysis.lesion_maps.items()}
            drawn.append(lesion_overlay(view, maps, opacity))
            continue
        if analysis.heatmap is None:
            drawn.append(view)
            continue
        heatmap = cv2.resize(analysis.heatmap.astype(np.float32), view.size, interpolation=cv2.INTER_LINEAR)
        drawn.append(overlay(view, heatmap, opacity))
    return drawn


def preview(image: Image.Image) -> Image.Image:
    """A display copy of the upload (the models get the file itself, through the gate)."""
    shown = image.copy()
    shown.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.BICUBIC)
    return shown


def refused_note(reason: str) -> str:
    """The line under an upload the image check refused before anything else could be read from it."""
    return f"**Image check: refused.** {reason} It will not be graded."


def preview_note(outcome: str, reason: str) -> str:
    """One line under the preview: what the image check says before anything is graded."""
    if outcome == "accepted":
        return f"Image check: {OUTCOME_WORDS[outcome]}. Press the button to grade it."
    if outcome == "refused":
        return refused_note(reason)
    return f"**Image check: {OUTCOME_WORDS[outcome]}.** {reason}"


@dataclass(frozen=True)
class ModelReading:
    """What a reader needs to know about one served model to read its numbers."""

    name: str
    views: int                         # symmetric views its probabilities are the mean of
    calibrated_on: str | None          # the photos its calibration was fitted on; None: plain softmax
    threshold: float
    threshold_rule: str | None         # how the threshold was chosen, e.g. "... sensitivity >= 0.9 on ..."
    dme_threshold: float | None = None  # three-head models: the threshold on P(DME risk 2)
    lesion_cell_px: float | None = None  # three-head models: one lesion-map cell's side in model-input pixels
    lesion_evidence_weight: float | None = None  # how much the lesion map's own reading counts in the probabilities


def how_to_read(models: Sequence[ModelReading]) -> str:
    """Markdown: what the probabilities, the referral line and the heat map do and do not mean."""
    def probabilities(m: ModelReading) -> str:
        views = (f"the mean over {m.views} flips and rotations of the photo" if m.views > 1
                 else "one view of the photo")
        calibration = f", calibrated on {m.calibrated_on}" if m.calibrated_on else ""
        evidence = (f", {m.lesion_evidence_weight:.0%} of the weight on what its lesion map shows (how many lesions "
                    f"of each type, how widely spread over the four quadrants, how near the centre) and "
                    f"{1 - m.lesion_evidence_weight:.0%} on the whole photo's features" if m.lesion_evidence_weight
                    else "")
        return f"{m.name}: {views}{calibration}{evidence}"

    def threshold(m: ModelReading) -> str:
        return f"{m.name} {m.threshold:.0%}" + (f" ({m.threshold_rule})" if m.threshold_rule else "")

    averaged = any(m.views > 1 for m in models)
    heads = [m for m in models if m.dme_threshold is not None]
    cells = "; ".join(f"{m.name} {m.lesion_cell_px:.3g} pixels" for m in heads if m.lesion_cell_px is not None)
    extra = [] if not heads else [
        "- **Macular oedema risk (DME)**: IDRiD's second label, from the same photo: risk 0 no hard exudates, risk "
        "1 exudates further than one disc diameter from the centre of the macula, risk 2 within one disc diameter "
        "(referable). The photo is *referred* when P(grade 2 or worse) or P(DME risk 2) reaches its threshold ("
        + "; ".join(f"{m.name} {m.dme_threshold:.0%} for DME risk 2" for m in heads) + "), and the verdict says "
        "which reason applies.",
        "- **Lesion map** (pick it as the heat map): where the model's lesion head, trained on the pixel masks "
        "IDRiD drew on a few dozen training photos, places microaneurysms, haemorrhages, hard and soft exudates, "
        "one colour per type, strong where its probability reaches 50%, faint from 25%. "
        + (f"Its cells are {cells} of the model input, so lesions smaller than a cell are shown as blocks; "
           if cells else "") + "an empty map is not proof that the retina is healthy.",
    ]
    return "\n".join([
        "- **Probabilities**: how strongly the model matches this one photo to each ICDR grade, learned from its "
        "training photos (" + "; ".join(probabilities(m) for m in models) + "). They are not the chance that the "
        "patient has the disease, and they are no better than the photo: a blurred, dark or unusual photo, or a "
        "camera the model never saw, makes them less reliable without the numbers saying so.",
        "- **Referral line**: *Referable* when P(grade 2 or worse), the sum of grades 2 to 4, reaches the "
        "threshold: " + "; ".join(threshold(m) for m in models) + ". Lowering it refers more eyes (fewer missed, "
        "more false alarms). It is a screening cut-off, not a diagnosis. The grade named under the decision agrees "
        "with it: the most probable of grades 2-4 for a referred photo, of grades 0-1 otherwise (likewise DME risk "
        "2 exactly when its threshold is reached), so with a low threshold it can be a less probable grade than "
        "the top bar, and the line then says which grade is the most probable.",
        "- **Heat map**: where the model found evidence for the grade it explains, over the photo as the model "
        "received it (cropped to the field of view)" + (", computed on that one view even where the probabilities "
                                                        "average several" if averaged else "") + ". It does not "
        "outline lesions or say why; a hot spot on healthy-looking retina is a reason for doubt, not a finding.",
        *extra,
    ])


def percent_against(probability: float, threshold: float) -> str:
    """'23% ≥ threshold 22%': the probability beside its threshold, with as many decimals as it takes for the two
    numbers to read as different when they are (13.4% and 13.0%, not 13% and 13%), and the sign that matches
    the decision (a probability that reaches its threshold refers)."""
    sign = "≥" if probability >= threshold else "<"
    for decimals in (0, 1, 2):
        shown = (f"{probability:.{decimals}%}", f"{threshold:.{decimals}%}")
        if shown[0] != shown[1] or decimals == 2:
            return f"{shown[0]} {sign} threshold {shown[1]}"
    raise AssertionError("unreachable")


def referral_lines(prediction: Prediction, threshold: float, dme_threshold: float | None) -> list[str]:
    """One line per referral criterion: its probability beside its threshold, and what reaching it means."""
    lines = []
    if prediction.referable_probability is not None:
        reached = prediction.referable_probability >= threshold
        lines.append(f"P(grade ≥ 2) {percent_against(prediction.referable_probability, threshold)}"
                     + (": refer for retinopathy" if reached else ""))
    if prediction.dme_referable_probability is not None and dme_threshold is not None:
        reached = prediction.dme_referable_probability >= dme_threshold
        lines.append(f"P(DME risk 2) {percent_against(prediction.dme_referable_probability, dme_threshold)}"
                     + (": refer for macular oedema" if reached else ""))
    return lines


def decision_heading(prediction: Prediction) -> str:
    """'Refer: retinopathy and macular oedema', 'Do not refer', or for a model that cannot tell referable disease,
    its most likely class."""
    if prediction.referred is None:
        return f"Most likely: {prediction.grade_name}"
    if not prediction.referred:
        return "Do not refer"
    reasons = prediction.referral_reasons or ("retinopathy",)
    return "Refer: " + " and ".join(reasons)


def named_grade(prediction: Prediction) -> str:
    """'Grade: No DR (ICDR grade 0, 80%); DME risk: No DME risk (97%)': the grade and risk that agree with the
    decision above them (the most probable on the referral's side of each threshold). Where that is not the single
    most probable one, which a screening threshold below 50% makes possible, the line says which is."""
    p = prediction.probabilities
    text = f"Grade: {prediction.grade_name} ({_grade_label(prediction.grade_name)}, {p[prediction.grade_name]:.0%})"
    top = max(p, key=p.get)
    if top != prediction.grade_name:
        side = "2-4, as P(grade ≥ 2) reaches" if prediction.referable else "0-1, as P(grade ≥ 2) is under"
        text += f", the most probable of grades {side} its threshold (most probable grade: {top}, {p[top]:.0%})"
    if prediction.dme_risk_name is not None:
        shown = prediction.dme_risk_name
        text += f"; DME risk: {shown} ({prediction.dme_probabilities[shown]:.0%})"
    return text


def decision(prediction: Prediction, model_name: str, threshold: float, dme_threshold: float | None) -> str:
    """Markdown, first under the photo: the referral decision and its reason, each probability beside its
    threshold, then the grade and DME risk that agree with it (`named_grade`), never the heading."""
    lines = [f"### {model_name}: {decision_heading(prediction)}"]
    lines += [f"- {line}" for line in referral_lines(prediction, threshold, dme_threshold)]
    return "\n".join(lines) + "\n\n" + named_grade(prediction) + "."


def refused_decision(reason: str) -> str:
    """The decision panel when the image check refuses the photo: not graded, and why."""
    return f"### Not graded: the image check refused this photo\n{reason}"


def answered_by(source: Mapping[str, object]) -> str:
    """'Answered by MedMamba-T: org/name @ 1a2b3c4' (+ a fallback or untrained warning)."""
    where = str(source.get("checkpoint", "?"))
    if source.get("revision"):
        where += f" @ {str(source['revision'])[:7]}"
    text = f"Answered by {source.get('model')}: `{where}`"
    if not source.get("trained", True):
        return text + " (**an untrained model: its answers are meaningless**)"
    if source.get("fallback"):
        return text + " (**a fallback**: the configured checkpoint could not be served)"
    return text


def explanation(analysis: Analysis, class_names: Sequence[str], show_lesions: bool = False) -> str:
    """Markdown: what the map shows, the test-time spread and the time, below the maps."""
    prediction = analysis.prediction
    lines = []
    if analysis.cam_method is None and analysis.lesion_maps is not None and show_lesions:
        lines.append("Lesion map: where the lesion head places each lesion type (see the legend).")
    elif analysis.cam_method in CLASS_INDEPENDENT_METHODS:
        lines.append(f"Heat map: {CAM_METHOD_NAMES[analysis.cam_method]}: where the model's features respond most "
                     f"strongly. It is the same whichever grade is asked for, so it does not show evidence for "
                     f"one grade over another.")
    elif analysis.cam_method is not None:
        lines.append(f"Heat map: {CAM_METHOD_NAMES[analysis.cam_method]} for "
                     f"\"{class_names[analysis.cam_target]}\": where the model found evidence for that class, "
                     f"not why.")
    if analysis.spread is not None:
        top = max(analysis.spread.values())
        lines.append(f"Test-time augmentation over {analysis.views} flips/rotations: probabilities vary by up to "
                     f"±{top:.0%} (standard deviation){' — an unstable answer' if top > 0.1 else ''}.")
    lines.append(f"Time: {prediction.seconds * 1000:.0f} ms.")
    return "\n\n".join(lines)


def structured_result(analysis: Analysis, threshold: float, dme_threshold: float | None,
                      check: Mapping[str, object], source: Mapping[str, object]) -> dict:
    """One model's answer as plain JSON for the API and MCP tools: grades with probabilities, DME risk, the
    referral decision with its reasons and thresholds, the image check's outcome and which checkpoint answered."""
    prediction = analysis.prediction
    return {
        "model": source.get("model"),
        "decision": decision_heading(prediction),
        "referred": prediction.referred,
        "referral_reasons": list(prediction.referral_reasons),
        "referable_probability": _rounded(prediction.referable_probability),
        "referable_threshold": round(float(threshold), 4),
        "dme_referable_probability": _rounded(prediction.dme_referable_probability),
        "dme_threshold": None if prediction.dme_referable_probability is None else _rounded(dme_threshold),
        "grade": prediction.grade_name,
        "most_likely_grade": max(prediction.probabilities, key=prediction.probabilities.get),
        "dme_risk": prediction.dme_risk_name,
        "grade_probabilities": {k: round(v, 4) for k, v in prediction.probabilities.items()},
        "dme_probabilities": {k: round(v, 4) for k, v in prediction.dme_probabilities.items()},
        "image_check": dict(check),
        "answered_by": dict(source),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def probability_frame(name: str, analysis: Analysis) -> pd.DataFrame:
    """One model's grade probabilities as a table for gr.BarPlot (drawn by the browser): grade, probability."""
    names = list(analysis.prediction.probabilities)
    short = [f"{i} {SHORT_GRADES.get(c, c)}" if len(names) == len(ICDR_GRADES) else c for i, c in enumerate(names)]
    return pd.DataFrame({"grade": short, "probability": [analysis.prediction.probabilities[c] for c in names],
                         "model": name})


SHORT_GRADES = {"No DR": "No DR", "Mild NPDR": "Mild", "Moderate NPDR": "Moderate", "Severe NPDR": "Severe",
                "Proliferative DR": "PDR"}


def agreement(first: Analysis, second: Analysis, names: tuple[str, str]) -> str:
    """Markdown line: do the two models agree on the grade and the referral, and how far apart are they?"""
    a, b = first.prediction, second.prediction
    same_grade = a.grade_name == b.grade_name
    parts = [f"**{'Same grade' if same_grade else 'Different grades'}**: {names[0]} says {a.grade_name}, "
             f"{names[1]} says {b.grade_name}."]
    if a.referred is not None and b.referred is not None:
        parts.append(f"**{'Same referral' if a.referred == b.referred else 'Different referral'}**: "
                     f"{names[0]} {'refers' if a.referred else 'does not refer'}, "
                     f"{names[1]} {'refers' if b.referred else 'does not refer'}.")
    shared = [c for c in a.probabilities if c in b.probabilities]
    if shared:
        gap_class = max(shared, key=lambda c: abs(a.probabilities[c] - b.probabilities[c]))
        gap = abs(a.probabilities[gap_class] - b.probabilities[gap_class])
        parts.append(f"Largest probability difference: {gap:.0%} ({gap_class}).")
    parts.append(f"Time: {names[0]} {a.seconds * 1000:.0f} ms, {names[1]} {b.seconds * 1000:.0f} ms.")
    return " ".join(parts)


def gate_note(outcome: str, reason: str, warnings: Sequence[str]) -> str:
    """Markdown beside the grade: the image check's outcome and reason, and the warnings to heed (the values
    behind them are in `check_details`)."""
    lines = [f"**Image check: {OUTCOME_WORDS[outcome]}.** {reason}"]
    lines += [f"- Warning: {warning}" for warning in warnings if warning != reason]
    return "\n\n".join(lines)


def check_details(rules: str, by_model: Sequence[tuple[str, Assessment]]) -> str:
    """Markdown for the closed "Image check details" section: the values the rules measured, then each model's
    feature distance to its training photos with the threshold it is read against (or that its checkpoint
    stores no score, so only the rules decided)."""
    lines = [f"**Measured by the rules:** {rules}"]
    for name, assessment in by_model:
        measured = assessment.measurements
        if "feature_distance" in measured:
            far = measured["feature_distance"] > measured["feature_threshold"]
            lines.append(f"- {name}: feature distance {measured['feature_distance']:.2f} to its training photos "
                         f"({'above' if far else 'within'} its threshold {measured['feature_threshold']:.2f}; "
                         f"above it a photo is unlike anything the model learned from).")
        else:
            lines.append(f"- {name}: its checkpoint stores no feature score; the rules alone decided.")
    return "\n".join(lines)


def batch_summary(results: Sequence[BatchItem], models: Sequence[tuple[str, str]]) -> str:
    """Markdown: how many images were graded, warned and refused, then one row per image with the image check's
    outcome and reason and, for every model (`models`: (key of its predictions, the name people read)), the grade
    it names and its referral decision with the reason, as the Grade tab words them."""
    graded = sum(1 for r in results if r.predictions)
    refused = sum(1 for r in results if r.outcome == "refused")
    warned = sum(1 for r in results if r.outcome == "warned")
    referred = {shown: sum(1 for r in results if key in r.predictions and r.predictions[key].referred)
                for key, shown in models}
    head = (f"Graded {graded} of {len(results)} images" + (f"; {refused} refused" if refused else "")
            + (f"; {warned} graded with a warning" if warned else "") + ". Referred: "
            + ", ".join(f"{shown} {count}" for shown, count in referred.items())
            + ". Outcome, reason, probabilities and measured values per image are in the CSV.")
    columns = ["file", "image check", "reason"] + [f"{shown}: {what}" for _, shown in models
                                                    for what in ("grade", "decision")]
    rows = []
    for r in results:
        cells = [_cell(r.name), OUTCOME_WORDS.get(r.outcome, r.outcome), _cell(r.reason)]
        for key, _ in models:
            prediction = r.predictions.get(key)
            cells += ([prediction.grade_name, decision_heading(prediction)] if prediction is not None else ["", ""])
        rows.append("| " + " | ".join(cells) + " |")
    table = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n" + "\n".join(rows)
    return "\n\n".join([head, table])


def batch_gallery(results: Sequence[BatchItem], model: tuple[str, str], count: int = 4) -> list[tuple]:
    """(thumbnail, caption) of the photos `model` (key, name) is surest and least sure of, by its highest grade
    probability, each caption giving that probability and the decision, so a 34% answer is not called sure."""
    key, shown = model
    graded = sorted((r for r in results if key in r.predictions and r.thumbnail is not None),
                    key=lambda r: max(r.predictions[key].probabilities.values()), reverse=True)
    chosen = graded[:count] + [r for r in graded[::-1][:count] if r not in graded[:count]]

    def caption(r: BatchItem) -> str:
        p = r.predictions[key]
        top = max(p.probabilities, key=p.probabilities.get)
        surest = (f"({p.probabilities[top]:.0%})" if top == p.grade_name
                  else f"(most probable: {top}, {p.probabilities[top]:.0%})")
        return (f"{r.name}: {shown} {p.grade_name} {surest}; "
                f"{decision_heading(p)}")
    return [(r.thumbnail, caption(r)) for r in chosen]


def side_by_side(images: Sequence[Image.Image]) -> Image.Image:
    """The images in one row, for a tool that returns one picture."""
    width = sum(i.width for i in images)
    canvas = Image.new("RGB", (width, max(i.height for i in images)))
    x = 0
    for image in images:
        canvas.paste(image.convert("RGB"), (x, 0))
        x += image.width
    return canvas


def _cell(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, one line."""
    return text.replace("|", "\\|").replace("\n", " ")


def grades_table() -> str:
    rows = "\n".join(f"| {grade} | {name} | {meaning} |" for grade, name, meaning in ICDR_MEANINGS)
    return ("| grade | ICDR name | what a grader sees |\n|---|---|---|\n" + rows
            + "\n\n*Referable* means grade 2 or worse: such eyes are referred to an ophthalmologist.")


def _grade_label(name: str) -> str:
    for grade, icdr_name, _ in ICDR_MEANINGS:
        if icdr_name == name:
            return f"ICDR grade {grade}"
    return "screening class"
