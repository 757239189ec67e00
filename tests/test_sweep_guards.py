"""What keeps a sweep's study honest: one dataset and split per study, its parent run in the
current tracking store, no two processes drawing the same trial, and SIGTERM failing the
running trial at once. Real SQLite MLflow stores, real Optuna storages, real processes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import h5py
import mlflow
import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from mae_tracker.sweep.__main__ import main
from test_sweep import (ALWAYS_PRUNE, EXPERIMENT, child_runs, cli, finished, parent_runs, signal_a_running_trial,
                        storage_url, write_spec)


@pytest.fixture(scope="module")
def other_jets_file(jets_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same jets in another file whose bytes differ (one attribute): another sha256."""
    path = tmp_path_factory.mktemp("other-data") / "other.h5"
    shutil.copy(jets_file, path)
    with h5py.File(path, "a") as handle:
        handle.attrs["copied_from"] = str(jets_file)
    return path


def one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    # (MLflow may log that it created this session's store on first use)
    lines = [line for line in result.stderr.strip().splitlines() if " INFO mlflow." not in line]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_a_study_whose_parent_run_is_in_another_tracking_store_is_refused(tmp_path, jets_file):
    # A study started against another server (its runs, parent included, live there), and one
    # whose parent run was deleted here: neither is continued.
    client = mlflow.MlflowClient()
    deleted = client.create_run(client.create_experiment(f"deleted-{uuid.uuid4().hex[:8]}")).info.run_id
    client.delete_run(deleted)
    for name, parent, why in (("moved", uuid.uuid4().hex, "is not in"), ("gone", deleted, "was deleted from")):
        study = optuna.create_study(study_name=name, storage=storage_url(tmp_path), direction="maximize")
        study.set_user_attr("mlflow_parent_run_id", parent)
        spec_path = write_spec(tmp_path, jets_file, name)
        for extra in ([], ["--worker"]):
            line = one_line_error([str(spec_path), "--storage", storage_url(tmp_path), *extra])
            assert f"study {name!r} belongs to MLflow parent run {parent}, which {why} the tracking store" in line
            assert "start a new study" in line
        study = optuna.load_study(study_name=name, storage=storage_url(tmp_path))
        assert study.trials == [] and study.user_attrs == {"mlflow_parent_run_id": parent}  # nothing written
        here = client.get_experiment_by_name(EXPERIMENT)
        assert here is None or not parent_runs(name)


@pytest.mark.slow
def test_two_sweeps_started_together_on_a_new_study_draw_different_trials(tmp_path, jets_file):
    spec_path = write_spec(tmp_path, jets_file, "together", pruner=ALWAYS_PRUNE, n_trials=2)
    args = [str(spec_path), "--storage", storage_url(tmp_path)]
    procs = [cli(args, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    # Each process ran one of the two trials, at the same time as the other.
    assert [sum(line.startswith("[together] trial ") for line in out.splitlines()) for out in outs] == [1, 1], outs

    study = optuna.load_study(study_name="together", storage=storage_url(tmp_path))
    ran = [t for t in study.trials if "mlflow_run_id" in t.user_attrs]
    assert len(finished(study)) == 2 and len(ran) == 2
    assert ran[0].params != ran[1].params
    seeds = [t.user_attrs["sampler_seed"] for t in study.trials]
    assert len(set(seeds)) == len(seeds)
    (parent,) = parent_runs("together")  # one parent run for both
    assert set(child_runs(parent.info.run_id)) == {"trial-0", "trial-1"}


@pytest.mark.slow
def test_sigterm_fails_the_trial_at_once_and_the_study_keeps_its_data(tmp_path, jets_file, other_jets_file):
    spec_path = write_spec(tmp_path, jets_file, "stopped", pruner=ALWAYS_PRUNE, n_trials=1)
    args = [str(spec_path), "--storage", storage_url(tmp_path)]
    proc, victim, output = signal_a_running_trial(args, tmp_path, signal.SIGTERM)
    assert victim is not None and proc.returncode == 143, f"exit {proc.returncode}:\n{output}"

    # At once, with no rerun: the trial FAIL, its runs and the parent KILLED, saying why.
    client = mlflow.MlflowClient()
    study = optuna.load_study(study_name="stopped", storage=storage_url(tmp_path))
    trial = study.trials[victim]
    assert trial.state == TrialState.FAIL
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert (run.info.status, run.data.tags["optuna_state"]) == ("KILLED", "FAIL")
    assert "SIGTERM" in run.data.tags["end_reason"]
    assert all(child.info.status != "RUNNING" for child in child_runs(run.info.run_id).values())
    (parent,) = parent_runs("stopped")
    assert parent.info.status == "KILLED" and "SIGTERM" in parent.data.tags["end_reason"]

    # The study is bound to its first file and split: another one is a one-line error, nothing written.
    line = one_line_error(args + ["--data", str(other_jets_file)])
    assert str(jets_file) in line and str(other_jets_file) in line and "another file" in line
    assert "--study-name stopped-" in line
    (tmp_path / "split").mkdir()
    split_spec = write_spec(tmp_path / "split", jets_file, "stopped", fixed={
        **yaml.safe_load(spec_path.read_text())["fixed"], "split_seed": 1})
    line = one_line_error([str(split_spec), "--storage", storage_url(tmp_path)])
    assert "another split" in line and "seed 0," in line and "seed 1," in line
    assert len(optuna.load_study(study_name="stopped", storage=storage_url(tmp_path)).trials) == len(study.trials)
    assert client.get_run(parent.info.run_id).info.status == "KILLED"

    # The rerun completes the study; its parent no longer carries the old end_reason.
    rerun = cli(args, tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out[-3000:]
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED" and "end_reason" not in parent.data.tags
    assert len(finished(optuna.load_study(study_name="stopped", storage=storage_url(tmp_path)))) == 1

    # A study from before the binding is bound to what its first trial's pretrain run logged.
    study = optuna.load_study(study_name="stopped", storage=storage_url(tmp_path))
    study.set_user_attr("data_sha256", "")
    line = one_line_error(args + ["--data", str(other_jets_file)])
    assert str(jets_file) in line and str(other_jets_file) in line
