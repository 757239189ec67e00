"""The physics pipeline as one resumable command (``python -m mae_tracker.pipeline PIPELINE.yaml``).

``from mae_tracker.pipeline import run_pipeline`` is the library entry point.
"""

from typing import Any

from mae_tracker.pipeline.spec import PipelineSpec, PipelineSpecError, load_pipeline_spec


def __getattr__(name: str) -> Any:
    if name == "run_pipeline":  # pulls in MLflow, Optuna and torch: only when running
        from mae_tracker.pipeline.runner import run_pipeline

        return run_pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PipelineSpec", "PipelineSpecError", "load_pipeline_spec", "run_pipeline"]
