"""Optuna sweeps: study + MLflow run tree, pruning, resume, workers, a killed worker, bad YAML.

Trials are tiny (2 epochs of ~500 jets, batch 32, 64-jet probe monitor). Where a test only
needs trials to *finish*, a threshold pruner prunes them after epoch 0, the cheapest trial.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from mae_tracker.sweep.__main__ import main
from mae_tracker.sweep.runner import run_sweep
from mae_tracker.sweep.spec import SweepSpecError, load_spec
from mae_tracker.sweep.storage import default_storage_url, mask_password

EXPERIMENT = "sweep-tests"
ALWAYS_PRUNE = {"type": "threshold", "lower": 1.1}  # an AUC never reaches 1.1: prune after epoch 0


def write_spec(tmp_path: Path, jets_file: Path, name: str, **changes: Any) -> Path:
    spec: dict[str, Any] = {
        "name": name, "experiment": EXPERIMENT, "method": "random", "seed": 0, "n_trials": 3,
        "metric": {"name": "val_auc", "goal": "maximize"}, "objective": "probe", "pruner": {"type": "none"},
        "parameters": {"mask_ratio": {"distribution": "uniform", "min": 0.5, "max": 0.9},
                       "lr": {"distribution": "log_uniform", "min": 3.0e-4, "max": 3.0e-3}},
        "fixed": {"data": str(jets_file), "epochs": 2, "batch_size": 32, "depth": 2, "probe_train_jets": 64,
                  "probe_val_jets": 64, "eval_jets": 64, "image_every": 0, "num_threads": 1},
        "downstream": {"epochs": 2, "batch_size": 32},
        "heartbeat": {"interval": 1, "grace_period": 3, "max_retry": 1},
        "promote": False,
    }
    spec.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def storage_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def parent_runs(name: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], f"tags.sweep_study = '{name}'")


def child_runs(parent_id: str) -> dict[str, mlflow.entities.Run]:
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {run.info.run_name: run for run in runs}


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def cli(args: list[str], cwd: Path, **popen: Any) -> subprocess.Popen:
    """`python -m mae_tracker.sweep` as a user starts it: the test session's stores, default
    SIGINT handling even when pytest runs as a background job, no inherited MLflow run."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
    return subprocess.Popen([sys.executable, "-m", "mae_tracker.sweep", *args], cwd=cwd, env=env, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)


class PruneTrialOne(optuna.pruners.BasePruner):
    """Prunes trial 1 after its first epoch and nothing else: one pruned, two complete."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 1


@pytest.mark.slow
def test_three_trial_sweep_builds_the_study_and_the_run_tree(tmp_path, jets_file, capsys):
    spec_path = write_spec(tmp_path, jets_file, "three", promote=True)
    summary = run_sweep(spec_path, storage=storage_url(tmp_path), pruner=PruneTrialOne())

    study = optuna.load_study(study_name="three", storage=storage_url(tmp_path))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    assert summary["states"] == {"COMPLETE": 2, "PRUNED": 1}
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[three] trial ")]
    assert len(lines) == 3 and "| PRUNED |" in lines[1] and "mask_ratio=" in lines[0] and "best " in lines[2]

    (parent,) = parent_runs("three")
    assert parent.info.status == "FINISHED" and parent.data.params["n_trials"] == "3"
    assert parent.data.params["objective"] == "probe" and parent.data.tags["sweep_storage"] == storage_url(tmp_path)
    children = child_runs(parent.info.run_id)
    assert set(children) == {"trial-0", "trial-1", "trial-2"}
    pruned = children["trial-1"]
    assert (pruned.info.status, pruned.data.tags["optuna_state"]) == ("KILLED", "PRUNED")
    client = mlflow.MlflowClient()
    for number in (0, 2):
        run = children[f"trial-{number}"]
        trial = study.trials[number]
        assert (run.info.status, run.data.tags["optuna_state"]) == ("FINISHED", "COMPLETE")
        assert float(run.data.params["mask_ratio"]) == pytest.approx(trial.params["mask_ratio"])
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_probe_auc")] == [0, 1]
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert trial.user_attrs["encoder_uri"] == f"runs:/{trial.user_attrs['pretrain_run_id']}/encoder"
        arms = child_runs(run.info.run_id)  # the arms' runs nest under the trial
        assert set(arms) == {f"trial-{number}-pretrain", f"trial-{number}-probe"}
        assert run.data.metrics["val_auc"] == pytest.approx(trial.value)

    best = study.best_trial
    assert parent.data.tags["best_trial"] == str(best.number)
    assert parent.data.metrics["best_val_auc"] == pytest.approx(best.value)
    assert parent.data.tags["best_encoder_uri"] == best.user_attrs["encoder_uri"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    artifacts |= {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert {"sweep.yaml", "trials.csv", "figures/param_importances.png",
            "figures/optimization_history.png", "figures/parallel_coordinate.png"} <= artifacts
    csv = Path(client.download_artifacts(parent.info.run_id, "trials.csv", str(tmp_path)))
    assert len(csv.read_text().splitlines()) == 1 + 3
    assert summary["promotion"].get("alias") in ("champion", "challenger"), summary["promotion"]
    check_trial_table(client, parent.info.run_id, study, summary, tmp_path)

    # Running the finished sweep again adds no trial and reuses its parent run.
    again = run_sweep(spec_path, storage=storage_url(tmp_path))
    assert len(optuna.load_study(study_name="three", storage=storage_url(tmp_path)).trials) == 3
    assert again["parent_run_id"] == parent.info.run_id and len(parent_runs("three")) == 1


def check_trial_table(client: mlflow.MlflowClient, parent_id: str, study: optuna.Study, summary: dict[str, Any],
                      tmp_path: Path) -> None:
    """The parent's description says who won and whether the ranking means anything."""
    note = client.get_run(parent_id).data.tags["mlflow.note.content"]
    assert note == summary["table"]
    rows = [line for line in note.splitlines() if line.startswith("| ") and not line.startswith("| trial ")]
    assert len(rows) == 3, note
    best = study.best_trial
    for trial, row in zip(study.trials, rows):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert trial.state.name in cells and f"{trial.params['mask_ratio']:.4g}" in cells
        assert f"{trial.params['lr']:.4g}" in cells
        assert f"[{trial.number}](http" in row and "workflowType=machine_learning" in row  # the training view
        assert ("W" in cells[-1]) == (trial.number == best.number)
        if trial.state == TrialState.COMPLETE:
            assert f"{trial.value:.4g}" in row and "(epoch 1)" in row
    if summary["promotion"]["alias"] == "champion":
        assert "C" in [c.strip() for c in rows[best.number].strip("|").split("|")][-1]
    assert f"**Winner:** trial {best.number} (val_auc {best.value:.4g} ± " in note
    assert "**Champion:** mae-" in note
    # Both complete trials' probe runs logged best_val_auc_se: the margin is set beside the noise.
    second = next(t for t in study.trials if t.state == TrialState.COMPLETE and t.number != best.number)
    assert f"by {abs(best.value - second.value):.4g} in val_auc" in note
    assert "noise of the comparison 1.96 x sqrt(se1^2 + se2^2) = " in note and "the noise" in note
    assert "MEANINGLESS: only 2 complete trials (below 10)" in note
    csv = Path(client.download_artifacts(parent_id, "report/trials_table.csv", str(tmp_path)))
    assert len(csv.read_text().splitlines()) == 1 + 3 and "val_auc_se" in csv.read_text().splitlines()[0]


@pytest.mark.slow
def test_a_stopped_sweep_continues_to_the_requested_total(tmp_path, jets_file):
    spec_path = write_spec(tmp_path, jets_file, "resume", pruner=ALWAYS_PRUNE)
    first = run_sweep(spec_path, storage=storage_url(tmp_path), n_trials=1)
    assert first["states"] == {"PRUNED": 1}
    second = run_sweep(spec_path, storage=storage_url(tmp_path))
    study = optuna.load_study(study_name="resume", storage=storage_url(tmp_path))
    assert [t.number for t in finished(study)] == [0, 1, 2] and len(study.trials) == 3
    # A resumed sampler does not redraw the first trial's parameters.
    assert len({t.params["mask_ratio"] for t in study.trials}) == 3
    assert second["parent_run_id"] == first["parent_run_id"] and len(parent_runs("resume")) == 1
    assert set(child_runs(first["parent_run_id"])) == {"trial-0", "trial-1", "trial-2"}


@pytest.mark.slow
def test_two_worker_processes_share_one_study(tmp_path, jets_file):
    spec_path = write_spec(tmp_path, jets_file, "workers", pruner=ALWAYS_PRUNE, n_trials=4)
    proc = cli([str(spec_path), "--storage", storage_url(tmp_path), "--n-workers", "2"], tmp_path,
               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="workers", storage=storage_url(tmp_path))
    done = finished(study)
    assert len(done) == 4 and len({t.number for t in done}) == 4
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert len({tuple(t.params.values()) for t in done}) == 4  # workers draw different parameters
    assert len([line for line in out.splitlines() if line.startswith("[workers] trial ")]) == 4
    (parent,) = parent_runs("workers")
    assert len(child_runs(parent.info.run_id)) == 4


def signal_a_running_trial(args: list[str], tmp_path: Path, sig: int) -> tuple[subprocess.Popen, int | None, str]:
    """Start a sweep, send ``sig`` once one of its trials runs with its MLflow run, and wait for
    it: (the process, the trial's number or None if none was seen, the end of its output)."""
    with open(tmp_path / "first.log", "w") as log:
        proc = cli(args, tmp_path, stdout=log, stderr=subprocess.STDOUT)
    victim = None
    deadline = time.time() + 300
    while victim is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
        victim = running_trial_with_a_run(tmp_path / "optuna.db")
    if victim is not None:
        os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    return proc, victim, (tmp_path / "first.log").read_text()[-3000:]


def running_trial_with_a_run(db_path: Path) -> int | None:
    """The number of a RUNNING trial whose MLflow run exists, read through a read-only
    connection: `optuna.load_study` would create the schema itself if it came while the
    sweep was creating it, and the two creators could break the sweep."""
    if not db_path.exists():
        return None
    try:
        with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)) as db:
            row = db.execute("SELECT t.number FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id"
                             " WHERE t.state = 'RUNNING' AND a.key = 'mlflow_run_id'").fetchone()
    except sqlite3.OperationalError:  # no tables yet, or locked for a moment
        return None
    return None if row is None else row[0]


@pytest.mark.slow
def test_a_killed_worker_fails_its_trial_and_the_rerun_completes(tmp_path, jets_file):
    spec_path = write_spec(tmp_path, jets_file, "killed", pruner=ALWAYS_PRUNE, n_trials=2)
    args = [str(spec_path), "--storage", storage_url(tmp_path)]
    proc, victim, output = signal_a_running_trial(args, tmp_path, signal.SIGKILL)
    assert victim is not None, f"no trial was seen running (exit {proc.returncode}):\n{output}"
    study = optuna.load_study(study_name="killed", storage=storage_url(tmp_path))
    assert study.trials[victim].state == TrialState.RUNNING  # nobody is left to say otherwise

    # Rerun at once, as a user would: the dead trial is failed as soon as its heartbeat is
    # older than the grace period (3 s), at start or while the rerun waits for it.
    rerun = cli(args, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="killed", storage=storage_url(tmp_path))
    assert study.trials[victim].state == TrialState.FAIL
    assert len(finished(study)) == 2
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim]
    assert retried and retried[0].params == study.trials[victim].params
    dead_run = mlflow.MlflowClient().get_run(study.trials[victim].user_attrs["mlflow_run_id"])
    assert dead_run.info.status == "FAILED" and dead_run.data.tags["optuna_state"] == "FAIL"
    assert all(run.info.status != "RUNNING" for run in child_runs(dead_run.info.run_id).values())
    (parent,) = parent_runs("killed")
    assert parent.info.status == "FINISHED"


BAD_SPECS = {
    "unknown key": ({"n_trails": 3}, "n_trails: unknown key"),
    "empty range": ({"parameters": {"mask_ratio": {"distribution": "uniform", "min": 0.9, "max": 0.9}}},
                    "parameters.mask_ratio: empty range"),
    "bad distribution": ({"parameters": {"lr": {"distribution": "gaussian", "min": 1e-4, "max": 1e-3}}},
                         "parameters.lr.distribution: 'gaussian' is not allowed"),
    "not a config field": ({"parameters": {"mask": {"values": [0.5]}}}, "not a searchable PretrainConfig field"),
    "grid of ranges": ({"method": "grid"}, "method grid needs every parameter as a list"),
    "missing data": ({"fixed": {"data": "/nonexistent/jets.h5"}}, "fixed.data: no such file"),
    # Search spaces obey the config fields' ranges (they ran as FAILED trials under a FINISHED parent).
    "mask ratio range": ({"parameters": {"mask_ratio": {"min": 0.5, "max": 1.5}}},
                         "parameters.mask_ratio.max: 1.5 is outside the allowed range: 0 < mask_ratio < 1"),
    "negative depth": ({"parameters": {"depth": {"distribution": "int", "min": -3, "max": -1}}},
                       "parameters.depth.min: -3 is outside the allowed range: depth >= 0 (0 = the variant's)"),
    "listed value": ({"parameters": {"lr": [1e-3, 0.0]}},
                     "parameters.lr.values: 0.0 is outside the allowed range: lr > 0"),
    "fixed value": ({"fixed": {"epochs": 0}}, "fixed.epochs: 0 is outside the allowed range: epochs >= 1"),
    "split searched": ({"parameters": {"split_seed": [0, 1]}}, "parameters.split_seed: not a searchable"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_yaml_is_one_line_and_writes_nothing(tmp_path, jets_file, case):
    changes, message = BAD_SPECS[case]
    spec_path = write_spec(tmp_path, jets_file, "bad", **changes)
    result = CliRunner().invoke(main, [str(spec_path), "--storage", storage_url(tmp_path)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {spec_path}: ") and message in lines[0]
    assert not (tmp_path / "optuna.db").exists()


def test_bad_yaml_exits_non_zero_from_the_module(tmp_path, jets_file):
    spec_path = write_spec(tmp_path, jets_file, "bad", n_trails=3)
    proc = cli([str(spec_path), "--storage", storage_url(tmp_path)], tmp_path,
               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err.strip() == f"Error: {spec_path}: n_trails: unknown key; allowed: " \
        "name, experiment, method, seed, metric, objective, n_trials, pruner, parameters, fixed, downstream, " \
        "promote, heartbeat, description"
    assert not (tmp_path / "optuna.db").exists() and not list(tmp_path.glob("mlruns"))


def test_a_worker_needs_a_started_sweep(tmp_path, jets_file):
    spec_path = write_spec(tmp_path, jets_file, "nostudy")
    result = CliRunner().invoke(main, [str(spec_path), "--worker", "--storage", storage_url(tmp_path)])
    assert result.exit_code == 1 and "start the sweep without --worker first" in result.stderr
    assert not (tmp_path / "optuna.db").exists()


def test_shipped_sweeps_are_valid():
    root = Path(__file__).resolve().parents[1] / "sweeps"
    # pipeline files (test_pipeline's) and scaling studies (test_scaling's) are not sweeps
    studies = {path for path in root.glob("*.yaml")
               if {"sweep", "pretrain_jets"} & set(yaml.safe_load(path.read_text()))}
    specs = {path.stem: load_spec(path) for path in root.glob("*.yaml") if path not in studies}
    assert {"quick", "mask-ratio", "full"} <= set(specs)
    assert specs["quick"].n_trials >= 3 and {"mask_ratio", "depth", "lr"} <= set(specs["quick"].parameters)
    grid = specs["mask-ratio"]
    assert grid.method == "grid" and grid.n_trials == len(grid.parameters["mask_ratio"].values) >= 5
    assert specs["full"].pruner == "hyperband" and "variant" in specs["full"].parameters


def test_spec_details(tmp_path, jets_file):
    path = write_spec(tmp_path, jets_file, "details", method="grid", n_trials=None,
                      parameters={"mask_ratio": [0.5, 0.75], "variant": {"values": ["vit-nano", "hybrid-nano"]}},
                      objective="reconstruction", metric={"name": "train_eval_loss", "goal": "minimize"})
    path.write_text(path.read_text().replace("n_trials: null\n", ""))
    spec = load_spec(path)
    assert spec.n_trials == 4 and spec.goal == "minimize" and spec.monitor_key == "train_eval_loss"
    path = write_spec(tmp_path, jets_file, "details", parameters={"lr": {"distribution": "log_uniform",
                                                                          "min": "3e-4", "max": "3e-3"}})
    assert load_spec(path).parameters["lr"].low == pytest.approx(3e-4)  # YAML reads 3e-4 as a string
    path = write_spec(tmp_path, jets_file, "details", parameters={"decoder_depth": [1, 2, 3],
                                                                  "embed_dim": {"distribution": "int", "min": 32,
                                                                                "max": 128, "log": True}})
    parameters = load_spec(path).parameters
    assert parameters["decoder_depth"].values == (1, 2, 3) and parameters["embed_dim"].log
    with pytest.raises(SweepSpecError, match="objective probe"):
        load_spec(write_spec(tmp_path, jets_file, "details", metric={"name": "train_eval_loss"}))


def test_storage_urls():
    assert mask_password("postgresql+psycopg2://alice:s3cr%40t@db.lab:5432/optuna") == \
        "postgresql+psycopg2://alice:***@db.lab:5432/optuna"
    assert mask_password("sqlite:////data/optuna.db") == "sqlite:////data/optuna.db"
    assert default_storage_url("sqlite:////data/runs/mlflow.db") == "sqlite:////data/runs/optuna.db"
    # A server's study storage is its own (one shared file let a new server "resume" another's study).
    cache = Path(os.environ["MAE_TRACKER_CACHE"]).resolve() / "optuna"
    server = default_storage_url("http://127.0.0.1:5000")
    assert server.startswith(f"sqlite:///{cache}/http-127.0.0.1-5000-") and server.endswith(".db")
    assert default_storage_url("http://alice:s3cret@127.0.0.1:5000/") == server  # credentials are not the store
    assert len({server, default_storage_url("http://127.0.0.1:5001"), default_storage_url("https://mlflow.lab"),
                default_storage_url("postgresql://u:pw@db/mlflow")}) == 4
    assert "pw" not in default_storage_url("postgresql://u:pw@db/mlflow")
