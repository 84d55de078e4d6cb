"""Grades, tasks and their targets and derived probabilities: one home, drdemo.tasks, that the data
loaders, the metrics and the checkpoint format all read."""

import numpy as np
import pytest

from drdemo import data, metrics, models
from drdemo.tasks import (
    ICDR_GRADES,
    TASK_CLASS_NAMES,
    TASK_THRESHOLDS,
    TaskError,
    decided_classes,
    decided_dme_risks,
    num_classes,
    task_probabilities,
    task_target,
    task_targets,
)


def test_task_targets():
    assert [task_target(g, "icdr5") for g in range(5)] == [0, 1, 2, 3, 4]
    assert [task_target(g, "binary") for g in range(5)] == [0, 1, 1, 1, 1]
    assert [task_target(g, "referable") for g in range(5)] == [0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="unknown task 'dme'"):
        task_target(1, "dme")


def test_task_targets_vectorised():
    grades = np.arange(5)
    assert task_targets(grades, "icdr5").tolist() == [0, 1, 2, 3, 4]
    assert task_targets(grades, "binary").tolist() == [0, 1, 1, 1, 1]
    assert task_targets(grades, "referable").tolist() == [0, 0, 1, 1, 1]


def test_tasks_match_the_checkpoint_format():
    assert set(TASK_THRESHOLDS) == set(TASK_CLASS_NAMES)
    assert all(num_classes(task) == len(names) for task, names in TASK_CLASS_NAMES.items())


def test_the_other_modules_read_the_facts_from_here():
    assert data.task_target is task_target and data.num_classes is num_classes
    assert models.ICDR_GRADES is ICDR_GRADES is TASK_CLASS_NAMES["icdr5"]
    probabilities = np.array([[0.1, 0.2, 0.3, 0.2, 0.2]])
    for name, values in metrics.task_probabilities(probabilities, "icdr5").items():
        np.testing.assert_array_equal(values, task_probabilities(probabilities, "icdr5")[name])


def test_derived_probabilities_need_the_task_s_classes():
    with pytest.raises(TaskError, match=r"\(n, 5\)"):
        task_probabilities(np.array([[0.7, 0.3]]), "icdr5")
    with pytest.raises(TaskError, match="unknown task"):
        task_probabilities(np.array([[0.7, 0.3]]), "glaucoma")


def test_the_grade_named_agrees_with_the_referral_at_any_threshold():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(5), size=400)
    referable = probabilities[:, 2:].sum(axis=1)
    for threshold in (0.1, 0.3, 0.5, 0.67, 0.9):
        named = decided_classes(probabilities, "icdr5", threshold)
        np.testing.assert_array_equal(named >= 2, referable >= threshold)
        # on each side of the threshold, the most probable grade of that side
        side = np.where(named >= 2, probabilities[:, 2:].max(axis=1), probabilities[:, :2].max(axis=1))
        np.testing.assert_array_equal(probabilities[np.arange(400), named], side)
    # at 0.5 it rarely differs from the most probable grade, and only where no grade has a majority
    differs = decided_classes(probabilities, "icdr5", 0.5) != probabilities.argmax(axis=1)
    assert differs.any() and (probabilities[differs].max(axis=1) < 0.5).all()
    two = np.array([[0.7, 0.3], [0.45, 0.55]])
    np.testing.assert_array_equal(decided_classes(two, "referable", 0.25), [1, 1])
    np.testing.assert_array_equal(decided_classes(two, "binary", 0.25), [0, 1])  # any DR: the most probable


def test_the_dme_risk_named_agrees_with_the_dme_referral():
    dme = np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.1, 0.5, 0.4], [0.3, 0.2, 0.5]])
    np.testing.assert_array_equal(decided_dme_risks(dme, 0.5), [0, 1, 1, 2])
    np.testing.assert_array_equal(decided_dme_risks(dme, 0.25), [0, 2, 2, 2])
