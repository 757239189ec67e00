"""The four arms as library functions, against a real SQLite tracking store and real Pythia jets."""

from __future__ import annotations

import json

import mlflow

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mae_tracker.data.jetfile import file_digest
from mae_tracker.train import loop
from mae_tracker.train.config import DownstreamConfig, PretrainConfig, resolve_pixel_options
from mae_tracker.train.downstream import train_classifier
from mae_tracker.train.pretrain import pretrain
from mae_tracker.train.saved_model import load_model

EPOCHS = 3
REGISTERED = "test-arms-encoder"
# Bigger train split than the default so that a few CPU seconds give a real classifier.
SMALL = dict(batch_size=32, pretrain_fraction=0.4, train_fraction=0.4, val_fraction=0.1,
             test_fraction=0.1, seed=3, log_every_steps=5, experiment="test-arms")


def small_pretrain(data, **overrides) -> PretrainConfig:
    settings = {**SMALL, "epochs": EPOCHS, "image_every": 2, "image_jets": 2, "eval_jets": 100,
                "lr": 2e-3, **overrides}
    return PretrainConfig(data=str(data), **settings)


def small_downstream(arm: str, data, **overrides) -> DownstreamConfig:
    return DownstreamConfig.for_arm(arm, data=str(data), **{**SMALL, "epochs": 4, **overrides})


def history(run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(mlflow.MlflowClient().get_metric_history(run_id, key), key=lambda m: m.step)]


def encoder_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def pretrained(jets_file):
    return pretrain(small_pretrain(jets_file, register_as=REGISTERED), progress=False)


def test_pretrain_reduces_reconstruction_loss(pretrained):
    train_loss = history(pretrained["run_id"], "train_loss")
    test_loss = history(pretrained["run_id"], "test_loss")
    train_eval = history(pretrained["run_id"], "train_eval_loss")
    assert len(train_loss) == len(test_loss) == len(train_eval) == EPOCHS
    assert train_loss[-1] < 0.8 * train_loss[0]
    assert test_loss[-1] < test_loss[0]
    assert all(np.isfinite(test_loss))
    # the online linear probe: one validation AUC per epoch, informative on real jets
    probe_auc = history(pretrained["run_id"], "val_probe_auc")
    assert len(probe_auc) == EPOCHS and all(0.0 <= a <= 1.0 for a in probe_auc)
    assert probe_auc[-1] > 0.6 and pretrained["val_probe_auc"] == probe_auc[-1]


def test_pretrain_logs_the_errors_promotion_reads(pretrained):
    """val_probe_auc with its DeLong error and 95 % interval, train_eval_loss with its error, every epoch."""
    run_id = pretrained["run_id"]
    for key in ("val_probe_auc_se", "val_probe_auc_ci_low", "val_probe_auc_ci_high", "train_eval_loss_se"):
        assert len(history(run_id, key)) == EPOCHS, key
    metrics = mlflow.get_run(run_id).data.metrics
    auc, se = metrics["val_probe_auc"], metrics["val_probe_auc_se"]
    assert metrics["val_probe_auc_ci_low"] == pytest.approx(auc - 1.959964 * se)
    assert metrics["val_probe_auc_ci_high"] == pytest.approx(min(1.0, auc + 1.959964 * se))
    assert 0.01 < se < 0.1  # the 100 jets of the validation split
    assert 0 < metrics["train_eval_loss_se"] < 0.2 * metrics["train_eval_loss"]


def test_pretrain_run_holds_params_provenance_images_and_models(pretrained, jets_file):
    run_id = pretrained["run_id"]
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    config = resolve_pixel_options(small_pretrain(jets_file, register_as=REGISTERED)).to_dict()  # as logged
    for key, value in config.items():
        assert params[key] == str(value), key
    assert int(params["split_pretrain"]) == 400 and int(params["split_test"]) == 100
    assert tags["arm"] == "pretrain"
    assert tags["data_sha256"] == file_digest(jets_file)
    assert tags["git_commit"] and tags["version.torch"] == torch.__version__
    assert {i.dataset.name for i in run.inputs.dataset_inputs} == {jets_file.name}
    for key in ("lr", "throughput_img_s", "epoch_time_s"):
        assert len(history(run_id, key)) == EPOCHS
    assert len(history(run_id, "train_loss_step")) >= 2  # batched step-level logging
    assert metrics["compression_ratio"] == pytest.approx(3 * 32 * 32 / 64)
    for channel in ("Tracks", "ECAL", "HCAL"):
        assert 0 <= metrics[f"recon_total_rel_error_{channel}"] < 10

    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id)}
    assert {"config.json", "preprocessing.json", "mae_config.json", "reconstructions"} <= artifacts
    grids = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "reconstructions")}
    # image_every=2 over 3 epochs: epochs 0 and 2 (the last), train and test jets
    assert grids == {f"reconstructions/{split}_epoch_{e:03d}.png" for split in ("train", "test") for e in (0, 2)}
    logged_config = mlflow.artifacts.load_dict(f"runs:/{run_id}/config.json")
    assert logged_config == config

    encoder_info = mlflow.models.get_model_info(f"runs:/{run_id}/encoder")
    meta = encoder_info.metadata
    assert meta["pretrain_run_id"] == run_id
    assert set(meta["preprocessing"]) >= {"mean", "std"}
    assert encoder_info.signature is not None
    # one input contract: raw images as stored in the file, channels last; preprocessing inside
    raw = (np.random.rand(3, 32, 32, 3) * 50).astype(np.float32)
    features = mlflow.pyfunc.load_model(f"runs:/{run_id}/encoder").predict(raw)
    assert np.asarray(features).shape == (3, 64)
    encoder, _ = load_model(f"runs:/{run_id}/encoder", kind="encoder")
    with torch.no_grad():
        np.testing.assert_allclose(encoder(torch.from_numpy(raw)).numpy(), features, atol=1e-6)
        np.testing.assert_allclose(encoder(torch.from_numpy(raw.astype(np.float64))).numpy(), features, atol=1e-6)
        expected = encoder.encoder.features(encoder.preprocessor.transform(torch.from_numpy(raw).permute(0, 3, 1, 2)))
        np.testing.assert_allclose(features, expected.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="channels last"):  # preprocessed channels-first input is refused
        encoder(torch.rand(3, 3, 32, 32))
    mae, _ = load_model(f"runs:/{run_id}/mae", kind="mae")
    mae.train()  # weights + config rebuild a module that can be trained further
    loss, _, _ = mae.mae(torch.rand(2, 3, 32, 32), mask_ratio=0.75)
    loss.backward()


def test_downstream_arms_classify_real_jets(pretrained, jets_file):
    encoder_uri = pretrained["encoder_uri"]
    pretrained_encoder = encoder_state(load_model(encoder_uri)[0].encoder)
    results = {}
    for arm in ("finetune", "probe", "scratch"):
        result = train_classifier(small_downstream(arm, jets_file, encoder_uri=encoder_uri), progress=False)
        results[arm] = result
        run = mlflow.get_run(result["run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["arm"] == arm
        assert run.data.tags["pretrain_run_id"] == pretrained["run_id"]
        assert 0.0 <= result["test_auc"] <= 1.0 and 0.0 <= result["test_acc"] <= 1.0
        assert result["test_auc"] > 0.5, (arm, result["test_auc"])
        assert len(history(result["run_id"], "val_auc")) == 4
        assert len(history(result["run_id"], "val_acc")) == 4
        artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result["run_id"])}
        assert {"roc_curve.png", "roc_rejection.png", "score_histogram.png", "config.json",
                "test_predictions.csv"} <= artifacts
        # the stored test predictions are the ones the test metrics came from
        predictions = pd.read_csv(mlflow.artifacts.download_artifacts(
            run_id=result["run_id"], artifact_path="test_predictions.csv"))
        assert len(predictions) == 100
        assert roc_auc_score(predictions["label"], predictions["score"]) == pytest.approx(result["test_auc"])
        # the selected epoch's validation numbers
        val_auc = history(result["run_id"], "val_auc")
        assert result["best_val_auc"] == val_auc[result["best_epoch"]]
        assert run.data.metrics["best_val_auc"] == result["best_val_auc"]
        classifier, _ = load_model(f"runs:/{result['run_id']}/classifier", kind="tagger")
        # the logged classifier is the JetTagger: raw channels-last images -> P(label 1)
        probabilities = classifier(torch.rand(4, 32, 32, 3))
        assert probabilities.shape == (4,) and bool(((probabilities >= 0) & (probabilities <= 1)).all())
        after = encoder_state(classifier.encoder)
        if arm == "probe":
            assert same_weights(after, pretrained_encoder), "probe must leave the encoder unchanged"
        else:
            assert not same_weights(after, pretrained_encoder), arm
    # the probe trains the head only; finetune and scratch train everything
    params = {arm: int(mlflow.get_run(r["run_id"]).data.params["trainable_params"]) for arm, r in results.items()}
    assert params["probe"] == 64 + 1 and params["finetune"] == params["scratch"] > 10 * params["probe"]


def test_finetune_starts_from_pretrained_weights_scratch_does_not(pretrained, jets_file):
    pretrained_encoder = encoder_state(load_model(pretrained["encoder_uri"])[0].encoder)
    for arm, expect_same in (("finetune", True), ("scratch", False)):
        # lr = 0: whatever the classifier holds at the end is what it started from
        result = train_classifier(small_downstream(arm, jets_file, encoder_uri=pretrained["encoder_uri"],
                                                   lr=0.0, epochs=1), progress=False)
        start = encoder_state(load_model(f"runs:/{result['run_id']}/classifier")[0].encoder)
        assert same_weights(start, pretrained_encoder) == expect_same, arm


def test_label_fraction_subsamples_labelled_jets(pretrained, jets_file):
    result = train_classifier(small_downstream("probe", jets_file, encoder_uri=pretrained["encoder_uri"],
                                               label_fraction=0.25, epochs=1), progress=False)
    assert mlflow.get_run(result["run_id"]).data.params["labelled_jets"] == "100"


def test_validation_subset_and_early_stopping(pretrained, jets_file):
    # lr 0: the validation loss never improves after the first epoch, so patience 2 stops training
    # after epoch 2 of 8; the first epoch stays the selected one, scored on the test jets.
    result = train_classifier(small_downstream("finetune", jets_file, encoder_uri=pretrained["encoder_uri"],
                                               lr=0.0, epochs=8, patience=2, val_jets=30), progress=False)
    run = mlflow.get_run(result["run_id"])
    assert result["epochs_trained"] == 3 and result["best_epoch"] == 0
    assert len(history(result["run_id"], "val_auc")) == 3 and run.data.metrics["epochs_trained"] == 3
    assert (run.data.params["val_jets"], run.data.params["patience"]) == ("30", "2")
    # the selection saw the first 30 validation jets only; the test score is on every test jet
    full = train_classifier(small_downstream("finetune", jets_file, encoder_uri=pretrained["encoder_uri"],
                                             lr=0.0, epochs=1), progress=False)
    assert result["test_auc"] == pytest.approx(full["test_auc"]) and result["val_loss"] != full["val_loss"]


def test_registered_encoder_alias_feeds_finetune(pretrained, jets_file):
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{REGISTERED}'")  # registered by pretrain itself
    assert [v.run_id for v in versions] == [pretrained["run_id"]]
    client.set_registered_model_alias(REGISTERED, "champion", versions[0].version)
    result = train_classifier(small_downstream("finetune", jets_file, encoder_uri=f"models:/{REGISTERED}@champion",
                                               epochs=1), progress=False)
    assert mlflow.get_run(result["run_id"]).data.tags["pretrain_run_id"] == pretrained["run_id"]


class Interrupt:
    """Per-epoch callback that presses Ctrl-C after the given epoch."""

    def __init__(self, after_epoch: int) -> None:
        self.after_epoch = after_epoch

    def __call__(self, epoch: int, metrics: dict) -> None:
        if epoch == self.after_epoch:
            raise KeyboardInterrupt


def test_interrupted_pretrain_resumes_into_same_run_with_same_numbers(jets_file):
    config = small_pretrain(jets_file, image_every=0, run_name="resume")
    with pytest.raises(KeyboardInterrupt):
        pretrain(config, callback=Interrupt(after_epoch=0), progress=False)
    killed = mlflow.search_runs(experiment_names=["test-arms"], filter_string="tags.mlflow.runName = 'resume'",
                                output_format="list")[0]
    assert killed.info.status == "KILLED"
    assert "encoder" not in {m.name for m in mlflow.search_logged_models(
        experiment_ids=[killed.info.experiment_id], output_format="list") if m.source_run_id == killed.info.run_id}
    ckpt = loop.checkpoint_path("", killed.info.run_id)
    assert torch.load(ckpt, weights_only=False)["epoch"] == 0
    # --resume alone is enough: everything else comes from the interrupted run's config
    resumed = pretrain(PretrainConfig(resume=killed.info.run_id), progress=False)
    assert resumed["run_id"] == killed.info.run_id
    assert mlflow.get_run(killed.info.run_id).info.status == "FINISHED"
    assert not ckpt.exists(), "a finished run's checkpoint is replaced by its logged models"

    uninterrupted = pretrain(small_pretrain(jets_file, image_every=0), progress=False)
    assert history(killed.info.run_id, "train_loss") == history(uninterrupted["run_id"], "train_loss")
    assert history(killed.info.run_id, "test_loss") == history(uninterrupted["run_id"], "test_loss")


def test_interrupted_finetune_resumes(pretrained, jets_file):
    config = small_downstream("finetune", jets_file, encoder_uri=pretrained["encoder_uri"], epochs=2,
                              run_name="resume-finetune")
    with pytest.raises(KeyboardInterrupt):
        train_classifier(config, callback=Interrupt(after_epoch=0), progress=False)
    run = mlflow.search_runs(experiment_names=["test-arms"], output_format="list",
                             filter_string="tags.mlflow.runName = 'resume-finetune'")[0]
    assert run.info.status == "KILLED"
    result = train_classifier(DownstreamConfig.for_arm("finetune", resume=run.info.run_id),
                              progress=False)
    assert result["run_id"] == run.info.run_id
    assert len(history(run.info.run_id, "val_auc")) == 2
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"


def test_diverging_loss_fails_the_run_without_a_model(jets_file):
    with pytest.raises(Exception, match="loss became"):
        pretrain(small_pretrain(jets_file, lr=1e12, warmup_epochs=0, run_name="diverge"), progress=False)
    run = mlflow.search_runs(experiment_names=["test-arms"], output_format="list",
                             filter_string="tags.mlflow.runName = 'diverge'")[0]
    assert run.info.status == "FAILED"
    assert "loss became" in run.data.tags["end_reason"]
    logged = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert not [m for m in logged if m.source_run_id == run.info.run_id]


def test_config_json_round_trips(pretrained):
    logged = mlflow.artifacts.load_dict(f"runs:/{pretrained['run_id']}/config.json")
    assert PretrainConfig.from_dict(logged).to_dict() == logged
    assert json.loads(json.dumps(logged)) == logged


def test_same_seed_same_numbers_downstream(jets_file):
    first, second = (train_classifier(small_downstream("scratch", jets_file, epochs=2, variant="hybrid-nano"),
                                      progress=False) for _ in range(2))
    assert history(first["run_id"], "train_loss") == history(second["run_id"], "train_loss")
    assert first["test_auc"] == second["test_auc"]
    other = train_classifier(small_downstream("scratch", jets_file, epochs=2, variant="hybrid-nano", seed=4),
                             progress=False)
    assert history(other["run_id"], "train_loss") != history(first["run_id"], "train_loss")


def test_probe_trained_on_cached_features_scores_raw_images_the_same(pretrained, jets_file):
    """The probe trains its head on features computed once; the logged tagger (encoder + head on
    raw images) must give the test scores the run logged."""
    from mae_tracker.train.data import prepare_data
    from mae_tracker.train.features import FrozenFeatures

    config = small_downstream("probe", jets_file, encoder_uri=pretrained["encoder_uri"])
    result = train_classifier(config, progress=False)
    tagger, _ = load_model(f"runs:/{result['run_id']}/classifier", kind="tagger")
    data = prepare_data(config, progress=False)
    test = np.sort(data.splits["test"])
    raw, _ = data.reader.read(test)
    scores = tagger(torch.from_numpy(np.ascontiguousarray(raw.transpose(0, 2, 3, 1)))).detach().numpy()
    logged = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=result["run_id"],
                                                             artifact_path="test_predictions.csv"))
    np.testing.assert_allclose(scores, logged["score"].to_numpy(), atol=1e-5)
    # features read back by index equal the encoder's on the same jets, in any order
    encoder = tagger.classifier.encoder
    features = FrozenFeatures(data.reader, test, encoder, tagger.preprocessor)
    order = test[::-1][:7]
    images, _ = data.reader.read(order)
    with torch.no_grad():
        direct = encoder.features(tagger.preprocessor.transform(torch.from_numpy(images))).numpy()
    np.testing.assert_allclose(features.read(order)[0], direct, atol=1e-5)
    with pytest.raises(IndexError):
        features.read(np.array([int(data.splits["train"][0])]))
