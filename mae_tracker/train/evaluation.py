"""How every classifier run (the downstream arms and the classical baselines) is scored and what
it leaves behind on the test split, so that their numbers and artifacts compare one to one.

Validation numbers also carry their statistical error (``validation_errors``): the registry
promotes on a validation metric only when its interval excludes chance, and replaces a
champion only when the gap is larger than the noise of the comparison.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Sequence

import mlflow
import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from mae_tracker.train import plots, tracking

Z95 = 1.959963984540054  # two-sided 95 % normal quantile: every interval and margin here uses it
# keep_best_epoch carries these (when present) from the selected epoch's metrics.
ERROR_KEYS = ("val_auc_se", "val_auc_ci_low", "val_auc_ci_high", "val_acc_se", "val_loss_se")
# A head that did not train: scores squeezed into a band narrower than this (1st-99th percentile) ...
COLLAPSED_BAND = 0.05
# ... or accuracy within this of always answering one class while the AUC interval excludes 0.5.
AT_BALANCE = 0.02


@dataclass(frozen=True)
class AucInterval:
    """ROC AUC with its DeLong standard error and the 95 % normal interval (clipped to [0, 1])."""

    auc: float
    se: float
    low: float
    high: float
    n_signal: int
    n_background: int

    def excludes_chance(self) -> bool:
        return self.low > 0.5

    def as_metrics(self, key: str) -> dict[str, float]:
        """``{key: auc, key_se, key_ci_low, key_ci_high}``."""
        return {key: self.auc, f"{key}_se": self.se, f"{key}_ci_low": self.low, f"{key}_ci_high": self.high}


def auc_interval(labels: np.ndarray, scores: np.ndarray) -> AucInterval:
    """DeLong et al. (1988) variance of the ROC AUC, by mid-ranks (Sun & Xu 2014): O(n log n).

    Ties count one half, as in ``roc_auc_score``. ValueError when one class is missing.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    signal, background = scores[labels], scores[~labels]
    m, n = len(signal), len(background)
    if m == 0 or n == 0:
        raise ValueError(f"an AUC needs both classes; got {m} of label 1 and {n} of label 0")
    ranks = rankdata(np.concatenate([signal, background]))
    v10 = (ranks[:m] - rankdata(signal)) / n  # per signal jet: share of background below it
    v01 = 1.0 - (ranks[m:] - rankdata(background)) / m  # per background jet: share of signal above it
    auc = float(v10.mean())
    var = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    se = math.sqrt(max(float(var), 0.0))
    return AucInterval(auc, se, max(0.0, auc - Z95 * se), min(1.0, auc + Z95 * se), m, n)


def validation_errors(labels: np.ndarray, scores: np.ndarray, decisions: np.ndarray | None = None
                      ) -> dict[str, float]:
    """Statistical errors of the ``classification_scores("val", ...)`` numbers on these jets:
    ``val_auc_se`` with its 95 % interval (DeLong), ``val_acc_se`` (binomial) and ``val_loss_se``
    (standard error of the mean per-jet log-loss)."""
    labels = np.asarray(labels).astype(float).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    decisions = scores > 0.5 if decisions is None else np.asarray(decisions).ravel()
    interval = auc_interval(labels, scores)
    n = len(labels)
    accuracy = float(np.mean(decisions == labels.astype(bool)))
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    per_jet = -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped))
    return {"val_auc_se": interval.se, "val_auc_ci_low": interval.low, "val_auc_ci_high": interval.high,
            "val_acc_se": math.sqrt(accuracy * (1 - accuracy) / n), "val_loss_se": standard_error(per_jet)}


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of ``values`` (0 for fewer than two)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def untrained_head_warning(labels: np.ndarray, scores: np.ndarray, decisions: np.ndarray | None = None) -> str:
    """'' for a classifier that looks trained, else why it does not: its scores collapse into a
    narrow band, or its accuracy is that of always answering one class while its AUC (95 %
    interval) is not at chance, i.e. it ranks jets but its head never learned where to cut."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    decisions = scores > 0.5 if decisions is None else np.asarray(decisions).astype(bool).ravel()
    low, high = np.percentile(scores, [1, 99])
    if high - low < COLLAPSED_BAND:
        return (f"scores collapse into [{low:.3f}, {high:.3f}] (1st-99th percentile, narrower than "
                f"{COLLAPSED_BAND}): the head did not train")
    interval = auc_interval(labels, scores)
    accuracy, share = float(np.mean(decisions == labels)), float(labels.mean())
    constant = min((abs(accuracy - share), share), (abs(accuracy - (1 - share)), 1 - share))
    if interval.excludes_chance() and constant[0] <= AT_BALANCE:
        return (f"accuracy {accuracy:.3f} is that of always answering one class ({constant[1]:.3f}) while AUC "
                f"{interval.auc:.3f} [{interval.low:.3f}, {interval.high:.3f}] is not at chance: the head did "
                "not train (its cut at 0.5 sits outside the scores)")
    return ""


def classification_scores(prefix: str, labels: np.ndarray, scores: np.ndarray,
                          decisions: np.ndarray | None = None) -> dict[str, float]:
    """``<prefix>_auc``, ``_acc`` (``decisions``, default score > 0.5) and ``_loss`` (log-loss;
    scores clipped to [1e-7, 1 - 1e-7] so a saturated score cannot make it infinite)."""
    decisions = scores > 0.5 if decisions is None else decisions
    return {f"{prefix}_auc": float(roc_auc_score(labels, scores)),
            f"{prefix}_acc": float(accuracy_score(labels, decisions)),
            f"{prefix}_loss": float(log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1]))}


def log_test_predictions(name: str, labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str],
                         title: str) -> None:
    """To the active run: test_predictions.csv, the ROC curve, the background rejection and the
    score histogram. ``class_names``: (label 1, label 0), e.g. the file's (quark, gluon)."""
    tracking.log_table({"label": labels.astype(int), "score": scores}, "test_predictions.csv")
    classes = dict(zip(("signal", "background"), class_names))
    mlflow.set_tag("class_names", ",".join(class_names))  # what label 1 and 0 are, for the report
    curves = {name: (labels, scores)}
    tracking.log_figure(plots.roc_figure(curves, title, **classes), "roc_curve.png")
    tracking.log_figure(plots.rejection_figure(curves, title, **classes), "roc_rejection.png")
    tracking.log_figure(plots.score_histogram(labels, scores, title, **classes), "score_histogram.png")


def keep_best_epoch(best: dict[str, Any], metrics: dict[str, float], epoch: int,
                    model: torch.nn.Module) -> dict[str, Any]:
    """Model selection on validation only, by log-loss (AUC alone can pick an early epoch whose
    ranking is fine but whose scores all sit on one side of 0.5): ``best`` or this epoch's.
    The epoch's statistical errors (``ERROR_KEYS``, when logged) travel with it."""
    if metrics["val_loss"] >= best["val_loss"]:
        return best
    return {"val_loss": metrics["val_loss"], "val_auc": metrics["val_auc"], "val_acc": metrics["val_acc"],
            **{key: metrics[key] for key in ERROR_KEYS if key in metrics},
            "epoch": epoch, "state": copy.deepcopy(model.state_dict())}


def best_epoch_errors(best: dict[str, Any]) -> dict[str, float]:
    """The selected epoch's errors as ``best_val_auc_se``, ``best_val_auc_ci_low``, ... (empty for a
    run resumed from a checkpoint written before errors were kept: promotion then refuses it)."""
    return {f"best_{key}": float(best[key]) for key in ERROR_KEYS if key in best}
