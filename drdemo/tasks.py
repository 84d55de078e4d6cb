"""What a DR model is asked: the ICDR grades, the tasks trained on them, and the screening probabilities
a task's class probabilities define.

    icdr5       the five ICDR grades, one class each
    binary      No DR / DR: any DR, grade >= 1 (the MedMamba paper's DR task)
    referable   Non-referable / Referable: grade >= 2, the screening question

The one home of these facts: the checkpoint format, the data loaders, the synthetic generator,
the metrics, the predictor and the page all read them from here. numpy only.
"""

from __future__ import annotations

import numpy as np

from drdemo.errors import DrdemoError

# The ICDR grades a DR model predicts, in class-index order.
ICDR_GRADES = ("No DR", "Mild NPDR", "Moderate NPDR", "Severe NPDR", "Proliferative DR")
NUM_GRADES = len(ICDR_GRADES)  # ICDR 0..4
# IDRiD's risk of diabetic macular oedema, in class-index order: risk 2 (hard exudates within one disc
# diameter of the macula centre) is referable.
DME_RISKS = ("No DME risk", "DME risk 1: exudates away from the macula", "DME risk 2: exudates near the macula")
REFERABLE_DME_RISK = 2
# The lesion types a three-head model maps, in channel order (IDRiD's four lesion masks).
LESION_TYPES = ("microaneurysm", "haemorrhage", "hard_exudate", "soft_exudate")
# task -> its class names, in class-index order.
TASK_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "icdr5": ICDR_GRADES,
    "binary": ("No DR", "DR"),                      # any DR, grade >= 1 (the MedMamba paper's DR task)
    "referable": ("Non-referable", "Referable"),    # grade >= 2
}
# task -> the lowest grade counted as positive (None: the grade itself is the class).
TASK_THRESHOLDS: dict[str, int | None] = {"icdr5": None, "binary": 1, "referable": 2}
# Lowest ICDR grade that counts as positive for each derived screening question.
DERIVED_MIN_GRADE = {"any_dr": 1, "referable": 2}


class TaskError(DrdemoError, ValueError):
    """A task that does not exist; the message lists those that do."""


def check_task(task: str) -> None:
    if task not in TASK_CLASS_NAMES:
        raise TaskError(f"unknown task {task!r}; choose from {', '.join(TASK_CLASS_NAMES)}")


def num_classes(task: str) -> int:
    """How many classes a task has (5 for icdr5, 2 otherwise)."""
    check_task(task)
    return len(TASK_CLASS_NAMES[task])


def task_target(grade: int, task: str) -> int:
    """The class index of an ICDR grade for a task: icdr5 -> the grade, binary -> grade >= 1, referable -> >= 2."""
    check_task(task)
    threshold = TASK_THRESHOLDS[task]
    return int(grade) if threshold is None else int(grade >= threshold)


def task_targets(grades: np.ndarray, task: str) -> np.ndarray:
    """Class index of each ICDR grade under `task` (vectorised `task_target`), as int64."""
    check_task(task)
    grades = np.asarray(grades)
    threshold = TASK_THRESHOLDS[task]
    return grades.astype(np.int64) if threshold is None else (grades >= threshold).astype(np.int64)


def task_probabilities(probabilities: np.ndarray, task: str) -> dict[str, np.ndarray]:
    """The screening probabilities a task's (n, C) class probabilities define.

    icdr5: any_dr = 1 - P(No DR) (as a sum of grades 1-4, so it stays in [0, 1]) and
    referable = P(2) + P(3) + P(4). binary (No DR, DR): any_dr only, since it cannot tell grade 1
    from grade 2. referable (Non-referable, Referable): referable only.
    """
    check_task(task)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[1] != num_classes(task):
        raise TaskError(f"task {task!r} needs probabilities of shape (n, {num_classes(task)}), "
                        f"got {probabilities.shape}")
    if task == "icdr5":
        return {"any_dr": probabilities[:, DERIVED_MIN_GRADE["any_dr"]:].sum(axis=1),
                "referable": probabilities[:, DERIVED_MIN_GRADE["referable"]:].sum(axis=1)}
    question = "any_dr" if task == "binary" else "referable"
    return {question: probabilities[:, 1].copy()}


def decided_classes(probabilities: np.ndarray, task: str, referable_threshold: float = 0.5) -> np.ndarray:
    """The class each row of (n, C) probabilities names, in agreement with the referral at `referable_threshold`:
    for icdr5 the most probable referable grade (2-4) where P(grade >= 2) reaches it, else the more probable of
    grades 0 and 1; for referable, Referable exactly where P(Referable) reaches it; for binary the most probable
    class. A page (or a report) therefore never names a referable grade for a photo it does not refer, or the
    reverse, which the most probable grade alone does whenever the threshold is not 0.5."""
    check_task(task)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if task == "binary":
        return probabilities.argmax(axis=1)
    refer = task_probabilities(probabilities, task)["referable"] >= referable_threshold
    if task == "referable":
        return refer.astype(np.int64)
    first = DERIVED_MIN_GRADE["referable"]
    return np.where(refer, first + probabilities[:, first:].argmax(axis=1), probabilities[:, :first].argmax(axis=1))


def decided_dme_risks(probabilities: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The DME risk each row of (n, 3) probabilities names, in agreement with the DME referral: risk 2 where
    P(risk 2) reaches `threshold`, else the more probable of risks 0 and 1."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    refer = probabilities[:, REFERABLE_DME_RISK] >= threshold
    return np.where(refer, REFERABLE_DME_RISK, probabilities[:, :REFERABLE_DME_RISK].argmax(axis=1))


def named_classes(probabilities: np.ndarray, task: str | None, referable_threshold: float | None) -> np.ndarray:
    """The class each row of (n, C) probabilities names: `decided_classes` where a task and threshold are known,
    the most probable class otherwise."""
    if task is None or referable_threshold is None:
        return np.asarray(probabilities).argmax(axis=1)
    return decided_classes(probabilities, task, referable_threshold)


def named_class(probabilities: np.ndarray, task: str | None, referable_threshold: float | None) -> int:
    """`named_classes` of one image's probabilities."""
    return int(named_classes(np.asarray(probabilities)[None], task, referable_threshold)[0])


def named_dme_risks(probabilities: np.ndarray, threshold: float | None) -> np.ndarray:
    """The DME risk each row of (n, 3) probabilities names: `decided_dme_risks` where a threshold is known, the
    most probable risk otherwise."""
    probabilities = np.asarray(probabilities)
    return probabilities.argmax(axis=1) if threshold is None else decided_dme_risks(probabilities, threshold)
