"""Grading metrics against numbers worked out by hand on toy arrays."""

import json

import numpy as np
import pytest

from drdemo.metrics import MetricsError, grading_metrics, quadratic_weighted_kappa, task_probabilities
from drdemo.tasks import TASK_CLASS_NAMES

ICDR = TASK_CLASS_NAMES["icdr5"]

# Six eyes, one per row: true grade, then the model's five grade probabilities.
GRADES = np.array([0, 0, 1, 2, 3, 4])
PROBS = np.array([
    [0.70, 0.10, 0.10, 0.05, 0.05],  # predicted 0; referable 0.20, any DR 0.30
    [0.05, 0.55, 0.30, 0.05, 0.05],  # predicted 1; referable 0.40, any DR 0.95
    [0.10, 0.30, 0.28, 0.22, 0.10],  # predicted 1; referable 0.60, any DR 0.90
    [0.10, 0.20, 0.40, 0.10, 0.20],  # predicted 2; referable 0.70, any DR 0.90
    [0.02, 0.08, 0.20, 0.30, 0.40],  # predicted 4; referable 0.90, any DR 0.98
    [0.10, 0.35, 0.40, 0.10, 0.05],  # predicted 2; referable 0.55, any DR 0.90
])
PREDICTED = [0, 1, 1, 2, 4, 2]  # the most probable grades
CONFUSION = [  # rows: true grade, columns: predicted grade
    [1, 1, 0, 0, 0],
    [0, 1, 0, 0, 0],
    [0, 0, 1, 0, 0],
    [0, 0, 0, 0, 1],
    [0, 0, 1, 0, 0],
]
# The grades named at a referral threshold of 0.65: the last eye (P(grade >= 2) 0.55, not referred) is named the
# more probable of grades 0 and 1, Mild, not its most probable Moderate, which would contradict its referral.
NAMED_AT_065 = [0, 1, 1, 2, 4, 1]
NAMED_CONFUSION = [
    [1, 1, 0, 0, 0],
    [0, 1, 0, 0, 0],
    [0, 0, 1, 0, 0],
    [0, 0, 0, 0, 1],
    [0, 1, 0, 0, 0],
]


def kappa_from_formula(confusion: np.ndarray) -> float:
    """kappa = 1 - sum(w * O) / sum(w * E), w_ij = (i - j)^2, E = outer(true counts, predicted counts) / n."""
    observed = np.asarray(confusion, dtype=float)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    i, j = np.indices(observed.shape)
    weights = (i - j) ** 2
    return 1 - (weights * observed).sum() / (weights * expected).sum()


def plain_values_only(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_values_only(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain_values_only(v) for v in value)
    return value is None or type(value) in (int, float, str, bool)


def test_six_eyes_icdr5_by_hand():
    m = grading_metrics(GRADES, PROBS, "icdr5", ICDR, referable_threshold=0.65, any_dr_threshold=0.92)
    assert m["n"] == 6 and m["task"] == "icdr5" and m["class_names"] == list(ICDR)
    assert m["confusion_matrix"] == NAMED_CONFUSION
    assert m["accuracy"] == pytest.approx(3 / 6)
    # Worked by hand: sum(w O) = 1 + 1 + 9 = 11; true counts (2, 1, 1, 1, 1), named counts (1, 3, 1, 0, 1), so
    # sum(w E) = (46 + 11 + 11 + 23 + 47) / 6 = 23, and kappa = 1 - 11 / 23 = 12 / 23.
    assert kappa_from_formula(np.array(NAMED_CONFUSION)) == pytest.approx(12 / 23)
    assert m["qwk"] == pytest.approx(12 / 23, abs=1e-12)
    assert m["per_class_recall"] == pytest.approx(
        {"No DR": 0.5, "Mild NPDR": 1.0, "Moderate NPDR": 1.0, "Severe NPDR": 0.0, "Proliferative DR": 0.0})
    # The most probable grades: sum(w O) = 1 + 1 + 4 = 6, sum(w E) = 136 / 6, so kappa = 1 - 36 / 136 = 25 / 34.
    assert kappa_from_formula(np.array(CONFUSION)) == pytest.approx(25 / 34)
    assert m["most_probable_qwk"] == pytest.approx(25 / 34, abs=1e-12)
    assert m["most_probable_accuracy"] == pytest.approx(3 / 6)
    assert m["grade_counts"] == [2, 1, 1, 1, 1]
    # Referable (grade >= 2): positives score 0.70, 0.90, 0.55; negatives 0.20, 0.40, 0.60.
    # One of nine positive-negative pairs is out of order (0.55 < 0.60): AUC 8/9.
    assert m["referable_auc"] == pytest.approx(8 / 9)
    assert m["referable_positives"] == 3 and m["referable_threshold"] == 0.65
    assert m["referable_sensitivity"] == pytest.approx(2 / 3)  # 0.55 is missed at 0.65
    assert m["referable_specificity"] == pytest.approx(1.0)
    # Any DR (grade >= 1): negatives 0.30, 0.95; positives 0.90, 0.90, 0.98, 0.90.
    # 0.30 is below all four, 0.95 below only 0.98: 5 of 8 pairs in order.
    assert m["any_dr_auc"] == pytest.approx(5 / 8)
    assert m["any_dr_sensitivity"] == pytest.approx(1 / 4)  # only 0.98 reaches 0.92
    assert m["any_dr_specificity"] == pytest.approx(1 / 2)  # 0.95 is a false positive
    assert m["notes"] == []
    assert plain_values_only(m)
    json.dumps(m, allow_nan=False)


def test_threshold_trades_sensitivity_for_specificity():
    m = grading_metrics(GRADES, PROBS, "icdr5", ICDR, referable_threshold=0.45)
    assert m["referable_sensitivity"] == pytest.approx(1.0)
    assert m["referable_specificity"] == pytest.approx(2 / 3)  # 0.60 is now called referable
    assert m["referable_auc"] == pytest.approx(8 / 9)  # threshold-free


def test_qwk_matches_formula_and_sklearn_on_random_grades():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    confusion = np.zeros((5, 5))
    np.add.at(confusion, (labels, predictions), 1)
    assert quadratic_weighted_kappa(labels, predictions, 5) == pytest.approx(kappa_from_formula(confusion), abs=1e-12)


def test_qwk_perfect_reversed_and_degenerate():
    assert quadratic_weighted_kappa([0, 1, 2, 3, 4, 2], [0, 1, 2, 3, 4, 2], 5) == 1.0
    assert quadratic_weighted_kappa([0, 4], [4, 0], 5) == pytest.approx(-1.0)
    # One class everywhere: kappa is 0/0, defined as 1.0 (perfect agreement) ...
    assert quadratic_weighted_kappa([2, 2, 2], [2, 2, 2], 5) == 1.0
    # ... while one true class and varied predictions is an ordinary kappa of 0.
    assert quadratic_weighted_kappa([0, 0, 0], [0, 1, 3], 5) == pytest.approx(0.0)
    with pytest.raises(MetricsError, match="0..4"):
        quadratic_weighted_kappa([0, 5], [0, 1], 5)
    with pytest.raises(MetricsError, match="zero samples"):
        quadratic_weighted_kappa([], [], 5)


def test_perfect_predictions():
    grades = np.array([0, 1, 2, 3, 4, 0, 2])
    probabilities = np.eye(5)[grades] * 0.9 + 0.02
    m = grading_metrics(grades, probabilities, "icdr5", ICDR)
    assert m["accuracy"] == 1.0 and m["qwk"] == 1.0
    assert m["referable_auc"] == 1.0 and m["referable_sensitivity"] == 1.0 and m["referable_specificity"] == 1.0
    assert m["any_dr_auc"] == 1.0
    assert np.trace(np.array(m["confusion_matrix"])) == len(grades)


def test_one_class_present_gives_none_not_nan():
    grades = np.array([0, 0, 0])
    probabilities = np.array([[0.9, 0.05, 0.05, 0, 0], [0.2, 0.2, 0.6, 0, 0], [0.8, 0.1, 0.1, 0, 0]])
    m = grading_metrics(grades, probabilities, "icdr5", ICDR)
    assert m["referable_auc"] is None and m["any_dr_auc"] is None
    assert m["referable_sensitivity"] is None and m["referable_specificity"] == pytest.approx(2 / 3)
    assert m["per_class_recall"]["No DR"] == pytest.approx(2 / 3)
    assert m["per_class_recall"]["Mild NPDR"] is None
    assert any(note.startswith("referable_auc") for note in m["notes"])
    assert any(note.startswith("any_dr_auc") for note in m["notes"])
    assert any(note.startswith("per_class_recall") for note in m["notes"])
    json.dumps(m, allow_nan=False)


def test_all_one_class_everywhere_is_noted():
    m = grading_metrics([0, 0], [[0.9, 0.1], [0.8, 0.2]], "binary", TASK_CLASS_NAMES["binary"])
    assert m["qwk"] == 1.0
    assert any(note.startswith("qwk") for note in m["notes"])


def test_task_probabilities_per_task():
    derived = task_probabilities(PROBS, "icdr5")
    assert set(derived) == {"any_dr", "referable"}
    np.testing.assert_allclose(derived["referable"], [0.20, 0.40, 0.60, 0.70, 0.90, 0.55])
    np.testing.assert_allclose(derived["any_dr"], 1 - PROBS[:, 0])
    binary = np.array([[0.7, 0.3], [0.1, 0.9]])
    assert set(task_probabilities(binary, "binary")) == {"any_dr"}
    np.testing.assert_allclose(task_probabilities(binary, "binary")["any_dr"], [0.3, 0.9])
    assert set(task_probabilities(binary, "referable")) == {"referable"}
    np.testing.assert_allclose(task_probabilities(binary, "referable")["referable"], [0.3, 0.9])
    with pytest.raises(MetricsError, match=r"\(n, 5\)"):
        task_probabilities(binary, "icdr5")
    with pytest.raises(MetricsError, match="unknown task"):
        task_probabilities(binary, "glaucoma")


def test_binary_task_scores_any_dr_only():
    # Grades 0, 1, 2, 3: targets 0, 1, 1, 1 (any DR). The model calls the grade-1 eye No DR.
    probabilities = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    m = grading_metrics([0, 1, 2, 3], probabilities, "binary", TASK_CLASS_NAMES["binary"])
    assert m["confusion_matrix"] == [[1, 0], [1, 2]]
    assert m["accuracy"] == pytest.approx(3 / 4)
    # Two classes: quadratic kappa is Cohen's kappa. p_o = 3/4, p_e = (1*2 + 3*2)/16 = 1/2, kappa = 1/2.
    assert m["qwk"] == pytest.approx(0.5)
    assert m["per_class_recall"] == pytest.approx({"No DR": 1.0, "DR": 2 / 3})
    assert m["any_dr_auc"] == pytest.approx(1.0)
    assert m["any_dr_sensitivity"] == pytest.approx(2 / 3) and m["any_dr_specificity"] == 1.0
    assert not any(key.startswith("referable_") for key in m)


def test_referable_task_scores_referable_only():
    # Grades 0, 1, 2, 4: targets 0, 0, 1, 1 (referable); the grade-1 eye is called referable.
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    m = grading_metrics([0, 1, 2, 4], probabilities, "referable", TASK_CLASS_NAMES["referable"])
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    assert m["referable_sensitivity"] == 1.0 and m["referable_specificity"] == pytest.approx(0.5)
    assert m["referable_auc"] == pytest.approx(1.0)
    assert not any(key.startswith("any_dr_") for key in m)


def test_bad_inputs_are_named():
    with pytest.raises(MetricsError, match="ICDR grades"):
        grading_metrics([0, 5], np.full((2, 5), 0.2), "icdr5", ICDR)
    with pytest.raises(MetricsError, match="one grade per row"):
        grading_metrics([0, 1, 2], np.full((2, 5), 0.2), "icdr5", ICDR)
    with pytest.raises(MetricsError, match="class names"):
        grading_metrics([0, 1], np.full((2, 5), 0.2), "icdr5", ICDR[:4])
    with pytest.raises(MetricsError, match="NaN"):
        grading_metrics([0, 1], np.array([[np.nan, 1.0], [0.5, 0.5]]), "binary", ("No DR", "DR"))
    with pytest.raises(MetricsError, match="referable_threshold"):
        grading_metrics([0, 1], np.full((2, 5), 0.2), "icdr5", ICDR, referable_threshold=1.0)
