"""`mae-tracker generate --task top-qcd`: schema, reproducibility and physics of boosted top jets.

Small samples, no MPI (Pythia + FastJet, 2 workers). Measured on the module sample (200 jets,
seed 3): image mass median ~170 GeV for top, ~75 for QCD, mass AUC ~0.9; a displaced-track
pixel in ~75 % of top jets vs ~15 % of QCD jets.
"""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from mae_tracker.baselines import observables
from mae_tracker.cli import main
from mae_tracker.sim import top_qcd as top_jets
from mae_tracker.data.jetfile import JetImageReader, open_jet_file
from mae_tracker.sim.top_qcd import TopQCDConfig, generate_top_qcd_file

N_JETS = 200
SEED = 3
TOP_MASS = 172.5


def read(path):
    with h5py.File(path, "r") as f:
        return {key: f[key][()] for key in f}, dict(f.attrs)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    out = tmp_path_factory.mktemp("top") / "top.h5"
    proc = subprocess.run([sys.executable, "-m", "mae_tracker", "generate", "--task", "top-qcd", "--out", str(out),
                           "--n-jets", str(N_JETS), "--seed", str(SEED), "--no-mpi", "--workers", "2",
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"wrote {out}\n"
    return out


def image_mass(x, eta, cell):
    """Jet mass from the calorimeter images (ECAL + HCAL energies, massless pixels): the
    baselines' image_mass observable on channels-last images."""
    _, height, width, _ = x.shape
    d_eta = (np.arange(height) + 0.5 - height / 2) * cell
    d_phi = (np.arange(width) + 0.5 - width / 2) * cell
    return observables.image_mass(x[..., 1] + x[..., 2], d_eta, d_phi, eta)


def test_schema_attrs_and_reader(sample):
    data, attrs = read(sample)
    assert set(data) == {"X_jets", "y", "pt", "m0", "eta"}
    x, y = data["X_jets"], data["y"]
    assert x.shape == (N_JETS, 32, 32, 8) and x.dtype == np.float32
    assert (y == 1).sum() == (y == 0).sum() == N_JETS // 2
    assert np.isfinite(x).all() and (x >= 0).all()
    assert ((data["pt"] >= 400) & (data["pt"] < 600)).all() and (np.abs(data["eta"]) < 1.5).all()
    assert attrs["task"] == "top-qcd" and list(attrs["class_names"]) == ["top", "QCD"]
    assert attrs["label_convention"] == "1=top,0=QCD" and attrs["schema"] == "e2e-top-qcd"
    names = ["Tracks", "ECAL", "HCAL", "d0", "dz", "BPix1", "BPix2", "BPix3"]
    assert list(attrs["channel_names"]) == names and set(json.loads(attrs["channel_units"])) == set(names)
    detector = json.loads(attrs["detector"])
    # the window holds an R=0.8 jet, and the image makes <= 64 patches of the stored patch size
    assert detector["height"] * detector["cell_size"] / 2 > 0.8
    assert (32 // attrs["patch_size"]) ** 2 <= 64
    generation = json.loads(attrs["generation"])
    assert "24:onMode = off" in generation["pythia_settings"]["top"]
    assert "ParticleDecays:limitTau0 = on" in generation["pythia_settings"]["QCD"]
    assert TopQCDConfig.from_dict(json.loads(attrs["generator"])) == TopQCDConfig(n_jets=N_JETS, seed=SEED, mpi=False)
    # the ordinary reader takes it unchanged, and knows the class names
    info = open_jet_file(sample)
    assert info.image_shape == (8, 32, 32) and info.class_names == ("top", "QCD") and info.task == "top-qcd"
    images, labels = JetImageReader(info).read([5, 0, 3])
    assert images.shape == (3, 8, 32, 32)
    np.testing.assert_array_equal(images[0], x[5].transpose(2, 0, 1))


def test_image_mass_peaks_at_top_mass_and_separates(sample):
    data, attrs = read(sample)
    cell = json.loads(attrs["detector"])["cell_size"]
    mass = image_mass(data["X_jets"], data["eta"], cell)
    top, qcd = data["y"] == 1, data["y"] == 0
    assert abs(np.median(mass[top]) - TOP_MASS) < 30
    assert np.median(mass[qcd]) < 120
    # the peak: most top jets within 40 GeV of the top mass, few QCD jets
    near = np.abs(mass - TOP_MASS) < 40
    assert near[top].mean() > 0.5 > 2 * near[qcd].mean()
    assert roc_auc_score(top, mass) > 0.85
    # the particle-level mass tells the same story
    assert abs(np.median(data["m0"][top]) - TOP_MASS) < 20


def test_displaced_tracks_more_often_in_top_jets(sample):
    data, _ = read(sample)
    x, top = data["X_jets"], data["y"] == 1
    tracks, d0 = x[..., 0], x[..., 3]
    assert ((d0 > 0) == (tracks > 0)).all()  # the same tracks, so the same pixels
    mean_abs_d0 = np.where(tracks > 0, d0 / np.maximum(tracks, 1e-9), 0.0)  # pT-weighted mean |d0| [mm]
    displaced = (mean_abs_d0 > 0.2).any(axis=(1, 2))
    assert displaced[top].mean() > 0.5 and displaced[top].mean() > 2 * displaced[~top].mean()
    # pixel layers: hits in every layer for every jet, inner layers no busier than the sum of tracks
    assert (x[..., 5:8].sum(axis=(1, 2)) > 0).all()


def test_same_seed_same_file_any_workers(tmp_path):
    config = TopQCDConfig(n_jets=4, seed=9, mpi=False, channels=5)
    a, _ = read(generate_top_qcd_file(config, tmp_path / "a.h5", workers=1, progress=False))
    b, _ = read(generate_top_qcd_file(config, tmp_path / "b.h5", workers=2, progress=False))
    assert a["X_jets"].shape == (4, 32, 32, 5)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_e2e_preset_three_channels(tmp_path):
    out = tmp_path / "e2e.h5"
    result = CliRunner().invoke(main, ["generate", "--task", "top-qcd", "--out", str(out), "--n-jets", "2",
                                       "--preset", "e2e", "--channels", "3", "--no-mpi", "--no-progress"])
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        assert f["X_jets"].shape == (2, 125, 125, 3) and list(f.attrs["channel_names"]) == ["Tracks", "ECAL", "HCAL"]
        assert f.attrs["patch_size"] == 5


def test_cli_rejects_settings_of_other_tasks(tmp_path):
    runner = CliRunner()
    for args, message in ((["--task", "top-qcd", "--channels", "4"], "channels"),
                          (["--task", "top-qcd", "--pt-matched"], "--pt-matched"),
                          (["--task", "quark-gluon", "--channels", "8"], "3 channels"),
                          (["--task", "electron-photon", "--mpi"], "--mpi"),
                          (["--task", "electron-photon", "--preset", "e2e"], "32x32")):
        result = runner.invoke(main, ["generate", "--out", str(tmp_path / "x.h5"), *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert list(tmp_path.iterdir()) == []


def test_failure_leaves_no_file(tmp_path, monkeypatch):
    real = top_jets.generate_shard
    calls = []

    def flaky(task):
        calls.append(task)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(task)

    monkeypatch.setattr(top_jets, "generate_shard", flaky)
    with pytest.raises(RuntimeError):
        generate_top_qcd_file(TopQCDConfig(n_jets=2, seed=1, mpi=False), tmp_path / "x.h5", progress=False)
    assert list(tmp_path.iterdir()) == []
