"""Classical baselines: observables by hand, the cut, and each kind as a logged run on a tiny file."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jet_h5 import sparse_images, write_jets
from mae_tracker.baselines import BaselineConfig, run_baseline
from mae_tracker.baselines.models import best_cut_threshold, fit_best_observable, fit_gbdt
from mae_tracker.baselines.observables import Geometry, compute_observables, observable_names
from mae_tracker.baselines.run import labelled_indices
from mae_tracker.data.jetfile import open_jet_file
from mae_tracker.train import tracking
from mae_tracker.train.config import DownstreamConfig
from mae_tracker.train.data import prepare_data, subsample

UNITS = {"Tracks": "pT [GeV]", "ECAL": "E [GeV]", "HCAL": "E [GeV]"}
DETECTOR = json.dumps({"name": "toy", "cell_size": 0.1, "units": UNITS})
SPLIT = dict(pretrain_fraction=0.2, train_fraction=0.5, val_fraction=0.15, test_fraction=0.15, split_seed=1)
TINY_CNN = dict(epochs=3, batch_size=16, lr=3e-3, weight_decay=0.05, dropout=0.0, warmup_epochs=0.0, cnn_channels="4,8", cnn_hidden=8, log_every_steps=2, loader_workers=0)


def geometry(height: int = 4, width: int = 4, cell: float | None = 0.1, energy: tuple[int, ...] = (1, 2)) -> Geometry:
    return Geometry(channel_names=("tracks", "ecal", "hcal"), height=height, width=width,
                    cell_size=cell or 1.0, cell_size_known=cell is not None, energy_channels=energy)


def pair_mass(e1: float, e2: float, eta1: float, eta2: float, dphi: float) -> float:
    """Two massless particles: m^2 = 2 pT1 pT2 (cosh(d_eta) - cos(d_phi)), pT = E / cosh(eta)."""
    pt1, pt2 = e1 / np.cosh(eta1), e2 / np.cosh(eta2)
    return float(np.sqrt(2 * pt1 * pt2 * (np.cosh(eta1 - eta2) - np.cos(dphi))))


def test_observables_by_hand():
    image = np.zeros((1, 3, 4, 4), np.float32)
    image[0, 0, 1, 1] = image[0, 0, 2, 2] = 2.0  # two tracks, half a cell from the axis in eta and phi
    image[0, 1, 0, 3] = 10.0  # ECAL at d_eta = -1.5 cells, d_phi = +1.5 cells
    image[0, 1, 2, 1] = 30.0  # ECAL at d_eta = +0.5, d_phi = -0.5 cells; HCAL empty
    geo = geometry()
    names = observable_names(geo, ("pt", "m0"))
    assert names == ["tracks_occupied_pixels", "tracks_sum", "tracks_girth", "tracks_ptd",
                     "ecal_occupied_pixels", "ecal_sum", "ecal_girth", "ecal_ptd",
                     "hcal_occupied_pixels", "hcal_sum", "hcal_girth", "hcal_ptd", "image_mass", "jet_pt"]
    for eta in (0.0, 1.2):
        values = dict(zip(names, compute_observables(image, geo, {"pt": np.array([95.0]),
                                                                  "eta": np.array([eta])})[0]))
        r_track = 0.1 * np.sqrt(0.5)
        r_far, r_near = 0.1 * np.sqrt(2 * 1.5**2), 0.1 * np.sqrt(0.5)
        assert values["tracks_occupied_pixels"] == 2 and values["tracks_sum"] == pytest.approx(4.0)
        assert values["tracks_girth"] == pytest.approx(r_track) and values["tracks_ptd"] == pytest.approx(0.5)
        assert values["ecal_occupied_pixels"] == 2 and values["ecal_sum"] == pytest.approx(40.0)
        assert values["ecal_girth"] == pytest.approx((10 * r_far + 30 * r_near) / 40)
        assert values["ecal_ptd"] == pytest.approx((100 + 900) / 1600)
        assert values["hcal_occupied_pixels"] == values["hcal_sum"] == values["hcal_girth"] == values["hcal_ptd"] == 0
        assert values["image_mass"] == pytest.approx(pair_mass(10, 30, eta - 0.15, eta + 0.05, 0.2), rel=1e-9)
        assert values["jet_pt"] == 95.0
    # no jet eta in the file: the jet sits at eta = 0
    no_eta = dict(zip(names, compute_observables(image, geo, {"pt": np.array([95.0])})[0]))
    assert no_eta["image_mass"] == pytest.approx(pair_mass(10, 30, -0.15, 0.05, 0.2), rel=1e-9)
    # odd size: the axis is the middle of the central pixel, where a lone deposit has girth 0 and no mass
    odd = np.zeros((1, 3, 5, 5), np.float32)
    odd[0, 1, 2, 2] = 7.0
    values = dict(zip(observable_names(geometry(5, 5)), compute_observables(odd, geometry(5, 5))[0]))
    assert values["ecal_girth"] == 0 and values["ecal_ptd"] == 1 and values["image_mass"] == pytest.approx(0, abs=1e-6)


def test_geometry_from_file_attributes(tmp_path):
    path, _, _ = write_jets(tmp_path / "geo.h5", n=4, attrs={"detector": DETECTOR})
    geo = Geometry.from_info(open_jet_file(path))
    assert geo.cell_size == 0.1 and geo.cell_size_known and geo.energy_channels == (1, 2)
    assert geo.channel_names == ("tracks", "ecal", "hcal") and (geo.height, geo.width) == (16, 16)
    bare, _, _ = write_jets(tmp_path / "bare.h5", n=4)  # no geometry: girth in pixels, no mass
    geo = Geometry.from_info(open_jet_file(bare))
    assert not geo.cell_size_known and geo.cell_size == 1.0 and "image_mass" not in observable_names(geo)


def test_best_cut_and_direction():
    assert best_cut_threshold(np.array([1.0, 2, 3, 4]), np.array([0, 0, 1, 1])) == (2.5, 1.0)
    threshold, acc = best_cut_threshold(np.array([1.0, 1, 2, 2]), np.array([0, 1, 1, 1]))  # no cut inside ties
    assert threshold < 1.0 and acc == 0.75
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    x = np.stack([rng.normal(size=400), -3.0 * y + rng.normal(size=400)], axis=1)  # column 1: smaller = label 1
    cut = fit_best_observable((x, y), (x, y), ["noise", "signal"])
    assert cut.name == "signal" and cut.sign == -1 and cut.val_auc > 0.9
    assert np.all(np.diff(cut.probability(x)[np.argsort(cut.signed(x))]) >= 0)  # the map keeps the ranking
    assert (cut.decide(x) == y).mean() == pytest.approx(cut.val_acc)


def test_gbdt_splits_on_few_labelled_jets():
    rng = np.random.default_rng(1)
    y = np.arange(30) % 2
    x = np.stack([y + 0.3 * rng.normal(size=30), rng.normal(size=30)], axis=1)
    model = fit_gbdt((x, y), (x, y), seed=0, learning_rate=0.1, max_iter=50, max_leaf_nodes=15,
                     min_samples_leaf=20, patience=5)
    assert model.min_samples_leaf == 10 and roc_auc_score(y, model.predict_proba(x)[:, 1]) > 0.9


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    """Label 1 jets are sparser (quark-like), so every baseline has something to find."""
    n = 240
    labels = np.arange(n) % 2
    images = np.where(labels[:, None, None, None] == 1, sparse_images(n, occupancy=0.04, seed=1),
                      sparse_images(n, occupancy=0.08, seed=2)).astype(np.float32)
    path, _, _ = write_jets(tmp_path_factory.mktemp("baselines") / "toy.h5", images, labels,
                            attrs={"detector": DETECTOR, "channel_names": ["Tracks", "ECAL", "HCAL"]})
    return path


def config(toy_file, kind: str, **overrides) -> BaselineConfig:
    return BaselineConfig(kind=kind, data=str(toy_file), experiment="test-baselines", seed=2,
                          **{**SPLIT, **(TINY_CNN if kind == "cnn" else {}), **overrides})


@pytest.mark.parametrize("kind", ["observable", "gbdt", "cnn"])
def test_each_kind_logs_a_finished_run(toy_file, kind):
    result = run_baseline(config(toy_file, kind), progress=False)
    run = mlflow.get_run(result["run_id"])
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    assert tags["arm"] == kind and tags["baseline"] == "true" and tags["mlflow.runName"] == f"{kind}-labels1" + (
        "-lr0.003" if kind == "cnn" else "") + "-seed2"
    assert 0.0 <= metrics["test_auc"] <= 1.0 and metrics["test_auc"] == result["test_auc"] > 0.7
    assert {"test_acc", "test_loss", "best_val_auc", "train_time_s"} <= set(metrics)
    assert params["labelled_jets"] == "120" == str(result["labelled_jets"]) and params["kind"] == kind
    assert tags["data_sha256"] and params["split_test"] == "36"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result["run_id"])}
    assert {"config.json", "test_predictions.csv", "roc_curve.png", "roc_rejection.png"} <= artifacts
    if kind == "observable":
        assert params["observable"] in params["observables"].split(",")
        assert params["observable_direction"] in ("larger", "smaller")
    if kind == "gbdt":
        assert len(params["observables"].split(",")) == 14 and int(params["gbdt_rounds"]) >= 1
        assert params["gbdt_leaf_size"] == "20"
        assert "gbdt_importance.csv" in artifacts
    if kind == "cnn":  # "" resolves to the CNN's preprocessing, and the logged config says so
        assert params["pixel_transform"] == "log1p" and params["pixel_scaling"] == "channel"
        assert mlflow.artifacts.load_dict(f"runs:/{result['run_id']}/preprocessing.json")["pixel_scaling"] == "channel"
        history = mlflow.MlflowClient().get_metric_history(result["run_id"], "val_auc")
        assert len(history) == TINY_CNN["epochs"]


@pytest.mark.parametrize("kind", ["gbdt", "cnn"])
def test_same_seed_same_numbers(toy_file, kind):
    first, second = (run_baseline(config(toy_file, kind, pixel_transform="none" if kind == "cnn" else ""),
                                  progress=False) for _ in range(2))
    for key in ("test_auc", "test_acc", "test_loss", "val_auc"):
        assert first[key] == second[key], key
    assert first["run_id"] != second["run_id"]


def test_labelled_subset_is_the_arms(toy_file):
    baseline = config(toy_file, "gbdt", label_fraction=0.5)
    arm = DownstreamConfig.for_arm("scratch", data=str(toy_file), seed=2, label_fraction=0.5, **SPLIT)
    data = prepare_data(baseline, progress=False)
    arms_jets = subsample(prepare_data(arm, progress=False).splits["train"], arm.label_fraction, arm.seed)
    np.testing.assert_array_equal(labelled_indices(baseline, data), arms_jets)
    # ensure_experiment, not mlflow.set_experiment: that would make one experiment active for the
    # rest of the session (MLFLOW_EXPERIMENT_ID), which other tests' runs are not in
    with mlflow.start_run(experiment_id=tracking.ensure_experiment("test-baselines-parent")) as parent:
        result = run_baseline(baseline, progress=False)
    run = mlflow.get_run(result["run_id"])
    assert result["labelled_jets"] == len(arms_jets) == 60 and run.data.params["labelled_jets"] == "60"
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id  # nests under a pipeline's run


def test_bad_options_are_one_line_errors(toy_file):
    with pytest.raises(ValueError, match=r"^kind must be one of \('observable', 'gbdt', 'cnn'\), got 'svm'$"):
        BaselineConfig(kind="svm")
    with pytest.raises(ValueError, match="label_fraction must be in"):
        BaselineConfig(label_fraction=0.0)
    with pytest.raises(ValueError, match="cnn_channels must be positive integers"):
        BaselineConfig(cnn_channels="32,x")
    with pytest.raises(ValueError, match="pixel_scaling must be one of"):
        BaselineConfig(kind="cnn", pixel_scaling="global")
