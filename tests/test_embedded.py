"""The embedded default dataset: shipped, intact, the one the default generator settings name, and
read by a run with no --data without importing the simulation stack."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from mae_tracker.data.embedded import embedded_dataset, manifest
from mae_tracker.data.errors import DataError
from mae_tracker.data.validate import open_jet_file


def test_the_shipped_file_is_the_one_its_manifest_describes():
    info = manifest()
    path = embedded_dataset()
    assert path is not None and path.name == info["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == info["sha256"]
    jets = open_jet_file(path)
    assert (jets.n_jets, jets.image_shape, jets.task) == (10_000, (3, 32, 32), "quark-gluon")
    assert jets.channel_names == ("Tracks", "ECAL", "HCAL")


def test_the_default_generator_settings_name_the_shipped_file():
    # A changed default (more jets, another seed) must not keep reading the old file.
    from mae_tracker.sim.default import DEFAULT_GENERATOR, default_dataset
    from mae_tracker.sim.quark_gluon import QuarkGluonConfig

    assert manifest()["generator"] == DEFAULT_GENERATOR.to_dict()
    assert default_dataset(progress=False) == embedded_dataset()
    assert embedded_dataset(QuarkGluonConfig(n_jets=200, seed=7).to_dict()) is None


def test_the_shipped_labels_are_balanced_and_the_images_physical():
    import h5py

    with h5py.File(embedded_dataset(), "r") as f:
        labels = f["y"][:]
        images = f["X_jets"][:500]
    assert abs(labels.mean() - 0.5) < 0.01
    assert np.isfinite(images).all() and (images >= 0).all() and (images.sum(axis=(1, 2)) > 0).all()


def test_a_run_with_no_data_reads_it_without_the_simulation_stack():
    code = ("import sys\n"
            "for name in ('pythia8', 'fastjet', 'awkward'):\n    sys.modules[name] = None\n"
            "from mae_tracker.train.config import PretrainConfig\n"
            "from mae_tracker.train.data import data_file\n"
            "path, _ = data_file(PretrainConfig(), progress=False)\n"
            "print(path)\n"
            "print(sorted(m for m in sys.modules if m.startswith('mae_tracker.sim')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    path, sim_modules = proc.stdout.splitlines()
    assert path == str(embedded_dataset()) and sim_modules == "[]"


def test_a_damaged_copy_is_refused_in_one_line(tmp_path, monkeypatch):
    from mae_tracker.data import embedded

    (tmp_path / "manifest.json").write_text(embedded.MANIFEST.read_text())
    (tmp_path / manifest()["file"]).write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    monkeypatch.setattr(embedded, "EMBEDDED_DIR", tmp_path)
    monkeypatch.setattr(embedded, "MANIFEST", tmp_path / "manifest.json")
    with pytest.raises(DataError) as err:
        embedded.embedded_dataset()
    assert "\n" not in str(err.value) and "damaged" in str(err.value) and "--data" in str(err.value)
