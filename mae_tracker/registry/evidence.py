"""What a promotion rests on: a validation metric with its statistical error, read from the run
that measured it, and the two rules the registry builds on it.

* **Floor.** No model is registered unless a validation AUC of the run that measured the metric
  is better than chance by more than its own error: its 95 % DeLong interval
  (``<auc>_ci_low``, ``<auc>_ci_high``, logged beside the AUC) lies above 0.5. The AUC is the
  metric itself when it is one (``val_probe_auc``, ``best_val_auc``), else the run's own
  (``val_probe_auc`` for a pretrain run, ``best_val_auc`` for a downstream arm).
* **Margin.** A candidate takes champion only when it beats the champion by more than the
  noise of the comparison: ``1.96 * sqrt(se_candidate**2 + se_champion**2)``, from the
  ``<metric>_se`` each run logged. Both are scored on the same validation jets, so their errors
  are positively correlated and this unpaired noise overstates the paired one: a switch it
  allows is a real one.

The test split never enters: a metric named ``test_*`` (any ``test`` word in it) is refused.
Runs logged before errors were recorded have no ``<metric>_se`` and are refused with one line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mlflow.entities import Run

from mae_tracker.train.evaluation import Z95

# The validation AUC that carries the floor, by the measuring run's `arm` tag.
FLOOR_AUC = {"pretrain": "val_probe_auc", "finetune": "best_val_auc", "probe": "best_val_auc",
             "scratch": "best_val_auc"}


def is_test_metric(name: str) -> bool:
    """``test_auc``, ``best_test_loss``, ``test``: measured on the test split, which never chooses."""
    return "test" in re.split(r"[^a-z0-9]+", name.lower())


def comparison_noise(se_candidate: float, se_champion: float) -> float:
    """95 % half-width of the difference of two independent estimates (see the module)."""
    return Z95 * math.hypot(se_candidate, se_champion)


@dataclass(frozen=True)
class Evidence:
    """A metric as the run that measured it logged it, its standard error and the floor's AUC."""

    run_id: str  # the run that measured it (a sweep's objective: the trial's probe/finetune run)
    key: str  # its name in that run
    value: float
    se: float
    floor_key: str
    floor_auc: float
    floor_low: float
    floor_high: float

    def interval(self) -> str:
        """``val_probe_auc 0.7812, 95 % interval [0.7201, 0.8423]``."""
        return (f"{self.floor_key} {self.floor_auc:.4f}, 95 % interval [{self.floor_low:.4f}, "
                f"{self.floor_high:.4f}]")

    def tags(self) -> dict[str, str]:
        """What every registered version records about it."""
        return {"metric_se": repr(self.se), "metric_run_id": self.run_id, "metric_key": self.key,
                "floor_metric": self.floor_key, "floor_value": repr(self.floor_auc),
                "floor_ci_low": repr(self.floor_low), "floor_ci_high": repr(self.floor_high)}


def read_evidence(run: Run, key: str, value: float | None = None) -> Evidence:
    """``key``'s logged (last) value, ``<key>_se`` and the floor AUC's interval from ``run``.

    ``value``, when given (a sweep's objective), must be the logged one: the error belongs to
    that value and no other. ValueError (one line) for anything missing or non-finite.
    """
    run_id, metrics = run.info.run_id, run.data.metrics
    if key not in metrics:
        raise ValueError(f"run {run_id} has no metric {key!r}; pass metric= one of {sorted(metrics)[:12]}")
    logged = float(metrics[key])
    if value is not None and not math.isfinite(float(value)):
        raise ValueError(f"run {run_id}: {key} is {value}; a NaN/inf run is never promoted")
    if value is not None and not math.isclose(float(value), logged, rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(f"value {value!r} is not run {run_id}'s {key} ({logged!r}): the error logged with it "
                         "would not belong to it")
    if not math.isfinite(logged):
        raise ValueError(f"run {run_id}: {key} is {logged}; a NaN/inf run is never promoted")
    check_finite_losses(run)
    se = metrics.get(f"{key}_se")
    if se is None:
        raise ValueError(f"run {run_id} logged no standard error for {key} ({key}_se): it predates promotion "
                         "intervals (or the metric has none); retrain it to promote it")
    arm = run.data.tags.get("arm", "")
    floor_key = key if f"{key}_ci_low" in metrics else FLOOR_AUC.get(arm, "")
    bounds = [metrics.get(f"{floor_key}_ci_low"), metrics.get(f"{floor_key}_ci_high"), metrics.get(floor_key)]
    if not floor_key or any(bound is None for bound in bounds):
        raise ValueError(f"run {run_id} logged no validation AUC interval ({floor_key or 'an AUC'}_ci_low/_ci_high) "
                         "to check it beats chance: it predates promotion intervals; retrain it to promote it")
    low, high, auc = (float(bound) for bound in bounds)
    if not all(math.isfinite(x) for x in (float(se), low, high, auc)):
        raise ValueError(f"run {run_id}: the error of {key} or the interval of {floor_key} is not finite; "
                         "a NaN/inf run is never promoted")
    return Evidence(run_id, key, logged, float(se), floor_key, auc, low, high)


def check_finite_losses(run: Run) -> None:
    """A diverged run can still report a finite AUC from its last good epoch: its losses tell."""
    bad = {k: v for k, v in run.data.metrics.items() if "loss" in k and not k.endswith("_se") and not math.isfinite(v)}
    if bad:
        raise ValueError(f"run {run.info.run_id} has non-finite losses {bad}; a NaN/inf run is never promoted")


def check_floor(evidence: Evidence, run_id: str) -> None:
    """ValueError unless the floor AUC's interval lies above chance (0.5)."""
    if not evidence.floor_low > 0.5:
        where = "" if evidence.run_id == run_id else f" (measured by run {evidence.run_id})"
        raise ValueError(f"run {run_id}: {evidence.interval()}{where} does not exclude chance (0.5); a "
                         "chance-level model is never registered")
