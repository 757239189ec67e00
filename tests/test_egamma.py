"""`mae-tracker generate --task electron-photon`: schema, reproducibility and shower physics.

The module sample: 2,000 particles (seed 5), default settings. Measured on it: sigma_iphiiphi
(3x3, energy-weighted) AUC ~0.63 with electrons wider; ~40 % of photons converted.
"""

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from mae_tracker.cli import main
from mae_tracker.sim import electron_photon as egamma
from mae_tracker.sim.electron_photon import EGammaConfig, generate_egamma_file
from mae_tracker.data.jetfile import JetImageReader, open_jet_file

N = 2000


def read(path):
    with h5py.File(path, "r") as f:
        return {key: f[key][()] for key in f}, dict(f.attrs)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return generate_egamma_file(EGammaConfig(n_particles=N, seed=5), tmp_path_factory.mktemp("eg") / "eg.h5",
                                workers=2, progress=False)


def sigma_phiphi(energy, half=1):
    """Energy-weighted RMS spread in phi (crystals) in the (2 half + 1)^2 window on the seed."""
    window = energy[:, 16 - half:17 + half, 16 - half:17 + half]
    per_column = window.sum(axis=1)
    cols = np.arange(-half, half + 1)
    mean = (per_column * cols).sum(1) / per_column.sum(1)
    return np.sqrt((per_column * (cols - mean[:, None]) ** 2).sum(1) / per_column.sum(1))


def test_schema_and_reader(sample):
    data, attrs = read(sample)
    assert set(data) == {"X", "y", "pt", "eta", "converted"}
    x, y = data["X"], data["y"]
    assert x.shape == (N, 32, 32, 2) and x.dtype == np.float32
    assert (y == 1).sum() == (y == 0).sum() == N // 2
    assert attrs["task"] == "electron-photon" and list(attrs["class_names"]) == ["electron", "photon"]
    assert list(attrs["channel_names"]) == ["energy", "time"] and attrs["label_convention"] == "1=electron,0=photon"
    energy, time = x[..., 0], x[..., 1]
    # centred on the most energetic crystal (chosen before noise, so a neighbour may win by a hair),
    # energy conserved up to leakage and noise
    seed_row, seed_col = np.divmod(energy.reshape(N, -1).argmax(axis=1), 32)
    assert (np.abs(seed_row - 16) <= 1).all()  # in phi two conversion legs can be nearly equal
    assert ((seed_row == 16) & (seed_col == 16)).mean() > 0.95
    true_e = data["pt"] * np.cosh(data["eta"])
    assert 0.93 < np.median(energy.sum(axis=(1, 2)) / true_e) < 1.01
    # time only where there is energy; time of flight to r = 1.29 m is ~4.3 ns cosh(eta)
    assert ((time > 0) == (energy > 0)).all()
    seed_time = time[:, 16, 16] / np.cosh(data["eta"])
    assert abs(np.median(seed_time) - 1290 / 299.79) < 0.1
    info = open_jet_file(sample)
    assert info.images_key == "X" and info.image_shape == (2, 32, 32) and info.class_names == ("electron", "photon")
    images, _ = JetImageReader(info).read([1, 0])
    np.testing.assert_array_equal(images[1], x[0].transpose(2, 0, 1))


def test_conversions(sample):
    data, _ = read(sample)
    photon = data["y"] == 0
    assert (data["converted"][~photon] == 0).all()
    rate = data["converted"][photon].mean()
    assert 0.25 < rate < 0.6  # CMS: 20 % at eta = 0 to ~60 % at the end of the barrel
    eta = np.abs(data["eta"][photon])
    assert data["converted"][photon][eta > 1.0].mean() > data["converted"][photon][eta < 0.5].mean() + 0.15


def test_electrons_wider_in_phi_and_hard_to_tell_apart(sample):
    data, _ = read(sample)
    energy, electron = data["X"][..., 0], data["y"] == 1
    width_phi = sigma_phiphi(energy)
    width_eta = sigma_phiphi(energy.transpose(0, 2, 1))
    assert width_phi[electron].mean() > width_phi[~electron].mean()
    auc = roc_auc_score(electron, width_phi)
    assert 0.6 < auc < 0.8, auc
    # the field bends in phi only: in eta electrons and photons look alike
    assert abs(roc_auc_score(electron, width_eta) - 0.5) < 0.07
    # unconverted photons are the narrowest of all
    unconverted = ~electron & (data["converted"] == 0)
    assert width_phi[unconverted].mean() < width_phi[electron].mean()


def test_reproducible_independent_of_workers(tmp_path):
    config = EGammaConfig(n_particles=40, seed=2)
    a, _ = read(generate_egamma_file(config, tmp_path / "a.h5", workers=1, progress=False))
    b, _ = read(generate_egamma_file(config, tmp_path / "b.h5", workers=2, progress=False))
    c, _ = read(generate_egamma_file(EGammaConfig(n_particles=40, seed=3), tmp_path / "c.h5", progress=False))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(a["X"], c["X"])


def test_cli_and_failure_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "cli.h5"
    result = CliRunner().invoke(main, ["generate", "--task", "electron-photon", "--out", str(out), "--n-jets", "6",
                                       "--pt-min", "20", "--pt-max", "30", "--no-progress"])
    assert result.exit_code == 0, result.output
    data, attrs = read(out)
    assert data["X"].shape == (6, 32, 32, 2) and ((data["pt"] >= 20) & (data["pt"] < 30)).all()
    assert json.loads(attrs["generator"])["pt_min"] == 20

    def broken(task):
        raise KeyboardInterrupt

    monkeypatch.setattr(egamma, "generate_shard", broken)
    with pytest.raises(KeyboardInterrupt):
        generate_egamma_file(EGammaConfig(n_particles=4), tmp_path / "x.h5", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "b.h5", "c.h5", "cli.h5"][3:]
