"""The one MLflow layer: where experiments keep their artifacts, how arm runs nest, how they end."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest

from mae_tracker.train import tracking
from mae_tracker.train.config import PretrainConfig
from mae_tracker.train.pretrain import pretrain


def test_new_experiment_keeps_artifacts_beside_the_store_and_opens_as_model_training(tmp_path, monkeypatch):
    store = tmp_path / "store" / "mlflow.db"
    store.parent.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.chdir(tmp_path)
    experiment_id = tracking.ensure_experiment("kind-and-location")
    assert tracking.ensure_experiment("kind-and-location") == experiment_id  # idempotent
    experiment = mlflow.MlflowClient().get_experiment(experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert Path(experiment.artifact_location.removeprefix("file://")) == store.parent / "mlartifacts"
    with tracking.tracked_run("kind-and-location") as run:
        mlflow.log_text("x", "note.txt")
    assert (store.parent / "mlartifacts" / run.info.run_id / "artifacts" / "note.txt").exists()
    assert not (tmp_path / "mlruns").exists()


class PruneAt:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.seen: list[float] = []

    def __call__(self, epoch: int, metrics: dict) -> None:
        self.seen.append(metrics["val_probe_auc"])
        if epoch == self.epoch:
            raise optuna.TrialPruned()


def test_arm_run_nests_under_the_active_run_and_a_pruned_one_ends_killed(jets_file):
    config = PretrainConfig(data=str(jets_file), epochs=3, batch_size=32, image_every=0, eval_jets=64,
                            probe_train_jets=200, probe_val_jets=100, experiment="ignored-when-nested")
    tracking.configure_tracking()
    with mlflow.start_run(experiment_id=tracking.ensure_experiment("nesting")) as parent:
        callback = PruneAt(epoch=0)
        with pytest.raises(optuna.TrialPruned):
            pretrain(config, callback=callback, progress=False)
        assert mlflow.active_run().info.run_id == parent.info.run_id  # the parent stays active
    children = mlflow.search_runs(experiment_ids=[parent.info.experiment_id], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 1
    child = children[0]
    assert child.info.status == "KILLED" and child.data.tags["end_reason"] == "pruned"
    assert len(callback.seen) == 1 and 0.0 <= callback.seen[0] <= 1.0
    assert mlflow.get_run(parent.info.run_id).info.status == "FINISHED"
    assert mlflow.get_experiment_by_name("ignored-when-nested") is None


class _Payload:
    """Stands for code someone could hide in a checkpoint file."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoints_load_without_unpickling_code(tmp_path):
    import random

    import numpy as np
    import torch

    from mae_tracker.train import loop

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = loop.warmup_cosine(optimizer, 2, 10)
    model(torch.rand(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    np.random.seed(5)
    random.seed(5)
    path = tmp_path / "checkpoint.pt"
    loop.save_checkpoint(path, epoch=1, model=model, optimizer=optimizer, scheduler=scheduler,
                         extra={"preprocessing": {"mean": [1.0]}, "best": {"state": model.state_dict()}})
    expected = (np.random.rand(2), random.random(), torch.rand(1))
    state = loop.load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler)
    assert state["epoch"] == 1 and state["extra"]["preprocessing"] == {"mean": [1.0]}
    assert np.array_equal(expected[0], np.random.rand(2)) and expected[1] == random.random()
    assert torch.equal(expected[2], torch.rand(1))  # every RNG continues where it was saved

    torch.save({"epoch": 0, "model": _Payload()}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        loop.load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler)


def test_a_run_resumes_although_the_caller_made_another_experiment_active(monkeypatch):
    """mlflow.set_experiment("x") in the user's code (or an earlier test) must not stop a study or
    an arm from resuming its own run in another experiment."""
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)  # restored afterwards
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    client = mlflow.MlflowClient()
    run_id = client.create_run(tracking.ensure_experiment("test-resume-own-experiment")).info.run_id
    mlflow.set_experiment("test-some-other-experiment")
    with pytest.raises(mlflow.exceptions.MlflowException, match="active experiment ID does not match"):
        mlflow.start_run(run_id=run_id)
    with tracking.tracked_run("ignored", resume_run_id=run_id) as run:
        assert run.info.run_id == run_id
    assert client.get_run(run_id).info.status == "FINISHED"


class _Stopped(Exception):
    """What a torchrun rank's SIGTERM handler raises (distributed.RankFailed stands here)."""


def test_a_signal_during_the_end_of_a_failed_run_still_ends_it_failed(monkeypatch):
    """Under torchrun, SIGTERM reaches the surviving rank just as its collective fails. A handler
    raising inside the end-of-run writes used to abort them, and MLflow's exit hook then closed
    the run FINISHED. The signal now waits until the run is ended FAILED."""
    import signal

    def stop(signum, _frame):
        raise _Stopped(f"signal {signum}")

    real_set_tag = mlflow.set_tag

    def set_tag_hit_by_sigterm(key, value):
        if key == "end_reason":
            signal.raise_signal(signal.SIGTERM)  # arrives in the middle of ending the run
        return real_set_tag(key, value)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        monkeypatch.setattr(mlflow, "set_tag", set_tag_hit_by_sigterm)
        with pytest.raises(_Stopped):  # the signal still takes effect, once the run is ended
            with tracking.tracked_run("signal-at-end") as run:
                raise ValueError("collective failed")
    finally:
        signal.signal(signal.SIGTERM, previous)
    ended = mlflow.get_run(run.info.run_id)
    assert ended.info.status == "FAILED"
    assert ended.data.tags["end_reason"] == "ValueError: collective failed"
    assert mlflow.active_run() is None
    assert signal.getsignal(signal.SIGTERM) is previous


def test_sigterm_ends_the_run_killed_with_a_resume_hint_and_exits_143():
    """A batch scheduler's time limit (or `kill`) sends SIGTERM; Python's default would leave the
    run RUNNING. The run ends KILLED, says how to resume, and the process exits 128 + 15."""
    import signal

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a plain `mae-tracker` process
    try:
        with pytest.raises(SystemExit) as stopped:
            with tracking.tracked_run("sigterm") as run:
                signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped.value.code == 143
    ended = mlflow.get_run(run.info.run_id)
    assert ended.info.status == "KILLED"
    assert ended.data.tags["end_reason"] == f"stopped by SIGTERM; resume with --resume {run.info.run_id}"
    assert mlflow.active_run() is None


def test_a_pretrain_run_logs_system_metrics_and_stops_its_sampler(jets_file, monkeypatch):
    import threading

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")  # the run lasts a few seconds
    result = pretrain(PretrainConfig(data=str(jets_file), epochs=1, max_jets=160, batch_size=32, image_every=0,
                                     image_jets=2, eval_jets=32, probe_train_jets=0, probe_val_jets=0,
                                     experiment="test-system-metrics"), progress=False)
    keys = set(mlflow.MlflowClient().get_run(result["run_id"]).data.metrics)
    assert "system/cpu_utilization_percentage" in keys, sorted(keys)
    assert "system/system_memory_usage_megabytes" in keys
    assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]  # joined at end_run
