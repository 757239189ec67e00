"""`mlflow run . -e <arm> --env-manager local` and the `mae-tracker` arms, end to end."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import h5py
import mlflow
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from mae_tracker.cli import main
from mae_tracker.train.config import ARM_DEFAULTS, DownstreamConfig, PretrainConfig
from mae_tracker.train.saved_model import load_model

ROOT = Path(__file__).resolve().parents[1]
NOT_PARAMS = {"experiment", "run_name", "resume", "checkpoint_dir", "arm"}  # see scripts/write_mlproject.py


def test_mlproject_mirrors_the_configs():
    spec = yaml.safe_load((ROOT / "MLproject").read_text())
    assert spec["conda_env"] == "conda.yaml" and (ROOT / "conda.yaml").exists()
    for arm, config_cls in (("pretrain", PretrainConfig), ("finetune", DownstreamConfig),
                            ("probe", DownstreamConfig), ("scratch", DownstreamConfig)):
        entry = spec["entry_points"][arm]
        fields = {f.name: f for f in dataclasses.fields(config_cls) if f.name not in NOT_PARAMS}
        assert set(entry["parameters"]) == set(fields), arm
        for name, field in fields.items():
            default = ARM_DEFAULTS.get(arm, {}).get(name, field.default)
            declared = entry["parameters"][name]["default"]
            if isinstance(default, bool):
                declared = {"true": True, "false": False}[declared]
            assert declared == default, (arm, name)
            assert f"--{name.replace('_', '-')} {{{name}}}" in entry["command"], (arm, name)
        assert entry["command"].startswith(f"python -m mae_tracker {arm}")


def _mlflow_run(arm: str, params: dict[str, object], env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "-e", arm, "--env-manager",
               "local", "--experiment-name", "entry-points"]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_mlflow_run_all_four_arms(jets_file):
    # mlflow.set_experiment() in earlier tests exports MLFLOW_EXPERIMENT_ID; the launcher must not see it
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    tiny = {"data": jets_file, "epochs": 1, "batch_size": 32, "seed": 5, "num_threads": 2}
    done = _mlflow_run("pretrain", {**tiny, "image_jets": 1, "eval_jets": 64}, env)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["entry-points"], output_format="list")
    assert len(runs) == 1
    pretrain_run = runs[0]
    assert pretrain_run.info.status == "FINISHED"
    assert pretrain_run.data.params["epochs"] == "1" and "test_loss" in pretrain_run.data.metrics
    assert pretrain_run.data.tags["mlflow.project.entryPoint"] == "pretrain"
    encoder_uri = f"runs:/{pretrain_run.info.run_id}/encoder"
    for arm in ("finetune", "probe", "scratch"):
        done = _mlflow_run(arm, {**tiny, "encoder_uri": encoder_uri}, env)
        assert done.returncode == 0, (arm, done.stderr[-3000:])
    runs = mlflow.search_runs(experiment_names=["entry-points"], output_format="list")
    by_arm = {run.data.tags.get("arm"): run for run in runs}
    assert set(by_arm) == {"pretrain", "finetune", "probe", "scratch"}
    for arm in ("finetune", "probe", "scratch"):
        run = by_arm[arm]
        assert run.info.status == "FINISHED"
        assert 0.0 <= run.data.metrics["test_auc"] <= 1.0
        assert run.data.tags["pretrain_run_id"] == pretrain_run.info.run_id
        assert load_model(f"runs:/{run.info.run_id}/classifier", kind="tagger")[0] is not None


def _nan_file(path: Path) -> Path:
    images = np.zeros((64, 32, 32, 3), np.float32)
    images[10, 5, 5, 1] = np.nan
    with h5py.File(path, "w") as f:
        f["X_jets"] = images
        f["y"] = np.arange(64) % 2
    return path


@pytest.mark.parametrize("arm", ["pretrain", "finetune", "probe", "scratch"])
def test_bad_data_gives_one_line_error_through_every_arm(arm, tmp_path):
    bad = _nan_file(tmp_path / "nan.h5")
    runs_before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    args = [arm, "--data", str(bad), "--no-progress"]
    if arm in ("finetune", "probe"):
        args += ["--encoder-uri", "runs:/0123456789abcdef/encoder"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert str(bad) in message and "NaN" in message
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == runs_before, "no run is opened for bad data"


def test_missing_encoder_is_a_clear_error(jets_file):
    result = CliRunner().invoke(main, ["probe", "--data", str(jets_file), "--no-progress",
                                       "--encoder-uri", "runs:/0123456789abcdef/encoder"])
    assert result.exit_code != 0
    assert "cannot load encoder" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_ctrl_c_marks_the_run_killed_and_keeps_the_checkpoint(jets_file, tmp_path):
    """A real SIGINT to a running `mae-tracker pretrain`, as Ctrl-C in a terminal sends."""
    import signal
    import time

    checkpoints = tmp_path / "ckpt"
    process = subprocess.Popen(
        [sys.executable, "-m", "mae_tracker", "pretrain", "--data", str(jets_file), "--epochs", "200",
         "--batch-size", "32", "--image-every", "0", "--experiment", "ctrl-c", "--checkpoint-dir",
         str(checkpoints), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Started from a background job of a non-interactive shell, this process (and so the
        # child) would inherit SIGINT as ignored, and Ctrl-C could not be tested.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("*/checkpoint.pt")) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-2000:]
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    run = mlflow.search_runs(experiment_names=["ctrl-c"], output_format="list")[0]
    assert run.info.status == "KILLED"
    assert f"--resume {run.info.run_id}" in run.data.tags["end_reason"]
    assert (checkpoints / run.info.run_id / "checkpoint.pt").exists()
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert not logged, "no model from an interrupted run"


@pytest.mark.slow
def test_mlflow_run_sweep_makes_the_launchers_run_the_parent(jets_file, tmp_path):
    spec = {"name": "entry-point-sweep", "experiment": "ignored-under-mlflow-run", "method": "random", "seed": 0,
            "metric": {"name": "val_auc", "goal": "maximize"}, "objective": "probe", "n_trials": 1,
            "pruner": {"type": "none"}, "parameters": {"mask_ratio": {"values": [0.6, 0.75]}},
            "fixed": {"epochs": 1, "batch_size": 32, "image_every": 0, "image_jets": 1, "eval_jets": 64,
                      "probe_train_jets": 64, "probe_val_jets": 64},
            "downstream": {"epochs": 1, "batch_size": 32}, "promote": False}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(spec))
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env["MAE_TRACKER_OPTUNA_STORAGE"] = f"sqlite:///{tmp_path / 'optuna.db'}"
    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(ROOT), "-e", "sweep", "--env-manager",
               "local", "--experiment-name", "entry-point-sweep", "-P", f"config={config}",
               "-P", f"data={jets_file}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = mlflow.search_runs(experiment_names=["entry-point-sweep"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, "the launcher's run is the sweep's parent: no second top-level run"
    parent = parents[0]
    assert parent.data.tags["sweep_study"] == "entry-point-sweep" and parent.info.status == "FINISHED"
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert [t.data.tags["mlflow.runName"] for t in trials] == ["trial-0"]
    arms = {r.data.tags.get("arm") for r in runs if r.data.tags.get("mlflow.parentRunId") == trials[0].info.run_id}
    assert arms == {"pretrain", "probe"}
    assert mlflow.get_experiment_by_name("ignored-under-mlflow-run") is None
