"""The end of a sweep: best trial, figures and trials.csv on the parent run, promotion, then the
table of every trial in the parent run's description (table.py)."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")  # figures are files; no display on a worker or CI machine

import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from mae_tracker.sweep.parent import set_parent_tag  # noqa: E402
from mae_tracker.sweep.promotion import promote_from_sweep  # noqa: E402
from mae_tracker.sweep.spec import SweepSpec  # noqa: E402
from mae_tracker.sweep.summary import summarize  # noqa: E402
from mae_tracker.sweep.table import record_table  # noqa: E402
from mae_tracker.ui_links import run_where  # noqa: E402

PROMOTED_TAG = "promoted_pretrain_run_id"


def finish(study: optuna.Study, spec: SweepSpec, url: str, parent_id: str,
           echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Record the outcome on the parent run and promote the best encoder; returns the summary."""
    client = mlflow.MlflowClient()
    summary = summarize(study, spec, url, parent_id)
    finished = sum(summary["states"].get(s, 0) for s in ("COMPLETE", "PRUNED"))
    set_parent_tag(client, parent_id, "sweep_status", f"{finished} of {spec.n_trials} trials finished "
                   + ", ".join(f"{n} {state.lower()}" for state, n in sorted(summary["states"].items())))
    if "best_trial" in summary:
        _record_best(client, study, spec, parent_id)
    summary["figures"], summary["skipped"] = log_figures(client, study, parent_id)
    for note in summary["skipped"]:
        echo(f"[{spec.name}] {note}")
    _log_trials_csv(client, study, parent_id)
    echo(_summary_line(spec, summary))
    echo(f"[{spec.name}] view the sweep: {run_where(parent_id)}")
    if spec.promote and "best_trial" in summary:
        summary["promotion"] = promote_best(client, study, spec, parent_id, echo)
    # After the promotion: the table marks the registry's champion as it now stands.
    summary["table"] = record_table(client, study, spec, parent_id)
    return summary


def _record_best(client: mlflow.MlflowClient, study: optuna.Study, spec: SweepSpec, parent_id: str) -> None:
    # Only COMPLETE trials are candidates (study.best_trial ignores pruned and failed ones).
    # Tags, not params: the best trial can change when the sweep is continued, and MLflow
    # params cannot be changed once logged.
    best = study.best_trial
    tags = {"best_trial": str(best.number), f"best_{spec.metric}": f"{best.value:.6g}",
            **{f"best_params.{k}": str(v) for k, v in best.params.items()}}
    for key in ("mlflow_run_id", "pretrain_run_id", "encoder_uri"):
        if best.user_attrs.get(key):
            tags[f"best_{key.replace('mlflow_', 'trial_')}"] = best.user_attrs[key]
    for key, value in tags.items():
        set_parent_tag(client, parent_id, key, value)
    client.log_metric(parent_id, f"best_{spec.metric}", best.value)


def log_figures(client: mlflow.MlflowClient, study: optuna.Study, parent_id: str) -> tuple[list[str], list[str]]:
    """Optimisation history, parameter importances, parallel coordinates and slice plots.

    Returns (logged artifact paths, notes about skipped figures)."""
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varying = [name for name in {k for t in complete for k in t.params}
               if len({repr(t.params.get(name)) for t in complete}) > 1]
    plots: dict[str, Callable[[], Any]] = {}
    skipped: list[str] = []
    if complete:
        plots["optimization_history"] = lambda: ovm.plot_optimization_history(study)
        plots["slice"] = lambda: ovm.plot_slice(study)
        plots["parallel_coordinate"] = lambda: ovm.plot_parallel_coordinate(study)
    else:
        skipped.append("no complete trial: no figures")
    # Importances need a spread to explain: with one varying parameter it is trivially 1.
    if len(complete) >= 2 and len(varying) > 1:
        plots["param_importances"] = lambda: ovm.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    elif complete:
        skipped.append(f"parameter importances skipped: {len(complete)} complete trial(s), "
                       f"{len(varying)} varying parameter(s); needs >= 2 and > 1")
    logged = []
    with warnings.catch_warnings():  # optuna's matplotlib backend is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, make in plots.items():
            try:
                axes = make()
            except (ValueError, RuntimeError) as err:  # e.g. too few trials for that plot
                skipped.append(f"{name} skipped: {err}")
                continue
            fig = np.ravel(axes)[0].figure
            if name == "slice":  # one panel per parameter plus the colour bar: give each room
                fig.set_size_inches(3.5 * len(np.ravel(axes)) + 1.5, 4.8)
                for ax in np.ravel(axes):  # log axes label minor ticks too; tilt them apart
                    ax.tick_params(axis="x", which="both", labelrotation=45)
            # No tight_layout: it moves optuna's colour bars onto the plots; crop when saving.
            client.log_figure(parent_id, fig, f"figures/{name}.png", save_kwargs={"bbox_inches": "tight", "dpi": 110})
            plt.close(fig)
            logged.append(f"figures/{name}.png")
    return logged, skipped


def _log_trials_csv(client: mlflow.MlflowClient, study: optuna.Study, parent_id: str) -> None:
    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration",
                                          "datetime_start", "datetime_complete"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trials.csv"
        frame.to_csv(path, index=False)
        client.log_artifact(parent_id, str(path))


def _summary_line(spec: SweepSpec, summary: dict[str, Any]) -> str:
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary["states"].items()))
    best = "no complete trial"
    if "best_trial" in summary:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in summary["best_params"].items())
        best = f"best trial {summary['best_trial']}: {spec.metric}={summary['best_value']:.4f} ({params})"
    return f"[{spec.name}] done: {states}; {best}; parent run {summary['parent_run_id']}"


def promote_best(client: mlflow.MlflowClient, study: optuna.Study, spec: SweepSpec, parent_id: str,
                 echo: Callable[[str], None]) -> dict[str, Any]:
    """Offer the best COMPLETE trial's encoder to the registry (champion/challenger there)."""
    best = study.best_trial
    pretrain_run_id = best.user_attrs.get("pretrain_run_id")
    if not pretrain_run_id:
        echo(f"[{spec.name}] promotion skipped: best trial {best.number} has no pretrain run id")
        return {"skipped": "no pretrain run id"}
    if client.get_run(parent_id).data.tags.get(PROMOTED_TAG) == pretrain_run_id:
        echo(f"[{spec.name}] promotion: trial {best.number}'s encoder was already offered by this sweep")
        return {"skipped": "already promoted"}
    try:
        result = promote_from_sweep(pretrain_run_id, metric=spec.metric, value=float(best.value),
                                    study=spec.name, trial=best.number, goal=spec.goal)
    except Exception as err:  # the sweep's results stand; say why the encoder was not registered
        echo(f"[{spec.name}] promotion failed: {err}")
        set_parent_tag(client, parent_id, "promotion", f"failed: {err}"[:4000])
        return {"error": str(err)}
    echo(f"[{spec.name}] promotion: {result.registered_model} v{result.version} @{result.alias}: {result.reason}")
    set_parent_tag(client, parent_id, PROMOTED_TAG, pretrain_run_id)
    set_parent_tag(client, parent_id, "promotion", f"{result.registered_model} v{result.version} "
                                           f"@{result.alias}: {result.reason}"[:4000])
    return {"registered_model": result.registered_model, "version": result.version, "alias": result.alias,
            "reason": result.reason}
