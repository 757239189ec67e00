"""Run (or continue) a pipeline: data -> sweep -> long pretraining -> label efficiency -> report.

Every step is found again in MLflow when the command is rerun, so an interrupted pipeline loses
at most the epoch or child run it was in:

* data: generated once into the cache (written atomically), or the given file;
* sweep: the Optuna study continues to its number of trials (sweeps resume by design);
* pretraining: the pipeline parent's pretrain child; unfinished, it resumes from its checkpoint;
* label efficiency: the pipeline parent's label-efficiency child, resumed (finished runs kept);
* the report and the results table are rebuilt from the runs every time (cheap).

The pipeline's parent run holds them all: the sweep's parent, the pretrain run and the
label-efficiency parent are nested under it, so one run id finds everything.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import mlflow
import pandas as pd

from mae_tracker.signals import sigterm_as_exit
from mae_tracker.pipeline import results
from mae_tracker.pipeline.spec import PipelineSpec, load_pipeline_spec
from mae_tracker.sweep.binding import DIGEST_ATTR, SPLIT_ATTR, DataBinding, mismatch
from mae_tracker.sweep.parent import closing, reopen
from mae_tracker.train import tracking
from mae_tracker.ui_links import run_where

KIND = "pipeline"
PIPELINE_TAG = "study_name"
PARENT_TAG = "mlflow.parentRunId"
Echo = Callable[[str], None]


def _echo(line: str) -> None:
    print(line, flush=True)


def run_pipeline(spec_path: str | Path, *, out_dir: str | Path | None = None, workers: int | None = None,
              progress: bool = False, echo: Echo = _echo) -> dict[str, Any]:
    """Run or continue the pipeline described by the YAML at ``spec_path``; rerun to resume.

    Returns run_id (the pipeline parent), data, sweep_parent_run_id, pretrain_run_id, encoder_uri,
    label_efficiency_run_id, table (per run), summary (arm x fraction, mean and spread over seeds),
    trained / skipped (downstream runs of this call) and report (the Markdown path, when
    ``out_dir`` is given).
    """
    spec = load_pipeline_spec(spec_path)
    tracking.configure_tracking()
    client = mlflow.MlflowClient()
    data_path = dataset_path(spec, workers, progress, echo)
    from mae_tracker.sweep.runner import check_continuable, data_binding

    data = data_binding(spec.sweep.with_overrides(fixed={**spec.sweep.fixed, "data": str(data_path)}), progress)
    # Refused before anything is written: a pipeline (and its sweep) continues on its own data only.
    earlier = _earlier_parent(client, spec, data)
    check_continuable(spec.sweep, data)
    parent_id = _open_parent(client, spec, data, earlier)
    echo(f"pipeline {spec.name}: parent run {parent_id} in experiment {spec.experiment}; data {data_path}")
    echo(f"pipeline {spec.name}: view it: {run_where(parent_id)}")
    with sigterm_as_exit(), closing(parent_id):  # SIGTERM ends the parent KILLED, as Ctrl-C does
        sweep = _sweep(client, spec, data_path, parent_id, progress, echo)
        with active_parent(client, parent_id):
            pretrained = _pretrain(client, spec, sweep, data_path, parent_id, progress, echo)
            efficiency = _label_efficiency(client, spec, pretrained["encoder_uri"], parent_id, progress, echo)
        summary = results.summarize(client, efficiency["table"])
        report = _report(client, spec, parent_id, efficiency["run_id"], summary, out_dir, echo)
    echo(f"pipeline {spec.name}: done; parent run {parent_id}; view it: {run_where(parent_id)}")
    echo(results.markdown(summary))
    return {"run_id": parent_id, "data": str(data_path), "sweep_parent_run_id": sweep["parent_run_id"],
            "pretrain_run_id": pretrained["run_id"], "encoder_uri": pretrained["encoder_uri"],
            "label_efficiency_run_id": efficiency["run_id"], "table": efficiency["table"], "summary": summary,
            "trained": efficiency["trained"], "skipped": efficiency["skipped"], "report": report}


# --- steps -----------------------------------------------------------------------------------

def dataset_path(spec: PipelineSpec, workers: int | None, progress: bool, echo: Echo) -> Path:
    """The pipeline's data file (``spec.data``: a file, or generator settings generated once into the
    cache); also used by the scaling study, whose spec has the same ``data`` and ``path``."""
    if "file" in spec.data:  # a file, folder, glob or comma list (absolute)
        from mae_tracker.data.errors import DataError
        from mae_tracker.data.files import resolve_files

        try:
            resolve_files(spec.data["file"])
        except DataError as err:
            raise FileNotFoundError(f"{spec.path}: data.file: no such file or no data files: {err}") from None
        return Path(spec.data["file"])
    from mae_tracker.sim.default import default_dataset, default_dataset_path
    from mae_tracker.sim.generate import make_config

    config = make_config(**spec.data)
    path = default_dataset_path(config)
    if not path.exists():
        echo(f"[data] generating {config.n_images} {spec.data['task']} images into {path} (cached for reruns)")
    return default_dataset(config, workers=workers, progress=progress)


def _sweep(client: mlflow.MlflowClient, spec: PipelineSpec, data_path: Path, parent_id: str, progress: bool,
           echo: Echo) -> dict[str, Any]:
    """The sweep continues to its n_trials (a finished one just reports); no run may be active
    here: the sweep manages its own parent and trial runs."""
    from mae_tracker.sweep.runner import run_sweep

    echo(f"[sweep] {spec.sweep.name}: {spec.sweep.n_trials} trials")
    summary = run_sweep(spec.sweep.path, data=str(data_path), progress=progress, echo=echo)
    client.set_tag(summary["parent_run_id"], PARENT_TAG, parent_id)  # shown nested under the pipeline
    client.set_tag(parent_id, "pipeline_sweep_parent_run_id", summary["parent_run_id"])
    if "best_params" not in summary:
        raise RuntimeError(f"sweep {spec.sweep.name} has no completed trial to pretrain from")
    return summary


def _pretrain(client: mlflow.MlflowClient, spec: PipelineSpec, sweep: dict[str, Any], data_path: Path,
              parent_id: str, progress: bool, echo: Echo) -> dict[str, Any]:
    """The sweep's best configuration, pretrained for longer on the whole pretraining split."""
    from mae_tracker.train.config import PretrainConfig
    from mae_tracker.train.loop import checkpoint_path
    from mae_tracker.train.pretrain import pretrain

    settings = {**spec.sweep.fixed, **sweep["best_params"], **spec.pretrain, "data": str(data_path),
                "experiment": spec.experiment, "run_name": f"{spec.name}-pretrain"}
    config = PretrainConfig(**settings)
    earlier = latest_child(client, parent_id, "tags.arm = 'pretrain'")
    if earlier is not None and earlier.info.status == "FINISHED":
        echo(f"[pretrain] finished earlier (run {earlier.info.run_id[:8]}), kept")
        return {"run_id": earlier.info.run_id, "encoder_uri": earlier.data.tags["encoder_uri"]}
    if earlier is not None and checkpoint_path(config.checkpoint_dir, earlier.info.run_id).exists():
        echo(f"[pretrain] resuming run {earlier.info.run_id[:8]} from its last checkpoint")
        config = PretrainConfig(resume=earlier.info.run_id, checkpoint_dir=config.checkpoint_dir)
    else:
        echo(f"[pretrain] best trial {sweep['best_trial']} ({_params_text(sweep['best_params'])}), "
             f"{config.epochs} epochs")
    started = time.perf_counter()
    result = pretrain(config, progress=progress)
    echo(f"[pretrain] run {result['run_id'][:8]}: val_probe_auc {result.get('val_probe_auc', float('nan')):.4f}, "
         f"{time.perf_counter() - started:.0f} s")
    return result


def _label_efficiency(client: mlflow.MlflowClient, spec: PipelineSpec, encoder_uri: str, parent_id: str,
                      progress: bool, echo: Echo) -> dict[str, Any]:
    from mae_tracker.pipeline.label_efficiency import KIND as LABEL_EFFICIENCY, run_label_efficiency, same_plan

    plan = {"fractions": spec.fractions, "seeds": spec.seeds, "arms": spec.arms + spec.baselines,
            "overrides": spec.downstream, "baseline_overrides": spec.baseline, "fraction_overrides": spec.by_fraction}
    earlier = latest_child(client, parent_id, f"tags.kind = '{LABEL_EFFICIENCY}'")
    resume = ""
    if earlier is not None and same_plan(earlier.info.run_id, encoder_uri, **plan):
        resume = earlier.info.run_id
    elif earlier is not None:  # the pipeline file's downstream settings changed: a new grid of runs
        echo(f"[label efficiency] the pipeline file changed since run {earlier.info.run_id[:8]}: starting anew")
        client.set_tag(earlier.info.run_id, "superseded", "the pipeline file's downstream settings changed")
        if earlier.info.status == "RUNNING":
            client.set_terminated(earlier.info.run_id, "KILLED")
    echo(f"[label efficiency] {len(plan['arms'])} arms x {len(spec.fractions)} fractions x "
         f"{len(spec.seeds)} seeds" + (f" (continuing run {resume[:8]})" if resume else ""))
    return run_label_efficiency(encoder_uri, **plan, experiment=spec.experiment, resume=resume, progress=True)


def _report(client: mlflow.MlflowClient, spec: PipelineSpec, parent_id: str, efficiency_id: str,
            summary: pd.DataFrame, out_dir: str | Path | None, echo: Echo) -> str:
    """Results table (CSV + Markdown) on the pipeline parent; the full report when out_dir is given."""
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "pipeline_results.md"
        table.write_text(results.markdown(summary) + "\n")
        summary.to_csv(Path(tmp) / "pipeline_results.csv", index=False)
        client.log_artifact(parent_id, str(table))
        client.log_artifact(parent_id, str(Path(tmp) / "pipeline_results.csv"))
    if out_dir is None:
        return ""
    from mae_tracker.report import build_report

    paths = build_report(efficiency_id, Path(out_dir), log_to_mlflow=True)
    echo(f"[report] {paths.markdown} and {paths.html}")
    return str(paths.markdown)


# --- the pipeline's parent run ------------------------------------------------------------------

def _earlier_parent(client: mlflow.MlflowClient, spec: PipelineSpec, data: DataBinding) -> str | None:
    """The parent run of this pipeline from an earlier call (found by name), if it was made on the
    same data and split; ValueError (one line) if it was made on other data."""
    experiment = client.get_experiment_by_name(spec.experiment)
    if experiment is None:
        return None
    found = client.search_runs([experiment.experiment_id], f"tags.{PIPELINE_TAG} = '{spec.name}'", max_results=1,
                               order_by=["attributes.start_time DESC"])
    if not found:
        return None
    run = found[0]
    tags, params = run.data.tags, run.data.params
    logged = params.get("data", "")
    bound = DataBinding(str(Path(logged).resolve()) if logged else "?", tags.get(DIGEST_ATTR, "?"),
                        tags.get(SPLIT_ATTR, data.split))
    if DIGEST_ATTR not in tags and bound.path == data.path:
        return run.info.run_id  # a parent from before the binding knows only its path: the same
    if bound.differs_from(data):
        raise ValueError(f"{spec.path}: " + mismatch(
            f"pipeline {spec.name!r} (parent run {run.info.run_id})", bound, data,
            f"give {spec.path.name} another `name:` to start a new pipeline for this data (and "
            f"{spec.sweep.path.name} another `name:` if its sweep ran on the other data too)"))
    return run.info.run_id


def _open_parent(client: mlflow.MlflowClient, spec: PipelineSpec, data: DataBinding, earlier: str | None) -> str:
    """The pipeline's parent run: the earlier one (rerun = resume), else created."""
    experiment_id = tracking.ensure_experiment(spec.experiment)
    if earlier is not None:
        reopen(client, earlier)
        for key, value in ((DIGEST_ATTR, data.digest), (SPLIT_ATTR, data.split)):
            client.set_tag(earlier, key, value)
        return earlier
    run = client.create_run(experiment_id, run_name=spec.name,
                            tags={PIPELINE_TAG: spec.name, "kind": KIND, "arm": KIND, DIGEST_ATTR: data.digest,
                                  SPLIT_ATTR: data.split,
                                  "mlflow.note.content": spec.description or f"pipeline {spec.name}"})
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in {
        "data": data.path, "sweep": spec.sweep.name, "arms": ",".join(spec.arms),
        "baselines": ",".join(spec.baselines), "fractions": ",".join(f"{f:g}" for f in spec.fractions),
        "seeds": ",".join(str(s) for s in spec.seeds)}.items()])
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in (("pipeline.yaml", spec.text), ("sweep.yaml", spec.sweep.text)):
            (Path(tmp) / name).write_text(text)
            client.log_artifact(run.info.run_id, str(Path(tmp) / name))
    return run.info.run_id


@contextlib.contextmanager
def active_parent(client: mlflow.MlflowClient, parent_id: str) -> Iterator[None]:
    """Make the pipeline parent the active run, so that the arms' runs nest under it, then hand it
    back to ``closing`` still RUNNING (leaving mlflow's context would mark it FINISHED)."""
    tracking.start_existing_run(parent_id)
    try:
        yield
    finally:
        while (active := mlflow.active_run()) is not None:  # an arm's run left open by an error, then ours
            mlflow.end_run(status="FINISHED" if active.info.run_id == parent_id else "FAILED")
        client.update_run(parent_id, status="RUNNING")


def latest_child(client: mlflow.MlflowClient, parent_id: str, condition: str) -> Any:
    experiment_id = client.get_run(parent_id).info.experiment_id
    found = client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}' AND {condition}",
                               max_results=1, order_by=["attributes.start_time DESC"])
    return found[0] if found else None


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())


__all__ = ["run_pipeline", "KIND", "active_parent", "dataset_path", "latest_child"]
