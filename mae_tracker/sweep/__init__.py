"""Optuna sweeps over the mae-tracker arms, tracked in MLflow (``python -m mae_tracker.sweep``)."""

from mae_tracker.sweep.spec import SweepSpec, SweepSpecError, load_spec
from mae_tracker.sweep.storage import mask_password


def run_sweep(*args, **kwargs):  # noqa: ANN002, ANN003 - see mae_tracker.sweep.runner.run_sweep
    """Lazy alias of :func:`mae_tracker.sweep.runner.run_sweep` (keeps `import` light)."""
    from mae_tracker.sweep.runner import run_sweep as _run_sweep

    return _run_sweep(*args, **kwargs)


__all__ = ["SweepSpec", "SweepSpecError", "load_spec", "mask_password", "run_sweep"]
