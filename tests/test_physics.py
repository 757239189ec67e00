"""Physics sanity of the generated images: gluon jets are busier and wider than quark jets.

Uses the session fixture ``jets_file`` (tests/conftest.py): 1,000 Pythia jets, CPU preset,
no MPI, seed 7. Measured on it: track-pixel count AUC ~0.82, girth ~0.78, pT alone ~0.49
(with MPI on, 1,000 jets: 0.74 / 0.77 / 0.45).
"""

import json

import h5py
import numpy as np
from sklearn.metrics import roc_auc_score


def observables(path):
    with h5py.File(path, "r") as f:
        x, y, pt = f["X_jets"][()], f["y"][()], f["pt"][()]
        cell = json.loads(f.attrs["detector"])["cell_size"]
    _, height, width, _ = x.shape
    # distance of each pixel centre from the jet axis (which sits at the image centre)
    d_eta = (np.arange(height) + 0.5 - height / 2) * cell
    d_phi = (np.arange(width) + 0.5 - width / 2) * cell
    radius = np.hypot(d_eta[:, None], d_phi[None, :])
    track_pixels = (x[..., 0] > 0).sum(axis=(1, 2))
    # girth: deposit-weighted mean distance from the axis, inside the jet cone R < 0.4
    deposit = x.sum(axis=-1) * (radius < 0.4)
    girth = (deposit * radius).sum(axis=(1, 2)) / deposit.sum(axis=(1, 2))
    return y.astype(int), track_pixels, girth, pt


def test_gluon_jets_have_more_track_pixels_and_are_wider(jets_file):
    y, track_pixels, girth, pt = observables(jets_file)
    quark, gluon = y == 1, y == 0
    assert quark.sum() == gluon.sum() >= 400
    assert track_pixels[gluon].mean() > 1.3 * track_pixels[quark].mean()
    assert girth[gluon].mean() > 1.15 * girth[quark].mean()
    # a single observable separates the classes (score: "gluon-like")
    assert roc_auc_score(gluon, track_pixels) > 0.75
    assert roc_auc_score(gluon, girth) > 0.7
    # ... while the pT spectra are similar, so pT alone is not what separates them
    assert abs(roc_auc_score(gluon, pt) - 0.5) < 0.1
