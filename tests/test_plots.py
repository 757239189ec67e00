"""Figures a person reads: log-scaled reconstruction grids, HEP-convention ROC curves."""

from __future__ import annotations

import numpy as np
import pytest

from mae_tracker.train import plots


def test_grid_has_four_columns_one_log_colour_bar_in_units_and_labelled_jets():
    original = np.zeros((2, 2, 4, 4), np.float32)
    original[0, 0, 0, 0] = 1.0
    original[0, 1, 0, 0] = 1.0  # channels are summed: 2.0 is the hottest pixel
    original[0, 0, 1, 1] = 2e-2
    original[0, 0, 2, 2] = 1e-6  # fainter than LOG_DECADES below the top: at the bottom, like empty pixels
    mask = np.zeros((2, 1, 4, 4), np.float32)
    mask[:, 0, :2, 2:] = 1.0
    fig = plots.reconstruction_grid(original, mask, original * 0.5, ["ECAL", "HCAL"], "test jets after epoch 2",
                                    labels=["quark", "gluon"], unit="GeV")
    panels = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(panels) == 8  # 2 jets x (original, masked, reconstruction, difference)
    assert [ax.get_title() for ax in panels[:4]] == list(plots.GRID_COLUMNS)
    shown, masked, reconstructed, difference = (ax.images[0] for ax in panels[:4])
    floor = 2.0 * 10 ** -plots.LOG_DECADES
    assert shown.get_array()[0, 0] == pytest.approx(2.0) and shown.get_array()[1, 1] == pytest.approx(2e-2)
    assert shown.get_array()[2, 2] == pytest.approx(floor) and shown.get_array()[3, 3] == pytest.approx(floor)
    assert shown.norm is masked.norm is reconstructed.norm  # one colour scale, shared
    assert type(shown.norm).__name__ == "LogNorm" and shown.norm.vmax == pytest.approx(2.0)
    assert reconstructed.get_array()[0, 0] == pytest.approx(1.0)
    assert difference.get_array()[0, 0] == pytest.approx(-1.0) and difference.norm.vmin == -difference.norm.vmax
    assert masked.get_array().mask[:2, 2:].all() and not masked.get_array().mask[2:, :2].any()
    assert "quark" in panels[0].get_ylabel() and "gluon" in panels[4].get_ylabel()
    bars = [ax.get_xlabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert bars == ["ECAL + HCAL per pixel [GeV], log scale", "difference [GeV]"]
    assert fig.get_suptitle() == "test jets after epoch 2"
    linear = plots.reconstruction_grid(original, mask, original, ["ECAL", "HCAL"], scale="linear")
    assert linear.axes[0].images[0].get_array()[1, 1] == pytest.approx(2e-2)
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


def test_pretrain_grids_read_after_epoch_n_with_class_names_in_stored_units(jets_file, monkeypatch):
    from mae_tracker.train.config import PretrainConfig
    from mae_tracker.train.pretrain import pretrain

    drawn = []
    real = plots.reconstruction_grid

    def recording(original, pixel_mask, reconstruction, channel_names, title="", **kwargs):
        drawn.append((original, reconstruction, title, kwargs))
        return real(original, pixel_mask, reconstruction, channel_names, title, **kwargs)

    monkeypatch.setattr(plots, "reconstruction_grid", recording)
    pretrain(PretrainConfig(data=str(jets_file), epochs=2, max_jets=160, batch_size=32, image_every=0,
                            eval_jets=32, probe_train_jets=0, probe_val_jets=0, experiment="test-grids"),
             progress=False)
    assert [title.split(",")[0] for *_, title, _ in drawn] == ["train jets after epoch 2 of 2",
                                                              "test jets after epoch 2 of 2"]
    for original, reconstruction, _, kwargs in drawn:
        assert len(original) == len(kwargs["labels"]) == 8  # the default image_jets
        assert set(kwargs["labels"]) <= {"quark", "gluon"} and kwargs["unit"] == "stored pixel value"
        assert original.max() > 1.5  # the file's values, not preprocessed [0, 1]
        assert reconstruction.shape == original.shape
