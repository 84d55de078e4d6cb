"""Grading metrics: what a DR model is judged by, from true ICDR grades and class probabilities.

Quadratic weighted kappa (QWK) is the headline number of DR grading (the EyePACS competition's
metric): a grade 4 called 0 costs sixteen times a grade 1 called 0. Screening asks a simpler
question, refer or not (ICDR grade >= 2), answered by sensitivity, specificity and ROC AUC of
the referable probability; any-DR (grade >= 1) likewise where the task gives it.

Everything returned is a plain Python int, float, str, list, dict or None, so it goes straight
into json.dumps. The training loop calls `grading_metrics` every epoch: numpy and scikit-learn
only, no plotting, no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score

from drdemo import tasks
from drdemo.errors import DrdemoError
from drdemo.tasks import (
    DERIVED_MIN_GRADE,
    DME_RISKS,
    NUM_GRADES,
    REFERABLE_DME_RISK,
    TASK_CLASS_NAMES,
    decided_classes,
    named_classes,
    named_dme_risks,
    task_targets,
)


class MetricsError(DrdemoError, ValueError):
    """Inputs that cannot be scored (shapes, grades or probabilities); the message says which."""


def quadratic_weighted_kappa(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray,
                             num_classes: int) -> float:
    """Cohen's kappa with quadratic weights over classes 0..num_classes-1.

    Degenerate case: when every label and every prediction is one and the same class, observed
    and chance disagreement are both zero and kappa is 0/0. We return 1.0 (the raters agree on
    every sample) rather than NaN, so the value stays a JSON number and a model that matches
    every label never scores below one that does not. If the labels are all one class but the
    predictions vary, kappa is defined (0 or below) and returned as is.
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise MetricsError(f"labels and predictions must be 1-D and the same length, got shapes "
                           f"{labels.shape} and {predictions.shape}")
    if labels.size == 0:
        raise MetricsError("cannot score zero samples")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.min() < 0 or values.max() >= num_classes:
            raise MetricsError(f"{name} must be class indices in 0..{num_classes - 1}, got values "
                               f"{values.min()}..{values.max()}")
    if np.unique(np.concatenate([labels, predictions])).size == 1:
        return 1.0
    return float(cohen_kappa_score(labels, predictions, weights="quadratic", labels=list(range(num_classes))))


def task_probabilities(probabilities: np.ndarray, task: str) -> dict[str, np.ndarray]:
    """drdemo.tasks.task_probabilities of probabilities checked to be scorable (shape, finite, not empty);
    every problem is a MetricsError."""
    return tasks.task_probabilities(_check_probabilities(probabilities, task), task)


def grading_metrics(grades: Sequence[int] | np.ndarray, probabilities: np.ndarray, task: str,
                    class_names: Sequence[str], referable_threshold: float = 0.5,
                    any_dr_threshold: float = 0.5) -> dict:
    """Every number we report for a model on a set of images.

    `grades` are true ICDR grades 0-4; `probabilities` are the model's (n, C) class probabilities
    for `task`. accuracy, qwk, the confusion matrix (rows = true class) and per-class recall are
    on the task's own classes (grades for icdr5, 0/1 targets otherwise), for the class the model names
    (drdemo.tasks.decided_classes at `referable_threshold`, as the page names it); most_probable_accuracy and
    most_probable_qwk score the most probable class instead. For each screening
    question the task defines (see `task_probabilities`): ROC AUC, and sensitivity/specificity
    calling positive when the probability reaches the threshold. A value that the data cannot
    define (AUC with one class present, recall of an absent class) is None, with a line in `notes`.
    """
    grades = np.asarray(grades)
    probabilities = _check_probabilities(probabilities, task)
    if grades.ndim != 1 or len(grades) != len(probabilities):
        raise MetricsError(f"grades must be 1-D with one grade per row of probabilities, got shapes {grades.shape} "
                           f"and {probabilities.shape}")
    if not np.issubdtype(grades.dtype, np.integer) or grades.min() < 0 or grades.max() >= NUM_GRADES:
        raise MetricsError(f"grades must be integer ICDR grades 0..{NUM_GRADES - 1}, got {grades.dtype} values "
                           f"{grades.min()}..{grades.max()}")
    class_names = [str(name) for name in class_names]
    if len(class_names) != probabilities.shape[1]:
        raise MetricsError(f"{len(class_names)} class names for {probabilities.shape[1]} probability columns")
    for name, value in (("referable_threshold", referable_threshold), ("any_dr_threshold", any_dr_threshold)):
        if not 0.0 < value < 1.0:
            raise MetricsError(f"{name} must be in (0, 1), got {value!r}")

    num_classes = probabilities.shape[1]
    targets = task_targets(grades, task)
    predicted = decided_classes(probabilities, task, referable_threshold)
    most_probable = probabilities.argmax(axis=1)
    notes: list[str] = []
    matrix = confusion_matrix(targets, predicted, labels=list(range(num_classes)))
    support = matrix.sum(axis=1)
    recall = {}
    for index, name in enumerate(class_names):
        recall[name] = float(matrix[index, index] / support[index]) if support[index] else None
    absent = [name for name, value in recall.items() if value is None]
    if absent:
        notes.append(f"per_class_recall: no true samples of {', '.join(absent)}")
    if np.unique(np.concatenate([targets, predicted])).size == 1:
        notes.append(f"qwk: every true and predicted class is {class_names[int(targets[0])]!r}; kappa is 0/0, "
                     f"reported as 1.0")

    result: dict = {
        "n": len(grades),
        "task": task,
        "class_names": class_names,
        "accuracy": float(np.mean(targets == predicted)),
        "qwk": quadratic_weighted_kappa(targets, predicted, num_classes),
        "most_probable_accuracy": float(np.mean(targets == most_probable)),
        "most_probable_qwk": quadratic_weighted_kappa(targets, most_probable, num_classes),
        "confusion_matrix": matrix.astype(int).tolist(),
        "per_class_recall": recall,
        "grade_counts": np.bincount(grades, minlength=NUM_GRADES).astype(int).tolist(),
    }
    thresholds = {"any_dr": any_dr_threshold, "referable": referable_threshold}
    for question, scores in task_probabilities(probabilities, task).items():
        result.update(_screening_metrics(question, grades >= DERIVED_MIN_GRADE[question], scores,
                                         thresholds[question], notes))
    result["notes"] = notes
    return result


def _screening_metrics(question: str, truth: np.ndarray, scores: np.ndarray, threshold: float,
                       notes: list[str]) -> dict:
    """AUC, sensitivity and specificity of one yes/no screening question, keys prefixed by it."""
    positives, negatives = int(truth.sum()), int((~truth).sum())
    called = scores >= threshold
    if positives and negatives:
        auc = float(roc_auc_score(truth, scores))
    else:
        auc = None
        notes.append(f"{question}_auc: only {'positive' if positives else 'negative'} samples "
                     f"(grade {'>=' if positives else '<'} {DERIVED_MIN_GRADE[question]}), ROC AUC is undefined")
    sensitivity = float((called & truth).sum() / positives) if positives else None
    specificity = float((~called & ~truth).sum() / negatives) if negatives else None
    if sensitivity is None:
        notes.append(f"{question}_sensitivity: no positive samples")
    if specificity is None:
        notes.append(f"{question}_specificity: no negative samples")
    return {f"{question}_auc": auc, f"{question}_sensitivity": sensitivity,
            f"{question}_specificity": specificity, f"{question}_threshold": float(threshold),
            f"{question}_positives": positives}


def _check_probabilities(probabilities: np.ndarray, task: str) -> np.ndarray:
    if task not in TASK_CLASS_NAMES:
        raise MetricsError(f"unknown task {task!r}; choose from {', '.join(TASK_CLASS_NAMES)}")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    expected = len(TASK_CLASS_NAMES[task])
    if probabilities.ndim != 2 or probabilities.shape[1] != expected:
        raise MetricsError(f"task {task!r} needs probabilities of shape (n, {expected}), got {probabilities.shape}")
    if len(probabilities) == 0:
        raise MetricsError("cannot score zero samples")
    if not np.isfinite(probabilities).all():
        raise MetricsError("probabilities contain NaN or inf (did training diverge?)")
    return probabilities


def dme_metrics(risks: Sequence[int] | np.ndarray, probabilities: np.ndarray, threshold: float | None = None) -> dict:
    """Risk of diabetic macular oedema: accuracy over IDRiD's three classes, QWK, the confusion matrix, and
    ROC AUC of P(risk 2) for referable macular oedema (sensitivity and specificity at `threshold` when one
    is given). The risk scored is the one the model names at `threshold` (drdemo.tasks.decided_dme_risks;
    the most probable one without a threshold), and dme_most_probable_accuracy scores the most probable.
    Photos with no DME label (-1) are left out; an empty dict when none has one."""
    risks = np.asarray(risks)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != len(DME_RISKS) or len(probabilities) != len(risks):
        raise MetricsError(f"DME probabilities must be (n, {len(DME_RISKS)}) for {len(risks)} photos, got "
                           f"{probabilities.shape}")
    known = risks >= 0
    if not known.any():
        return {}
    risks, probabilities = risks[known].astype(int), probabilities[known]
    most_probable = probabilities.argmax(axis=1)
    predicted = named_dme_risks(probabilities, threshold)
    truth = risks == REFERABLE_DME_RISK
    scores = probabilities[:, REFERABLE_DME_RISK]
    result = {"dme_n": int(known.sum()), "dme_accuracy": float(np.mean(predicted == risks)),
              "dme_most_probable_accuracy": float(np.mean(most_probable == risks)),
              "dme_qwk": quadratic_weighted_kappa(risks, predicted, len(DME_RISKS)),
              "dme_confusion_matrix": confusion_matrix(risks, predicted, labels=list(range(len(DME_RISKS)))).tolist(),
              "referable_dme_auc": float(roc_auc_score(truth, scores)) if 0 < truth.sum() < len(truth) else None}
    if threshold is not None:
        called = scores >= threshold
        result.update({"referable_dme_threshold": float(threshold),
                       "referable_dme_sensitivity": float((called & truth).sum() / truth.sum())
                       if truth.any() else None,
                       "referable_dme_specificity": float((~called & ~truth).sum() / (~truth).sum())
                       if (~truth).any() else None})
    return result


def joint_accuracy(grades: Sequence[int], grade_probabilities: np.ndarray, risks: Sequence[int],
                   dme_probabilities: np.ndarray, referable_threshold: float | None = None,
                   dme_threshold: float | None = None) -> float:
    """The IDRiD challenge's metric: the share of photos whose DR grade and DME risk are both right; the grade
    and risk named at the thresholds (drdemo.tasks.decided_classes, decided_dme_risks), the most probable ones
    where a threshold is None."""
    grades, risks = np.asarray(grades), np.asarray(risks)
    grade_probabilities, dme_probabilities = np.asarray(grade_probabilities), np.asarray(dme_probabilities)
    named_grades = named_classes(grade_probabilities, "icdr5", referable_threshold)
    return float(((named_grades == grades) & (named_dme_risks(dme_probabilities, dme_threshold) == risks)).mean())


def combined_referral_metrics(grades: Sequence[int], risks: Sequence[int], p_referable: np.ndarray,
                              p_dme: np.ndarray, referable_threshold: float, dme_threshold: float) -> dict:
    """Sensitivity and specificity of the combined referral (refer when P(grade >= 2) or P(DME risk 2) reaches
    its threshold) against the truth (grade >= 2 or DME risk 2)."""
    grades, risks = np.asarray(grades), np.asarray(risks)
    truth = (grades >= DERIVED_MIN_GRADE["referable"]) | (risks == REFERABLE_DME_RISK)
    called = (np.asarray(p_referable) >= referable_threshold) | (np.asarray(p_dme) >= dme_threshold)
    return {"combined_referral_positives": int(truth.sum()),
            "combined_referral_sensitivity": float((called & truth).sum() / truth.sum()) if truth.any() else None,
            "combined_referral_specificity": float((~called & ~truth).sum() / (~truth).sum())
            if (~truth).any() else None,
            "combined_referral_rate": float(called.mean())}
