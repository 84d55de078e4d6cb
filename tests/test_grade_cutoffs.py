"""scripts/grade_cutoffs.py: the cut-off rules it compares with the served one, on made-up probabilities."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "grade_cutoffs.py"
spec = importlib.util.spec_from_file_location("grade_cutoffs", SCRIPT)
grade_cutoffs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grade_cutoffs)


def _probabilities(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 5, n)
    logits = rng.normal(0, 1, (n, 5)) + 3 * np.eye(5)[grades]     # mostly right, sometimes a neighbour
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probabilities, grades


def test_rounding_cut_offs_round_the_expected_grade_and_fitting_never_loses_to_them():
    probabilities, grades = _probabilities(0)
    expected = probabilities @ np.arange(5)
    rounding = np.array([0.5, 1.5, 2.5, 3.5])
    assert np.array_equal(grade_cutoffs.expected_cut(probabilities, rounding), np.clip(np.floor(expected + 0.5), 0, 4))
    fitted = grade_cutoffs.fit_expected(probabilities, grades)
    assert np.all(np.diff(fitted) > 0)
    assert (grade_cutoffs.qwk(grades, grade_cutoffs.expected_cut(probabilities, fitted))
            >= grade_cutoffs.qwk(grades, grade_cutoffs.expected_cut(probabilities, rounding)))


def test_the_side_rule_keeps_every_referral_decision():
    probabilities, _ = _probabilities(1)
    threshold = 0.4
    for cuts in ((0.5, 0.5, 1.5), (0.1, 0.2, 1.9), (0.9, 1.0, 1.1)):
        named = grade_cutoffs.side_cut(probabilities, threshold, cuts)
        assert np.array_equal(named >= 2, probabilities[:, 2:].sum(axis=1) >= threshold)
        assert set(np.unique(named)) <= set(range(5))


def test_leave_one_out_grades_each_photo_with_cut_offs_fitted_without_it():
    probabilities, grades = _probabilities(2, n=12)
    seen = []

    def fit(p, g):
        seen.append(len(g))
        return np.array([0.5, 1.5, 2.5, 3.5])

    named = grade_cutoffs.leave_one_out(probabilities, grades, fit, grade_cutoffs.expected_cut)
    assert seen == [11] * 12 and named.shape == grades.shape


def test_a_folder_that_is_not_a_trained_checkpoint_gets_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        grade_cutoffs.main([str(tmp_path)])
    assert exit_info.value.code == 2 and "not a trained checkpoint folder" in capsys.readouterr().err
