"""Figures a person reads: log-scaled reconstruction grids, HEP-convention ROC curves."""

from __future__ import annotations

import numpy as np
import pytest

from mae_tracker.train import plots


def test_log_scale_grid_shows_three_decades_and_keeps_masked_patches_grey():
    original = np.zeros((1, 1, 4, 4), np.float32)
    original[0, 0, 0, 0] = 1.0
    original[0, 0, 1, 1] = 1e-2
    original[0, 0, 2, 2] = 1e-6  # fainter than 3 decades: at the bottom, like empty pixels
    mask = np.zeros((1, 1, 4, 4), np.float32)
    mask[0, 0, :2, 2:] = 1.0
    fig = plots.reconstruction_grid(original, mask, original * 0.5, ["ECAL"], scale="log")
    shown, masked, reconstructed = (ax.images[0].get_array() for ax in fig.axes[:3])
    assert shown[0, 0] == pytest.approx(0.0) and shown[1, 1] == pytest.approx(-2.0)
    assert shown[2, 2] == pytest.approx(-3.0) and shown[3, 3] == pytest.approx(-3.0)
    assert reconstructed[0, 0] == pytest.approx(np.log10(0.5))
    assert masked.mask[:2, 2:].all() and not masked.mask[2:, :2].any()
    assert "log10" in fig.axes[0].get_title()
    linear = plots.reconstruction_grid(original, mask, original, ["ECAL"], scale="linear")
    assert linear.axes[0].images[0].get_array()[1, 1] == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="grid scale"):
        plots.reconstruction_grid(original, mask, original, ["ECAL"], scale="sqrt")


def test_rejection_curve_is_one_over_background_efficiency():
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], 500)
    scores = np.concatenate([rng.normal(1.0, 1.0, 500), rng.normal(0.0, 1.0, 500)])
    fig = plots.rejection_figure({"arm": (labels, scores)}, "t")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    efficiency, rejection = ax.lines[0].get_data()
    # at 50 % quark efficiency, a unit-separation Gaussian pair rejects about 1/(1 - Phi(1)) ~ 6.3 gluons
    at_half = rejection[np.argmin(np.abs(efficiency - 0.5))]
    assert 4.0 < at_half < 9.0
    assert np.all(rejection >= 1.0)
