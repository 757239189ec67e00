"""Promotion rules: the chance floor, the margin over the comparison's noise, the test split, runs
from before errors were logged, and a sweep's objective measured by another run.

The candidates are runs made with the MLflow client that carry exactly the metrics the arms log
(a value with ``_se``, ``_ci_low``, ``_ci_high``), at chosen values, plus a copy of a real
encoder's logged-model files; every rule is exercised through ``registry.promote`` against a real
SQLite store of this module's own (real runs are in test_registry).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

import label_efficiency_grid as shared
from conftest import own_tracking_store
from mae_tracker.registry import promotion as registry
from mae_tracker.sweep.promotion import promote_from_sweep
from mae_tracker.registry.evidence import comparison_noise, is_test_metric
from mae_tracker.train.evaluation import Z95
from mae_tracker.train.tracking import ensure_experiment

EXPERIMENT = "test-promotion"
FAMILY = "mae-vit-32x32x3"
DIGEST = "ab" * 32
PARAMS = {"split_seed": "0", "pretrain_fraction": "0.5", "train_fraction": "0.3", "val_fraction": "0.1",
          "test_fraction": "0.1", "probe_train_jets": "256", "probe_val_jets": "256", "mask_ratio": "0.75",
          "lr": "0.001"}


@pytest.fixture(scope="module")
def encoder_files(jets_file, tmp_path_factory) -> Path:
    """The logged-model files of a real encoder (the session's shared tiny pretrain run)."""
    run_id = shared.pretrained(jets_file)["run_id"]
    client = mlflow.MlflowClient()
    models = client.search_logged_models(
        experiment_ids=[client.get_run(run_id).info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = 'encoder'")
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=models[0].artifact_location,
                                                    dst_path=str(tmp_path_factory.mktemp("encoder-files"))))


@pytest.fixture(scope="module", autouse=True)
def store(encoder_files, tmp_path_factory):
    """A store of this module's own: outcomes depend on what the family already holds."""
    with own_tracking_store(tmp_path_factory.mktemp("promotion-store")):
        yield


@pytest.fixture(autouse=True)
def empty_family(store):
    try:
        mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).delete_registered_model(FAMILY)
    except MlflowException:
        pass


def auc(key: str, value: float, se: float) -> dict[str, float]:
    """An AUC as the arms log it: value, DeLong error and 95 % interval."""
    return {key: value, f"{key}_se": se, f"{key}_ci_low": max(0.0, value - Z95 * se),
            f"{key}_ci_high": min(1.0, value + Z95 * se)}


def make_run(metrics: dict[str, float], *, arm: str = "pretrain", model_files: Path | None = None,
             parent: str = "", digest: str = DIGEST, **tags: str) -> str:
    client = mlflow.MlflowClient()
    experiment_id = ensure_experiment(EXPERIMENT)
    run_tags = {"arm": arm, "data_sha256": digest, **tags, **({"mlflow.parentRunId": parent} if parent else {})}
    run_id = client.create_run(experiment_id, tags=run_tags).info.run_id
    client.log_batch(run_id, metrics=[Metric(k, float(v), 0, 0) for k, v in metrics.items()],
                     params=[Param(k, v) for k, v in PARAMS.items()])
    if model_files is not None:  # the real model's files, relabelled with this copy's ids
        model = client.create_logged_model(experiment_id, name="encoder", source_run_id=run_id)
        with tempfile.TemporaryDirectory() as tmp:
            files = Path(shutil.copytree(model_files, Path(tmp) / "model"))
            ids = {"model_id": model.model_id, "model_uuid": model.model_id, "run_id": run_id}
            text = (files / "MLmodel").read_text()
            for key, value in ids.items():
                text = re.sub(rf"^{key}: .*$", f"{key}: {value}", text, flags=re.MULTILINE)
            (files / "MLmodel").write_text(text)
            client.log_model_artifacts(model.model_id, str(files))
        client.finalize_logged_model(model.model_id, "READY")
    client.set_terminated(run_id, "FINISHED")
    return run_id


def encoder_run(files: Path, value: float, se: float, **kwargs) -> str:
    return make_run({**auc("val_probe_auc", value, se), "train_eval_loss": 0.05, "train_eval_loss_se": 0.001,
                     "train_loss": 0.05}, model_files=files, **kwargs)


def aliases() -> dict[str, str]:
    return {a: str(v) for a, v in mlflow.MlflowClient().get_registered_model(FAMILY).aliases.items()}


def versions() -> list:
    return mlflow.MlflowClient().search_model_versions(f"name = '{FAMILY}'")


def tags_of(version: str) -> dict[str, str]:
    return mlflow.MlflowClient().get_model_version(FAMILY, version).tags


def test_a_chance_level_first_candidate_is_refused_and_one_above_the_floor_becomes_champion(encoder_files):
    chance = encoder_run(encoder_files, 0.56, 0.04)  # 95 % interval [0.4816, 0.6384]: includes 0.5
    with pytest.raises(ValueError, match=r"val_probe_auc 0.5600, 95 % interval \[0.4816, 0.6384\] does not "
                                         r"exclude chance \(0.5\); a chance-level model is never registered"):
        registry.promote(chance)
    assert versions() == []  # nothing registered, not even as challenger

    run_id = encoder_run(encoder_files, 0.60, 0.04)  # [0.5216, 0.6784]
    result = registry.promote(run_id)
    assert result.alias == "champion" and result.noise is None
    assert result.reason == ("first candidate in the family, above the chance floor: becomes champion; "
                             "val_probe_auc 0.6000, 95 % interval [0.5216, 0.6784]")
    tags = tags_of(result.version)
    assert float(tags["metric_se"]) == 0.04 and tags["metric_run_id"] == run_id
    assert (tags["floor_metric"], float(tags["floor_value"])) == ("val_probe_auc", 0.60)
    assert float(tags["floor_ci_low"]) == pytest.approx(0.60 - Z95 * 0.04)
    assert float(tags["floor_ci_high"]) == pytest.approx(0.60 + Z95 * 0.04)
    assert tags["promotion"] == result.reason and "comparison_noise" not in tags
    assert "± 0.0400" in mlflow.MlflowClient().get_model_version(FAMILY, result.version).description


def test_a_challenger_takes_champion_only_beyond_the_noise_of_the_comparison(encoder_files):
    champion = registry.promote(encoder_run(encoder_files, 0.75, 0.02))
    noise = comparison_noise(0.02, 0.02)
    assert noise == pytest.approx(0.0554, abs=1e-4)

    close = registry.promote(encoder_run(encoder_files, 0.80, 0.02))  # better by 0.05 < 0.0554
    assert close.alias == "challenger" and close.noise == pytest.approx(noise)
    assert close.reason.startswith("better than champion v1 by 0.05, within the comparison's noise 0.05544 "
                                   "(95 %, errors 0.02 and 0.02): val_probe_auc 0.8000 vs 0.7500; champion stays, "
                                   "candidate stays challenger")
    assert float(tags_of(close.version)["comparison_noise"]) == pytest.approx(noise)
    assert aliases() == {"champion": champion.version, "challenger": close.version}

    clear = registry.promote(encoder_run(encoder_files, 0.81, 0.005))  # noise 0.0404 < 0.06
    assert clear.alias == "champion" and clear.previous_champion_version == champion.version
    assert clear.reason.startswith("beats champion v1 by 0.06 > noise 0.04041 (95 %, errors 0.005 and 0.02)")
    assert aliases() == {"champion": clear.version}  # challenger: the latest candidate that lost

    worse = registry.promote(encoder_run(encoder_files, 0.70, 0.02))
    assert worse.alias == "challenger" and worse.reason.startswith("worse than champion v3 by 0.11")
    assert aliases() == {"champion": clear.version, "challenger": worse.version}


def test_different_data_is_never_compared(encoder_files):
    champion = registry.promote(encoder_run(encoder_files, 0.70, 0.02))
    other = registry.promote(encoder_run(encoder_files, 0.99, 0.001, digest="cd" * 32))
    assert other.alias == "challenger" and other.noise is None
    assert "different data digest" in other.reason and "cannot compare" in other.reason
    assert aliases() == {"champion": champion.version, "challenger": other.version}


def refused(pattern: str, run_id: str, **kwargs) -> None:
    """promote() refuses with one line matching ``pattern``."""
    with pytest.raises(ValueError, match=pattern) as err:
        registry.promote(run_id, **kwargs)
    assert "\n" not in str(err.value)


def test_the_test_split_and_runs_without_errors_are_refused_in_one_line(encoder_files):
    run_id = encoder_run(encoder_files, 0.80, 0.02)
    for metric in ("test_auc", "best_test_auc", "test_loss"):
        refused(f"metric '{metric}' is measured on the test split", run_id, metric=metric)
    assert is_test_metric("test_acc") and not is_test_metric("val_probe_auc") and not is_test_metric("latest_auc")
    refused("value 0.99 is not run .*'s val_probe_auc", run_id, value=0.99)  # its error belongs to the logged value
    before = make_run({"val_probe_auc": 0.9, "train_loss": 0.1}, model_files=encoder_files)
    refused(r"logged no standard error for val_probe_auc \(val_probe_auc_se\): it predates promotion intervals",
            before)
    no_interval = make_run({"val_probe_auc": 0.9, "val_probe_auc_se": 0.01}, model_files=encoder_files)
    refused("logged no validation AUC interval", no_interval)
    diverged = make_run({**auc("val_probe_auc", 0.9, 0.01), "train_loss": float("nan")}, model_files=encoder_files)
    refused("non-finite losses", diverged)
    assert versions() == []


def sweep_trial(files: Path, pretrain: tuple[float, float], objective: tuple[float, float]) -> tuple[str, str]:
    """A trial run with its pretrain run (an encoder) and its probe run nested under it, as a sweep
    leaves them; returns (pretrain run id, probe run id)."""
    trial = make_run({}, arm="", optuna_state="COMPLETE")
    pretrain_id = encoder_run(files, *pretrain, parent=trial)
    probe_id = make_run({**auc("best_val_auc", *objective), "best_val_loss": 0.5, "best_val_loss_se": 0.01},
                        arm="probe", parent=trial, pretrain_run_id=pretrain_id)
    mlflow.MlflowClient().set_tag(trial, "downstream_run_id", probe_id)
    return pretrain_id, probe_id


def test_a_sweep_promotes_with_the_error_of_the_run_that_measured_its_objective(encoder_files):
    pretrain_id, probe_id = sweep_trial(encoder_files, (0.80, 0.02), (0.70, 0.03))
    result = promote_from_sweep(pretrain_id, metric="val_auc", value=0.70, study="quick", trial=2)
    tags = tags_of(result.version)
    assert (tags["study"], tags["trial"], tags["metric"], tags["goal"]) == ("quick", "2", "val_auc", "maximize")
    assert tags["source_run_id"] == pretrain_id  # the registered encoder ...
    assert (tags["metric_run_id"], tags["metric_key"], float(tags["metric_se"])) == (probe_id, "best_val_auc", 0.03)
    assert (tags["floor_metric"], float(tags["floor_value"])) == ("best_val_auc", 0.70)  # ... its probe's interval
    assert result.reason.endswith("best_val_auc 0.7000, 95 % interval [0.6412, 0.7588]")
    assert "study quick trial 2" in mlflow.MlflowClient().get_model_version(FAMILY, result.version).description

    # The objective's run decides the floor: a chance-level probe refuses an encoder whose own
    # online probe looks fine.
    chance_pretrain, chance_probe = sweep_trial(encoder_files, (0.80, 0.02), (0.55, 0.04))
    with pytest.raises(ValueError, match=f"\\(measured by run {chance_probe}\\) does not exclude chance"):
        promote_from_sweep(chance_pretrain, metric="val_auc", value=0.55, study="quick", trial=3)
    with pytest.raises(ValueError, match="is not run"):
        promote_from_sweep(pretrain_id, metric="val_auc", value=0.71, study="quick", trial=2)
    # The reconstruction objective is measured by the pretrain run itself; its floor is the online probe.
    loss = promote_from_sweep(pretrain_id, metric="train_eval_loss", value=0.05, study="quick", trial=2)
    tags = tags_of(loss.version)
    assert (tags["goal"], tags["metric_run_id"], float(tags["metric_se"])) == ("minimize", pretrain_id, 0.001)
    assert tags["floor_metric"] == "val_probe_auc"
    alone = encoder_run(encoder_files, 0.80, 0.02)  # not under a trial run
    with pytest.raises(ValueError, match="cannot find the run that measured val_auc"):
        promote_from_sweep(alone, metric="val_auc", value=0.80, study="quick", trial=4)


def test_comparison_needs_the_same_split_and_respects_the_goal():
    base = {"metric": "train_eval_loss", "goal": "minimize", "metric_value": "0.30", "metric_se": "0.01",
            "data_sha256": "ab" * 32, "split_seed": "0", "pretrain_fraction": "0.5", "train_fraction": "0.3",
            "val_fraction": "0.1", "test_fraction": "0.1", "eval_protocol": ""}
    noise = comparison_noise(0.01, 0.01)
    wins, reason, got = registry.compare({**base, "metric_value": "0.20"}, base, "1")
    assert wins and reason.startswith("beats champion v1 by 0.1 > noise") and got == pytest.approx(noise)
    wins, reason, _ = registry.compare({**base, "metric_value": "0.29"}, base, "1")  # lower, but within noise
    assert not wins and "within the comparison's noise" in reason
    wins, reason, _ = registry.compare({**base, "metric_value": "0.40"}, base, "1")
    assert not wins and reason.startswith("worse than champion v1 by 0.1")
    wins, reason, _ = registry.compare(dict(base), base, "1")
    assert not wins and "ties" in reason  # the incumbent keeps a tie
    wins, reason, got = registry.compare({**base, "split_seed": "1", "metric_value": "0.01"}, base, "1")
    assert not wins and "different split" in reason and "cannot compare" in reason and got is None
    # A champion registered before errors were recorded: the candidate's error alone makes the noise.
    old = {k: v for k, v in base.items() if k != "metric_se"}
    wins, reason, got = registry.compare({**base, "metric_value": "0.27"}, old, "1")
    assert wins and got == pytest.approx(Z95 * 0.01) and "none recorded for v1" in reason
