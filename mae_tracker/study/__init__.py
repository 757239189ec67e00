"""The physics study as one resumable command (``python -m mae_tracker.study STUDY.yaml``).

``from mae_tracker.study import run_study`` is the library entry point.
"""

from typing import Any

from mae_tracker.study.spec import StudySpec, StudySpecError, load_study_spec


def __getattr__(name: str) -> Any:
    if name == "run_study":  # pulls in MLflow, Optuna and torch: only when running
        from mae_tracker.study.runner import run_study

        return run_study
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["StudySpec", "StudySpecError", "load_study_spec", "run_study"]
