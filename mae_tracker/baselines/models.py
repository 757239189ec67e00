"""The two baselines that need no images at training time: one cut, and gradient boosting.

Both choose everything (observable, direction, cut, number of boosting rounds) on the
validation jets only; the test jets are scored once, afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score


@dataclass
class Cut:
    """The best single observable: ``sign * value`` is the score, ``sign * value > threshold`` the
    label-1 decision; ``slope``/``intercept`` turn the signed value into a probability."""

    name: str
    column: int
    sign: float  # +1: larger values mean label 1; -1: smaller values do
    threshold: float
    val_auc: float
    val_acc: float
    slope: float
    intercept: float

    def signed(self, observables: np.ndarray) -> np.ndarray:
        return self.sign * observables[:, self.column]

    def probability(self, observables: np.ndarray) -> np.ndarray:
        """A monotone map of the signed value to [0, 1] (for log-loss, histograms, reports)."""
        z = np.clip(self.slope * self.signed(observables) + self.intercept, -50, 50)
        return 1.0 / (1.0 + np.exp(-z))

    def decide(self, observables: np.ndarray) -> np.ndarray:
        return self.signed(observables) > self.threshold


def best_cut_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) of the cut ``scores > threshold`` with the highest accuracy on these
    jets; thresholds lie halfway between distinct values (or below all of them)."""
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], labels[order].astype(np.int64)
    # cutting after position k (k = 0..n): jets 0..k-1 called 0, k..n-1 called 1
    zeros_below = np.concatenate(([0], np.cumsum(y == 0)))
    ones_above = np.concatenate(([0], np.cumsum(y[::-1] == 1)))[::-1]
    correct = zeros_below + ones_above
    # only cut between distinct values: a cut inside a run of ties cannot be applied
    valid = np.concatenate(([True], s[1:] != s[:-1], [True]))
    k = int(np.argmax(np.where(valid, correct, -1)))
    if k == 0:
        threshold = float(s[0]) - 1.0
    elif k == len(s):
        threshold = float(s[-1])
    else:
        threshold = 0.5 * (float(s[k - 1]) + float(s[k]))
    return threshold, float(correct[k]) / len(s)


def fit_best_observable(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                        names: list[str]) -> Cut:
    """The observable (and its direction) with the highest val AUC; its cut maximises val accuracy.

    The probability map is a 1-D logistic fit of the signed value on the training jets (it does
    not change the ranking, so AUC and the cut are untouched by it).
    """
    x_val, y_val = val
    best: tuple[float, int, float] | None = None
    for column in range(x_val.shape[1]):
        auc = float(roc_auc_score(y_val, x_val[:, column]))
        sign = 1.0 if auc >= 0.5 else -1.0
        candidate = (max(auc, 1.0 - auc), column, sign)
        if best is None or candidate[0] > best[0]:  # ties: the first column wins
            best = candidate
    assert best is not None, "no observables"
    auc, column, sign = best
    threshold, acc = best_cut_threshold(sign * x_val[:, column], y_val)
    x_train, y_train = train
    signed = sign * x_train[:, column:column + 1]
    scale = float(np.std(signed)) or 1.0
    logistic = LogisticRegression().fit(signed / scale, y_train)
    # |slope|: the direction is the val set's choice; the map must keep its ranking whatever train says
    return Cut(name=names[column], column=column, sign=sign, threshold=threshold, val_auc=auc, val_acc=acc,
               slope=abs(float(logistic.coef_[0, 0])) / scale, intercept=float(logistic.intercept_[0]))


def gbdt_leaf_size(min_samples_leaf: int, n_train: int) -> int:
    """``min_samples_leaf``, capped at a third of the training jets so that small labelled sets can
    still split: with 30 jets and 20 per leaf no tree can split and every score is the prior (AUC
    0.5, measured); a cap of 10 gave val AUC 0.757 there (2: 0.697, 5: 0.710; 3 seeds)."""
    return max(1, min(min_samples_leaf, n_train // 3))


def fit_gbdt(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], *, seed: int,
             learning_rate: float, max_iter: int, max_leaf_nodes: int, min_samples_leaf: int,
             patience: int) -> HistGradientBoostingClassifier:
    """scikit-learn's histogram gradient boosting, seeded, with the number of rounds chosen on the
    val jets: boosting stops ``patience`` rounds after the best val log-loss, and the model is
    refitted with exactly the best number of rounds (sklearn would keep the extra ones)."""
    settings = dict(learning_rate=learning_rate, max_leaf_nodes=max_leaf_nodes,
                    min_samples_leaf=gbdt_leaf_size(min_samples_leaf, len(train[1])), random_state=seed)
    x_val, y_val = val
    probe = HistGradientBoostingClassifier(max_iter=max_iter, early_stopping=True, scoring="loss",
                                           n_iter_no_change=patience, **settings)
    probe.fit(*train, X_val=x_val, y_val=y_val)
    losses = [log_loss(y_val, p[:, 1], labels=[0, 1]) for p in probe.staged_predict_proba(x_val)]
    rounds = int(np.argmin(losses)) + 1
    # With an explicit val set nothing is drawn from the training jets, so the refit grows the
    # same first ``rounds`` trees.
    return HistGradientBoostingClassifier(max_iter=rounds, early_stopping=False, **settings).fit(*train)
