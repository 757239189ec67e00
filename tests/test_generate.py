"""End-to-end tests of `mae-tracker generate` (Pythia 8 + FastJet, no MPI, few hundred jets)."""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from mae_tracker.cli import main
from mae_tracker.sim import pt_matched, shards
from mae_tracker.sim import quark_gluon as gen
from mae_tracker.sim.events import make_pythia
from mae_tracker.sim.pt_matched import pt_matched_selection
from mae_tracker.sim.quark_gluon import QUARK, QuarkGluonConfig, ShardJets
from mae_tracker.sim.quark_gluon import generate_quark_gluon_file as generate_file
from mae_tracker.sim.shards import ShardJob

N_JETS = 200
SEED = 11


def read(path):
    with h5py.File(path, "r") as f:
        return {key: f[key][()] for key in f}, dict(f.attrs)


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """One small file through the real command line, 2 worker processes."""
    out = tmp_path_factory.mktemp("gen") / "small.h5"
    proc = subprocess.run([sys.executable, "-m", "mae_tracker", "generate", "--out", str(out),
                           "--n-jets", str(N_JETS), "--seed", str(SEED), "--no-mpi", "--workers", "2",
                           "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # nothing but our one line on stdout: no Pythia or FastJet banners
    assert proc.stdout == f"wrote {out}\n"
    return out


def test_schema_dtypes_labels_attrs(small):
    data, attrs = read(small)
    assert set(data) == {"X_jets", "y", "pt", "m0"}
    x, y, pt, m0 = data["X_jets"], data["y"], data["pt"], data["m0"]
    assert x.shape == (N_JETS, 32, 32, 3) and x.dtype == np.float32
    assert y.shape == pt.shape == m0.shape == (N_JETS,)
    assert pt.dtype == m0.dtype == np.float32
    assert set(np.unique(y).tolist()) == {0.0, 1.0} and (y == 1).sum() == N_JETS // 2  # balanced
    assert np.isfinite(x).all() and (x >= 0).all()
    assert ((pt >= 70) & (pt < 200)).all() and (m0 > 0).all() and (m0 < pt).all()
    # every image has deposits near its centre, and nearly all have some in every channel
    assert (x[:, 12:20, 12:20, :].sum(axis=(1, 2, 3)) > 0).all()
    assert ((x.sum(axis=(1, 2)) > 0).mean(axis=0) > 0.9).all()
    # shuffled: both classes in the first and in the second half
    assert 0 < y[: N_JETS // 2].mean() < 1 and 0 < y[N_JETS // 2:].mean() < 1
    with h5py.File(small) as f:
        assert f["X_jets"].chunks == (1, 32, 32, 3) and f["X_jets"].compression == "lzf"
    assert list(attrs["channel_names"]) == ["Tracks", "ECAL", "HCAL"]
    assert attrs["label_convention"] == "1=quark,0=gluon"
    assert attrs["schema"] == "e2e-quark-gluon" and attrs["creator"] == "mae-tracker"
    assert attrs["seed"] == SEED
    generator = json.loads(attrs["generator"])
    assert QuarkGluonConfig.from_dict(generator) == QuarkGluonConfig(n_jets=N_JETS, seed=SEED, mpi=False)
    assert generator["pthat_min"] == pytest.approx(49.0)
    assert json.loads(attrs["detector"])["height"] == 32
    versions = json.loads(attrs["versions"])
    assert {"pythia8mc", "fastjet", "numpy", "h5py", "mae-tracker"} <= set(versions)
    generation = json.loads(attrs["generation"])
    assert "PartonLevel:MPI = off" in generation["pythia_settings"]["quark"]
    assert generation["n_events"]["quark"] > N_JETS // 2


def test_same_seed_identical_independent_of_workers(small, tmp_path):
    again = generate_file(QuarkGluonConfig(n_jets=N_JETS, seed=SEED, mpi=False), tmp_path / "w1.h5",
                          workers=1, progress=False)
    first, _ = read(small)
    second, _ = read(again)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def test_other_seed_differs_and_shards_are_prefixes(small, tmp_path):
    big, _ = read(small)
    few, _ = read(generate_file(QuarkGluonConfig(n_jets=20, seed=SEED, mpi=False), tmp_path / "a.h5", progress=False))
    other, _ = read(generate_file(QuarkGluonConfig(n_jets=20, seed=SEED + 1, mpi=False), tmp_path / "b.h5",
                                  progress=False))
    # shard seeds depend on (seed, class, shard) only: a smaller run is a subset of a larger one
    assert set(few["pt"].tolist()) <= set(big["pt"].tolist())
    assert not set(other["pt"].tolist()) & set(few["pt"].tolist())
    assert not np.array_equal(other["X_jets"], few["X_jets"])


def test_e2e_preset_shape(tmp_path):
    out = tmp_path / "e2e.h5"
    result = CliRunner().invoke(main, ["generate", "--out", str(out), "--n-jets", "4", "--preset", "e2e",
                                       "--no-mpi", "--no-progress", "--eta-max", "1.0"])
    assert result.exit_code == 0, result.output
    with h5py.File(out) as f:
        assert f["X_jets"].shape == (4, 125, 125, 3) and f["X_jets"].chunks == (1, 125, 125, 3)
        assert sorted(f["y"][()].tolist()) == [0, 0, 1, 1]
        assert (np.abs(np.asarray(f["X_jets"][:, 62, 62, :])).sum() > 0)
        assert json.loads(f.attrs["detector"])["cell_size"] == pytest.approx(0.0174)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_leaves_no_file(tmp_path, monkeypatch, error):
    calls = []
    real = gen.run_shard

    def flaky(task):
        calls.append(task)
        if len(calls) == 2:  # after one shard has been written
            raise error("boom")
        return real(task)

    monkeypatch.setattr(gen, "run_shard", flaky)
    with pytest.raises(error):
        generate_file(QuarkGluonConfig(n_jets=20, seed=1, mpi=False), tmp_path / "x.h5", progress=False)
    with pytest.raises(error):
        calls.clear()
        generate_file(QuarkGluonConfig(n_jets=20, seed=1, mpi=False, pt_matched=True), tmp_path / "y.h5",
                      progress=False)
    assert leftovers(tmp_path) == []
    # an existing file is left untouched by a failed run
    (tmp_path / "x.h5").write_bytes(b"old")
    calls.clear()
    with pytest.raises(error):
        generate_file(QuarkGluonConfig(n_jets=20, seed=1, mpi=False), tmp_path / "x.h5", progress=False)
    assert leftovers(tmp_path) == ["x.h5"] and (tmp_path / "x.h5").read_bytes() == b"old"


def test_cli_rejects_bad_settings(tmp_path):
    runner = CliRunner()
    for args, message in ((["--n-jets", "7"], "even"), (["--preset", "nope"], "unknown preset"),
                          (["--pt-min", "300"], "pt_min < pt_max"),
                          (["--pt-min", "7000", "--pt-max", "8000"], "beam energy"), (["--workers", "0"], "workers")):
        result = runner.invoke(main, ["generate", "--out", str(tmp_path / "x.h5"), *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert leftovers(tmp_path) == []


def test_pythia_settings_are_checked():
    with pytest.raises(ValueError, match="rejected"):
        make_pythia(["HardQCD:gg2gluon = on"], seed=1)
    with pytest.raises(ValueError, match="not take"):
        make_pythia(["HardQCD:gg2gg = onn"], seed=1)
    with pytest.raises(ValueError, match="seed"):
        make_pythia(["HardQCD:gg2gg = on"], seed=900_000_001)


# --- pT-matched resampling, on synthetic shards (the selection logic, without Pythia) ------------

def fake_shard(task: ShardJob) -> ShardJets:
    """Deterministic per (seed, class, shard); gluons softer than quarks, like the real spectra."""
    _, rng = shards.shard_seeds(task.config.seed, task.label, task.shard)
    slope = 25.0 if task.label == QUARK else 12.0
    pt = np.minimum(70 + rng.exponential(slope, task.n_images), 199.0).astype(np.float32)
    images = np.zeros((task.n_images, 32, 32, 3), np.float32)
    images[:, 0, 0, 0] = pt  # lets us check that images travel with their jets
    return ShardJets(task.label, task.shard, images, pt, (pt / 10).astype(np.float32), n_events=3 * task.n_images)


def test_pt_matched_equal_spectra_and_order_independent(tmp_path, monkeypatch):
    monkeypatch.setattr(gen, "run_shard", fake_shard)
    config = QuarkGluonConfig(n_jets=1000, seed=5, pt_matched=True)
    data, attrs = read(generate_file(config, tmp_path / "pm.h5", progress=False))
    y, pt = data["y"], data["pt"]
    assert (y == 1).sum() == (y == 0).sum() == 500
    edges = np.array(json.loads(attrs["generation"])["pt_bin_edges"])
    np.testing.assert_array_equal(np.histogram(pt[y == 1], edges)[0], np.histogram(pt[y == 0], edges)[0])
    np.testing.assert_array_equal(data["X_jets"][:, 0, 0, 0], pt)  # images travel with their jets
    # the spectra overlap poorly, so more candidates than the first round's were needed
    candidates = json.loads(attrs["generation"])["n_candidates"]
    assert candidates["quark"] > np.ceil(pt_matched.OVERSAMPLE * 500)

    # results arriving in another order (as from a worker pool) change nothing
    monkeypatch.setattr(shards.ShardRunner, "run", lambda self, tasks: iter([fake_shard(t) for t in tasks][::-1]))
    reordered, _ = read(generate_file(config, tmp_path / "pm2.h5", progress=False))
    for key in data:
        np.testing.assert_array_equal(data[key], reordered[key], err_msg=key)


def test_pt_matched_selection_exact_counts():
    edges = np.array([70.0, 80.0, 90.0, 100.0])
    quark = np.array([71, 72, 85, 95, 96, 97, 75.0])
    gluon = np.array([73, 74, 76, 86, 87, 99.0])
    q, g = pt_matched_selection(quark, gluon, 4, edges)
    assert len(q) == len(g) == 4
    np.testing.assert_array_equal(np.histogram(quark[q], edges)[0], np.histogram(gluon[g], edges)[0])
    assert pt_matched_selection(quark, gluon, 6, edges) is None  # overlap is only 5


def test_batch_size_does_not_change_output(tmp_path, monkeypatch):
    config = QuarkGluonConfig(n_jets=20, seed=3, mpi=False)
    default, _ = read(generate_file(config, tmp_path / "a.h5", progress=False))
    monkeypatch.setattr(gen, "MIN_BATCH", 7)
    monkeypatch.setattr(gen, "MAX_BATCH", 7)
    small_batches, _ = read(generate_file(config, tmp_path / "b.h5", progress=False))
    for key in default:
        np.testing.assert_array_equal(default[key], small_batches[key], err_msg=key)
