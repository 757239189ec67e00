"""The MLflow model registry: families, champion/challenger promotion, loading by alias.

Real (tiny) pretrain and finetune runs provide the models; metric values are passed
explicitly where a test needs 'worse' and 'better' to be deterministic.
"""

from __future__ import annotations

import os
import shutil

import h5py
import mlflow
import mlflow.pytorch
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from mae_tracker import registry
from mae_tracker.data.jetfile import file_digest
from mae_tracker.data.preprocess import Preprocessor
from mae_tracker.train.config import DownstreamConfig, PretrainConfig
from mae_tracker.train.data import prepare_data
from mae_tracker.train.downstream import predict, train_classifier
from mae_tracker.train.pretrain import pretrain
from mae_tracker.train.tracking import ensure_experiment

EXPERIMENT = "test-registry"
ENCODERS = "mae-vit-32x32x3"
TAGGERS = "tagger-vit-32x32x3"
SMALL = dict(batch_size=32, pretrain_fraction=0.4, train_fraction=0.4, val_fraction=0.1, test_fraction=0.1,
             seed=3, log_every_steps=5, experiment=EXPERIMENT)
TINY_PRETRAIN = dict(image_every=0, image_jets=2, eval_jets=64, probe_train_jets=200, probe_val_jets=100, lr=2e-3)


@pytest.fixture(scope="module", autouse=True)
def registry_store(tmp_path_factory):
    """A store of this module's own: other modules (sweeps) promote into the same family
    names, and champion/challenger outcomes depend on what the family already holds."""
    saved = os.environ["MLFLOW_TRACKING_URI"]
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path_factory.mktemp('registry-store')}/mlflow.db"
    yield
    os.environ["MLFLOW_TRACKING_URI"] = saved
    mlflow.set_tracking_uri(saved)


@pytest.fixture(autouse=True)
def empty_families(registry_store):
    """Every test starts with no registered versions in the families it uses."""
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    for name in (ENCODERS, TAGGERS):
        try:
            client.delete_registered_model(name)
        except MlflowException:
            pass


@pytest.fixture(scope="module")
def pretrained(jets_file):
    return pretrain(PretrainConfig(data=str(jets_file), epochs=2, max_jets=160, **SMALL, **TINY_PRETRAIN),
                    progress=False)


@pytest.fixture(scope="module")
def other_data_run(jets_file, tmp_path_factory):
    """A real encoder trained on a file that differs from jets_file in one label (another sha256)."""
    path = tmp_path_factory.mktemp("other-data") / "jets.h5"
    shutil.copy(jets_file, path)
    with h5py.File(path, "r+") as h5:
        h5["y"][0] = 1 - h5["y"][0]
    return pretrain(PretrainConfig(data=str(path), epochs=1, max_jets=64, **SMALL, **TINY_PRETRAIN),
                    progress=False)


def aliases(name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in mlflow.MlflowClient().get_registered_model(name).aliases.items()}


def version_tags(name: str, version: str) -> dict[str, str]:
    return mlflow.MlflowClient().get_model_version(name, version).tags


def test_first_candidate_becomes_champion_with_family_tags_and_description(pretrained, jets_file):
    run_id = pretrained["run_id"]
    result = registry.promote(run_id)  # default metric: the run's last val_probe_auc
    assert result.registered_model == ENCODERS
    assert result.alias == "champion" and result.previous_champion_version is None
    assert "first" in result.reason
    assert aliases(ENCODERS) == {"champion": result.version}
    tags = version_tags(ENCODERS, result.version)
    assert tags["metric"] == "val_probe_auc" and tags["goal"] == "maximize"
    logged = mlflow.get_run(run_id).data.metrics["val_probe_auc"]
    assert float(tags["metric_value"]) == logged == pretrained["val_probe_auc"]
    assert tags["data_sha256"] == file_digest(jets_file)
    assert (tags["split_seed"], tags["train_fraction"], tags["val_fraction"]) == ("0", "0.4", "0.1")
    assert (tags["mask_ratio"], tags["lr"], tags["depth"]) == ("0.75", "0.002", "4")
    assert tags["source_run_id"] == run_id and tags["study"] == "" and tags["trial"] == ""
    assert tags["eval_protocol"] == "probe_train_jets=200;probe_val_jets=100"  # part of "same validation data"
    version = mlflow.MlflowClient().get_model_version(ENCODERS, result.version)
    assert version.run_id == run_id and run_id in version.description
    # the alias resolves to the pretrain run's encoder
    assert mlflow.models.get_model_info(f"models:/{ENCODERS}@champion").metadata["pretrain_run_id"] == run_id


def test_worse_candidate_stays_challenger(pretrained):
    first = registry.promote(pretrained["run_id"], metric="val_probe_auc", value=0.80)
    worse = registry.promote(pretrained["run_id"], metric="val_probe_auc", value=0.70)
    assert worse.alias == "challenger" and worse.previous_champion_version == first.version
    assert "worse" in worse.reason and "0.1" in worse.reason
    assert aliases(ENCODERS) == {"champion": first.version, "challenger": worse.version}
    assert version_tags(ENCODERS, worse.version)["promotion"] == worse.reason


def test_better_candidate_takes_champion(pretrained):
    first = registry.promote(pretrained["run_id"], metric="val_probe_auc", value=0.70)
    better = registry.promote(pretrained["run_id"], metric="val_probe_auc", value=0.80)
    assert better.alias == "champion" and better.previous_champion_version == first.version
    assert "beats" in better.reason
    # the old champion lost the alias; the winner does not also hold challenger
    assert aliases(ENCODERS) == {"champion": better.version}
    # a loss is minimised: lower wins
    loss_a = registry.promote(pretrained["run_id"], metric="test_loss", value=0.5, goal="minimize")
    assert loss_a.alias == "challenger" and "metric" in loss_a.reason  # other metric: not comparable


def test_promote_from_sweep_tags_study_and_trial_and_infers_goal(pretrained):
    auc = registry.promote_from_sweep(pretrained["run_id"], metric="probe_val_auc", value=0.75, study="quick", trial=2)
    tags = version_tags(ENCODERS, auc.version)
    assert (tags["study"], tags["trial"], tags["metric"], tags["goal"]) == ("quick", "2", "probe_val_auc", "maximize")
    assert "study quick trial 2" in mlflow.MlflowClient().get_model_version(ENCODERS, auc.version).description
    loss = registry.promote_from_sweep(pretrained["run_id"], metric="recon_loss", value=0.3, study="quick", trial=3)
    assert version_tags(ENCODERS, loss.version)["goal"] == "minimize"


def test_failed_killed_pruned_nan_and_modelless_runs_are_refused(pretrained):
    client = mlflow.MlflowClient()
    experiment_id = ensure_experiment(EXPERIMENT)

    def bare_run(status: str, **tags: str) -> str:
        run = client.create_run(experiment_id, tags={"arm": "pretrain", **tags})
        client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    trial = bare_run("FINISHED", optuna_state="PRUNED")
    refusals = {
        bare_run("FAILED", end_reason="RuntimeError: boom"): "FAILED, not FINISHED",
        bare_run("KILLED", end_reason="pruned"): "pruned",
        bare_run("FINISHED", optuna_state="PRUNED"): "pruned",
        bare_run("FINISHED", **{"mlflow.parentRunId": trial}): f"pruned \\(its parent run {trial}\\)",
        bare_run("FINISHED"): "no logged model 'encoder'",
    }
    for run_id, message in refusals.items():
        with pytest.raises(ValueError, match=message):
            registry.promote(run_id, metric="val_probe_auc", value=0.9)
    with pytest.raises(ValueError, match="nan"):
        registry.promote(pretrained["run_id"], metric="val_probe_auc", value=float("nan"))
    with pytest.raises(ValueError, match="no metric 'no_such_metric'"):
        registry.promote(pretrained["run_id"], metric="no_such_metric")
    # nothing was registered by any refused attempt
    assert client.search_model_versions(f"name = '{ENCODERS}'") == []


def test_different_data_digest_is_not_compared(pretrained, other_data_run):
    champion = registry.promote(pretrained["run_id"], metric="val_probe_auc", value=0.70)
    other = registry.promote(other_data_run["run_id"], metric="val_probe_auc", value=0.99)
    assert other.registered_model == ENCODERS  # same family: same encoder kind and image shape
    assert other.alias == "challenger" and "data digest" in other.reason and "cannot compare" in other.reason
    assert aliases(ENCODERS) == {"champion": champion.version, "challenger": other.version}


def test_champion_alias_feeds_finetune_and_the_tagger_predicts_on_raw_images(pretrained, jets_file):
    registry.promote(pretrained["run_id"])
    config = DownstreamConfig.for_arm("finetune", data=str(jets_file), encoder_uri=f"models:/{ENCODERS}@champion",
                                      **{**SMALL, "epochs": 1})
    finetuned = train_classifier(config, progress=False)
    assert mlflow.get_run(finetuned["run_id"]).data.tags["pretrain_run_id"] == pretrained["run_id"]

    tagger = registry.promote(finetuned["run_id"])  # default metric: best_val_auc
    assert (tagger.registered_model, tagger.alias) == (TAGGERS, "champion")
    tags = version_tags(TAGGERS, tagger.version)
    assert tags["metric"] == "best_val_auc" and float(tags["metric_value"]) == finetuned["best_val_auc"]
    assert tags["input_layout"] == "NHWC" and tags["pretrain_run_id"] == pretrained["run_id"]

    # a physicist's view: rows of X_jets exactly as stored in the file, channels last
    data = prepare_data(config, progress=False)
    test_jets = data.splits["test"]
    with h5py.File(jets_file, "r") as h5:
        raw = h5["X_jets"][np.sort(test_jets)]
    assert raw.shape == (len(test_jets), 32, 32, 3)
    uri = f"models:/{TAGGERS}@champion"
    assert mlflow.models.get_model_info(uri).metadata["input_layout"] == "NHWC"
    probabilities = np.asarray(mlflow.pyfunc.load_model(uri).predict(raw.astype(np.float32)))
    assert probabilities.shape == (len(test_jets),)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()

    # the same jets through the training code's own path (reader -> preprocessing -> classifier)
    model = mlflow.pytorch.load_model(uri)
    preprocessor = Preprocessor.from_dict(mlflow.models.get_model_info(uri).metadata["preprocessing"])
    _, in_process = predict(model.classifier, data, np.sort(test_jets), preprocessor, 32, "cpu")
    np.testing.assert_allclose(probabilities, in_process, rtol=1e-5, atol=1e-6)
    # ... and the scores the run itself stored for its test jets (split order)
    stored = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=finetuned["run_id"],
                                                             artifact_path="test_predictions.csv"))
    order = np.argsort(test_jets)
    np.testing.assert_allclose(probabilities, stored["score"].to_numpy()[order], rtol=1e-5, atol=1e-6)


def test_comparison_needs_the_same_split_and_respects_the_goal():
    base = {"metric": "recon_loss", "goal": "minimize", "metric_value": "0.30", "data_sha256": "ab" * 32,
            "split_seed": "0", "pretrain_fraction": "0.5", "train_fraction": "0.3", "val_fraction": "0.1",
            "test_fraction": "0.1", "eval_protocol": ""}
    wins, reason = registry._compare({**base, "metric_value": "0.20"}, base, "1")
    assert wins and "better by 0.1" in reason  # lower loss wins
    wins, reason = registry._compare({**base, "metric_value": "0.40"}, base, "1")
    assert not wins and "worse than champion v1 by 0.1" in reason
    wins, reason = registry._compare(dict(base), base, "1")
    assert not wins and "ties" in reason  # the incumbent keeps a tie
    wins, reason = registry._compare({**base, "split_seed": "1", "metric_value": "0.01"}, base, "1")
    assert not wins and "different split" in reason and "cannot compare" in reason
