"""Calibration: logits to probabilities over views, and the fit that repairs a model's priors."""

import numpy as np
import pytest
from scipy.special import softmax

from drdemo.calibration import (
    check_calibration,
    class_probabilities,
    fit_calibration,
    negative_log_likelihood,
    view_spread,
)


def _biased_logits(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits of a model that is over-confident (x3) and favours class 1 by +2 nats, with the true
    classes drawn from the well-calibrated probabilities they hide."""
    rng = np.random.default_rng(seed)
    honest = rng.normal(0, 1.5, (n, 5))
    targets = np.array([rng.choice(5, p=p) for p in softmax(honest, axis=1)])
    return 3.0 * (honest + np.array([0, 2.0, 0, 0, 0])), targets, honest


def test_no_calibration_is_the_softmax_and_views_are_averaged():
    logits = np.random.default_rng(1).normal(size=(4, 3, 5))
    np.testing.assert_allclose(class_probabilities(logits[:, 0]), softmax(logits[:, 0], axis=1))
    np.testing.assert_allclose(class_probabilities(logits), softmax(logits, axis=2).mean(axis=1))
    np.testing.assert_allclose(class_probabilities(logits, {}), class_probabilities(logits))
    spread = view_spread(logits)
    np.testing.assert_allclose(spread, softmax(logits, axis=2).std(axis=1))
    assert not view_spread(logits[:, :1]).any()


def test_calibration_divides_by_the_temperature_and_adds_the_biases():
    logits = np.random.default_rng(2).normal(size=(3, 2, 5))
    calibration = {"temperature": 2.0, "logit_bias": [0.0, -1.0, 0.5, 0.0, 0.25]}
    expected = softmax(logits / 2.0 + np.array(calibration["logit_bias"]), axis=2).mean(axis=1)
    np.testing.assert_allclose(class_probabilities(logits, calibration), expected)


def test_the_fit_recovers_temperature_and_bias_and_lowers_the_nll():
    logits, targets, honest = _biased_logits()
    calibration = fit_calibration(logits, targets, shrinkage=0.0)
    assert calibration["temperature"] == pytest.approx(3.0, rel=0.15)
    bias = np.array(calibration["logit_bias"])
    assert bias[0] == 0.0 and bias[1] == pytest.approx(-2.0, abs=0.4) and np.abs(bias[2:]).max() < 0.4
    before = negative_log_likelihood(class_probabilities(logits), targets)
    after = negative_log_likelihood(class_probabilities(logits, calibration), targets)
    best = negative_log_likelihood(softmax(honest, axis=1), targets)
    assert after < before - 0.3 and after < best + 0.02
    assert check_calibration(calibration, 5) is None


def test_shrinkage_pulls_the_biases_towards_zero():
    logits, targets, _ = _biased_logits(n=120, seed=3)
    free = np.abs(fit_calibration(logits, targets, shrinkage=0.0)["logit_bias"]).sum()
    shrunk = np.abs(fit_calibration(logits, targets, shrinkage=0.5)["logit_bias"]).sum()
    assert shrunk < 0.8 * free


@pytest.mark.parametrize(("value", "message"), [
    ([], "must be an object"),
    ({"temperature": 1.0}, "exactly temperature and logit_bias"),
    ({"temperature": 0.0, "logit_bias": [0.0] * 5}, "temperature must be a number in [0.05, 20]"),
    ({"temperature": True, "logit_bias": [0.0] * 5}, "temperature must be a number"),
    ({"temperature": 1.0, "logit_bias": [0.0] * 4}, "logit_bias must be 5 numbers"),
    ({"temperature": 1.0, "logit_bias": [0.0, "a", 0, 0, 0]}, "logit_bias must be 5 numbers"),
])
def test_bad_calibrations_are_named(value, message):
    assert message in check_calibration(value, 5)
