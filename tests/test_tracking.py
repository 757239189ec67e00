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
