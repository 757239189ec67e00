"""Optuna sweeps over the mae-tracker arms, tracked in MLflow (``python -m mae_tracker.sweep``).

``from mae_tracker.sweep import run_sweep`` is the library entry point; the CLI
(``mae_tracker.sweep.__main__.main``) is a thin shell over it.
"""

from typing import Any

from mae_tracker.sweep.checks import SweepSpecError
from mae_tracker.sweep.spec import SweepSpec, load_spec


def __getattr__(name: str) -> Any:
    # These pull in MLflow and Optuna; import them on first use so that `--help` and YAML
    # validation stay quick.
    if name == "run_sweep":
        from mae_tracker.sweep.runner import run_sweep

        return run_sweep
    if name == "mask_password":
        from mae_tracker.sweep.storage import mask_password

        return mask_password
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SweepSpec", "SweepSpecError", "load_spec", "mask_password", "run_sweep"]
