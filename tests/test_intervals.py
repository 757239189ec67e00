"""The statistics promotion rests on: DeLong's AUC interval, the validation errors, and the
warning for a classifier whose head did not train."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mae_tracker.train.evaluation import (Z95, auc_interval, standard_error, untrained_head_warning,
                                          validation_errors)


def jets(n: int = 400, separation: float = 0.6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    logits = rng.normal(size=n) + separation * labels
    return labels, 1 / (1 + np.exp(-np.round(logits, 1)))  # rounded: ties, as real scores have


def test_delong_interval_matches_sklearn_and_the_bootstrap():
    labels, scores = jets()
    interval = auc_interval(labels, scores)
    assert interval.auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert (interval.n_signal, interval.n_background) == (int(labels.sum()), int((1 - labels).sum()))
    rng = np.random.default_rng(1)
    draws = (rng.integers(0, len(labels), len(labels)) for _ in range(400))
    boot = [roc_auc_score(labels[i], scores[i]) for i in draws]
    assert interval.se == pytest.approx(np.std(boot), rel=0.15)  # measured: 0.0263 vs 0.0270
    assert interval.low == pytest.approx(interval.auc - Z95 * interval.se)
    assert interval.high == pytest.approx(interval.auc + Z95 * interval.se)
    assert interval.excludes_chance()
    assert interval.as_metrics("val_probe_auc") == {"val_probe_auc": interval.auc, "val_probe_auc_se": interval.se,
                                                    "val_probe_auc_ci_low": interval.low,
                                                    "val_probe_auc_ci_high": interval.high}


def test_degenerate_cases():
    perfect = auc_interval(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert (perfect.auc, perfect.se, perfect.low, perfect.high) == (1.0, 0.0, 1.0, 1.0)
    constant = auc_interval(np.array([0, 1, 0, 1]), np.full(4, 0.55))  # a head that learned nothing
    assert (constant.auc, constant.se) == (0.5, 0.0) and not constant.excludes_chance()
    with pytest.raises(ValueError, match="both classes"):
        auc_interval(np.ones(5), np.linspace(0, 1, 5))
    labels, scores = jets(n=100, separation=0.0, seed=3)
    assert not auc_interval(labels, scores).excludes_chance()  # no signal: the interval holds 0.5


def test_validation_errors():
    labels, scores = jets()
    errors = validation_errors(labels, scores)
    accuracy = np.mean((scores > 0.5) == labels)
    assert errors["val_acc_se"] == pytest.approx(np.sqrt(accuracy * (1 - accuracy) / len(labels)))
    assert errors["val_auc_se"] == auc_interval(labels, scores).se
    assert 0 < errors["val_loss_se"] < 0.1
    assert standard_error(np.array([1.0, 3.0])) == pytest.approx(1.0) and standard_error(np.array([2.0])) == 0.0


def test_a_head_that_did_not_train_is_named():
    labels, scores = jets(n=1000, separation=0.4)
    assert untrained_head_warning(labels, scores) == ""  # a trained classifier
    # like the tagger: it ranks (AUC 0.65) but every score sits in 0.547-0.564 (1st-99th percentile)
    squeezed = 0.5555 + 0.0035 * (np.log(scores / (1 - scores)) - 0.2)
    message = untrained_head_warning(labels, squeezed)
    assert message.startswith("scores collapse into [0.54") and "the head did not train" in message
    # wide scores that rank, cut where every jet lands on one side: accuracy = a class's share
    shifted = 1 / (1 + np.exp(-(np.log(scores / (1 - scores)) + 5)))
    message = untrained_head_warning(labels, shifted)
    assert "is that of always answering one class" in message and "is not at chance" in message
    # at chance everywhere: nothing to warn about beyond what the floor says
    noise_labels, noise_scores = jets(n=1000, separation=0.0, seed=5)
    assert untrained_head_warning(noise_labels, noise_scores) == ""
