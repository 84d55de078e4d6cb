"""Analyses -> what the page shows: label values, verdict text, overlay images, agreement lines.

Plain functions of plain values (no Gradio, no tensors), so the wording is tested on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from drdemo.batch import BatchItem
from drdemo.explain import CAM_METHOD_NAMES, CLASS_INDEPENDENT_METHODS, overlay
from drdemo.gate import OUTCOME_WORDS
from drdemo.predictor import Analysis

ICDR_MEANINGS = (
    ("0", "No DR", "No abnormalities."),
    ("1", "Mild NPDR", "Microaneurysms only."),
    ("2", "Moderate NPDR", "More than microaneurysms but less than severe NPDR: dot/blot haemorrhages, hard "
                           "exudates or cotton-wool spots."),
    ("3", "Severe NPDR", "Any of: more than 20 intraretinal haemorrhages in each of 4 quadrants, venous beading in "
                         "2 or more quadrants, IRMA in 1 or more quadrant; no signs of proliferation."),
    ("4", "Proliferative DR", "Neovascularisation and/or vitreous or pre-retinal haemorrhage."),
)


def label_value(analysis: Analysis) -> dict[str, float]:
    """gr.Label value: every class with its probability."""
    return dict(analysis.prediction.probabilities)


def overlay_pair(analysis: Analysis, opacity: float) -> tuple[Image.Image, Image.Image]:
    """(what the model saw, the same with the CAM over it), equal sizes for an image slider."""
    if analysis.heatmap is None:
        return analysis.model_view, analysis.model_view
    return analysis.model_view, overlay(analysis.model_view, analysis.heatmap, opacity)


def verdict(analysis: Analysis, model_name: str, class_names: Sequence[str], threshold: float) -> str:
    """Markdown: the grade with its ICDR name, the referral verdict, the CAM and the uncertainty."""
    prediction = analysis.prediction
    confidence = prediction.probabilities[prediction.grade_name]
    lines = [f"**{model_name}: {prediction.grade_name}** ({_grade_label(prediction.grade_name)}, "
             f"probability {confidence:.0%})"]
    if prediction.referable_probability is not None:
        decision = "**Referable**" if prediction.referable else "Not referable"
        lines.append(f"{decision}: P(grade 2 or worse) = {prediction.referable_probability:.0%}, "
                     f"threshold {threshold:.0%}.")
    if analysis.cam_method in CLASS_INDEPENDENT_METHODS:
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


def agreement(first: Analysis, second: Analysis, names: tuple[str, str]) -> str:
    """Markdown line: do the two models agree on the grade and the referral, and how far apart are they?"""
    a, b = first.prediction, second.prediction
    same_grade = a.grade_name == b.grade_name
    parts = [f"**{'Same grade' if same_grade else 'Different grades'}**: {names[0]} says {a.grade_name}, "
             f"{names[1]} says {b.grade_name}."]
    if a.referable is not None and b.referable is not None:
        parts.append(f"**{'Same referral' if a.referable == b.referable else 'Different referral'}**: "
                     f"{names[0]} {'refers' if a.referable else 'does not refer'}, "
                     f"{names[1]} {'refers' if b.referable else 'does not refer'}.")
    shared = [c for c in a.probabilities if c in b.probabilities]
    if shared:
        gap_class = max(shared, key=lambda c: abs(a.probabilities[c] - b.probabilities[c]))
        gap = abs(a.probabilities[gap_class] - b.probabilities[gap_class])
        parts.append(f"Largest probability difference: {gap:.0%} ({gap_class}).")
    parts.append(f"Time: {names[0]} {a.seconds * 1000:.0f} ms, {names[1]} {b.seconds * 1000:.0f} ms.")
    return " ".join(parts)


def gate_note(outcome: str, reason: str, warnings: Sequence[str], details: str) -> str:
    """Markdown: the image check's outcome and reason, the warnings to heed, and the values it measured."""
    lines = [f"**Image check: {OUTCOME_WORDS[outcome]}.** {reason}"]
    lines += [f"- Warning: {warning}" for warning in warnings if warning != reason]
    lines.append(f"*Measured:* {details}")
    return "\n\n".join(lines)


def batch_summary(results: Sequence[BatchItem], model: str) -> str:
    """Markdown: how many images were graded, warned and refused, then each image's outcome and reason."""
    graded = sum(1 for r in results if r.predictions)
    refused = sum(1 for r in results if r.outcome == "refused")
    warned = sum(1 for r in results if r.outcome == "warned")
    head = (f"Graded {graded} of {len(results)} images" + (f"; {refused} refused" if refused else "")
            + (f"; {warned} graded with a warning" if warned else "")
            + f" (outcome, reason and measured values per image in the CSV). Gallery: the most and least "
              f"confident answers of {model}.")
    rows = [f"| {_cell(r.name)} | {OUTCOME_WORDS.get(r.outcome, r.outcome)} | {_cell(r.reason)} | "
            f"{r.predictions[model].grade_name if model in r.predictions else ''} |" for r in results]
    return "\n\n".join([head, f"| file | image check | reason | {model} grade |\n|---|---|---|---|\n"
                          + "\n".join(rows)])


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
