"""Classical baselines on the arms' data: the best single image observable, gradient boosting on
image observables, and a small CNN trained from scratch (see run.run_baseline)."""

from mae_tracker.baselines.config import KINDS, BaselineConfig
from mae_tracker.baselines.run import run_baseline

__all__ = ["KINDS", "BaselineConfig", "run_baseline"]
