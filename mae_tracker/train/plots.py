"""Figures the arms log: reconstruction grids, ROC curves, score histograms."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def reconstruction_grid(original: np.ndarray, pixel_mask: np.ndarray, reconstruction: np.ndarray,
                        channel_names: Sequence[str], title: str = "") -> Figure:
    """One row per jet; per channel three panels: original / masked input / reconstruction.

    The three panels of a jet and channel share one colour scale (the original's range), so
    brightness compares directly; masked patches are drawn grey, so "hidden" and "empty" differ.
    ``original`` and ``reconstruction`` are (N, C, H, W) in preprocessed units, ``pixel_mask``
    (N, 1 or C, H, W) with 1 = masked.
    """
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.75")
    hidden = np.broadcast_to(pixel_mask > 0.5, original.shape)
    n_jets, n_channels = original.shape[:2]
    kinds = ("original", "masked", "reconstruction")
    fig, axes = plt.subplots(n_jets, 3 * n_channels, figsize=(1.5 * 3 * n_channels, 1.6 * n_jets + 0.6),
                             squeeze=False, layout="constrained")
    for jet in range(n_jets):
        for channel in range(n_channels):
            vmin = float(np.min(original[jet, channel]))
            vmax = max(float(np.max(original[jet, channel])), vmin + 1e-6)
            masked = np.ma.masked_array(original[jet, channel], mask=hidden[jet, channel])
            panels = (original[jet, channel], masked, reconstruction[jet, channel])
            for k, panel in enumerate(panels):
                ax = axes[jet, 3 * channel + k]
                ax.imshow(panel, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if jet == 0:
                    ax.set_title(f"{channel_names[channel]}\n{kinds[k]}", fontsize=8)
            if channel == 0:
                axes[jet, 0].set_ylabel(f"jet {jet}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def roc_figure(labels: np.ndarray, scores: np.ndarray, title: str) -> Figure:
    from sklearn.metrics import roc_auc_score, roc_curve

    false_pos, true_pos, _ = roc_curve(labels, scores)
    auc = roc_auc_score(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(false_pos, true_pos, label=f"AUC = {auc:.4f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="random")
    ax.set_xlabel("gluon efficiency (false positive rate)")
    ax.set_ylabel("quark efficiency (true positive rate)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def score_histogram(labels: np.ndarray, scores: np.ndarray, title: str) -> Figure:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    bins = np.linspace(0.0, 1.0, 41)
    ax.hist(scores[labels == 1], bins=bins, histtype="step", density=True, label="quark (y=1)")
    ax.hist(scores[labels == 0], bins=bins, histtype="step", density=True, label="gluon (y=0)")
    ax.set_xlabel("classifier score P(quark)")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    return fig
