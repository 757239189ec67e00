"""Classical baselines on the arms' data: the best single image observable, gradient boosting on
image observables, and a small CNN trained from scratch (see run.run_baseline)."""

from typing import Any

from mae_tracker.baselines.config import BASELINES, BaselineConfig


def __getattr__(name: str) -> Any:
    if name == "run_baseline":  # torch and scikit-learn: imported when a baseline runs, not for `--help`
        from mae_tracker.baselines.run import run_baseline

        return run_baseline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BASELINES", "BaselineConfig", "run_baseline"]
