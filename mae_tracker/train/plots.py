"""Figures the arms log: reconstruction grids, ROC curves, score histograms."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def reconstruction_grid(original: np.ndarray, masked: np.ndarray, reconstruction: np.ndarray,
                        channel_names: Sequence[str], title: str = "") -> Figure:
    """Rows: one jet and channel; columns: original / masked input / reconstruction.

    The three panels of a row share one colour scale, so brightness can be compared
    directly. Arrays are (N, C, H, W) in preprocessed units.
    """
    n_jets, n_channels = original.shape[:2]
    rows = n_jets * n_channels
    fig, axes = plt.subplots(rows, 3, figsize=(6.6, 2.1 * rows), squeeze=False)
    for jet in range(n_jets):
        for channel in range(n_channels):
            row = jet * n_channels + channel
            panels = (original[jet, channel], masked[jet, channel], reconstruction[jet, channel])
            vmax = max(float(np.max(original[jet, channel])), 1e-6)
            vmin = float(np.min(original[jet, channel]))
            for col, (panel, label) in enumerate(zip(panels, ("original", "masked", "reconstruction"))):
                ax = axes[row, col]
                image = ax.imshow(panel, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(label, fontsize=9)
                if col == 0:
                    ax.set_ylabel(f"jet {jet}\n{channel_names[channel]}", fontsize=8)
            fig.colorbar(image, ax=axes[row, :].tolist(), fraction=0.02, pad=0.01)
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
