"""Figures the arms log: reconstruction grids, ROC curves, score histograms."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


LOG_DECADES = 3.0  # a log colour scale shows this many decades below the hottest pixel


def reconstruction_grid(original: np.ndarray, pixel_mask: np.ndarray, reconstruction: np.ndarray,
                        channel_names: Sequence[str], title: str = "", scale: str = "log") -> Figure:
    """One row per jet; per channel three panels: original / masked input / reconstruction.

    The three panels of a jet and channel share one colour scale (the original's range), so
    brightness compares directly; masked patches are drawn grey, so "hidden" and "empty" differ.
    Deposits span three orders of magnitude, so the default ``scale="log"`` shows log10 of the
    values over LOG_DECADES decades below the jet's hottest pixel (anything fainter, and empty
    pixels, at the bottom of the scale); ``"linear"`` shows the values as they are.
    ``original`` and ``reconstruction`` are (N, C, H, W) in preprocessed units, ``pixel_mask``
    (N, 1 or C, H, W) with 1 = masked.
    """
    if scale not in ("log", "linear"):
        raise ValueError(f"grid scale must be 'log' or 'linear', got {scale!r}")
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.75")
    hidden = np.broadcast_to(pixel_mask > 0.5, original.shape)
    n_jets, n_channels = original.shape[:2]
    kinds = ("original", "masked", "reconstruction")
    fig, axes = plt.subplots(n_jets, 3 * n_channels, figsize=(1.5 * 3 * n_channels, 1.6 * n_jets + 0.6),
                             squeeze=False, layout="constrained")
    for jet in range(n_jets):
        for channel in range(n_channels):
            truth, predicted = original[jet, channel], reconstruction[jet, channel]
            if scale == "log":
                top = max(float(np.max(truth)), 1e-12)
                floor = top * 10.0 ** -LOG_DECADES
                truth, predicted = (np.log10(np.maximum(a, floor)) for a in (truth, predicted))
            vmin = float(np.min(truth))
            vmax = max(float(np.max(truth)), vmin + 1e-6)
            masked = np.ma.masked_array(truth, mask=hidden[jet, channel])
            panels = (truth, masked, predicted)
            for k, panel in enumerate(panels):
                ax = axes[jet, 3 * channel + k]
                ax.imshow(panel, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if jet == 0:
                    unit = " (log10)" if scale == "log" else ""
                    ax.set_title(f"{channel_names[channel]}{unit}\n{kinds[k]}", fontsize=8)
            if channel == 0:
                axes[jet, 0].set_ylabel(f"jet {jet}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


Curves = dict[str, tuple[np.ndarray, np.ndarray]]
"""Named (labels, scores) pairs: one ROC curve each, e.g. {"finetune": (y, p), "probe": ...}."""


def roc_figure(curves: Curves, title: str, signal: str = "signal", background: str = "background") -> Figure:
    """Standard ROC: signal efficiency (true positive rate) vs background efficiency."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    for name, (labels, scores) in curves.items():
        false_pos, true_pos, _ = roc_curve(labels, scores)
        ax.plot(false_pos, true_pos, label=f"{name}: AUC = {roc_auc_score(labels, scores):.4f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="random")
    ax.set_xlabel(f"{background} efficiency (false positive rate)")
    ax.set_ylabel(f"{signal} efficiency (true positive rate)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def rejection_figure(curves: Curves, title: str, signal: str = "signal", background: str = "background") -> Figure:
    """The HEP convention: background rejection 1/eps_background (log scale) against signal
    efficiency eps_signal; a random classifier is the curve 1/eps."""
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    for name, (labels, scores) in curves.items():
        false_pos, true_pos, _ = roc_curve(labels, scores)
        keep = false_pos > 0  # rejection is infinite where no background passes
        ax.plot(true_pos[keep], 1.0 / false_pos[keep], label=name)
    eff = np.linspace(0.01, 1.0, 100)
    ax.plot(eff, 1.0 / eff, linestyle="--", color="grey", linewidth=0.8, label="random")
    ax.set_yscale("log")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(f"{signal} efficiency $\\varepsilon_{{{signal}}}$")
    ax.set_ylabel(f"{background} rejection $1/\\varepsilon_{{{background}}}$")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def score_histogram(labels: np.ndarray, scores: np.ndarray, title: str, signal: str = "signal",
                    background: str = "background") -> Figure:
    fig, ax = plt.subplots(figsize=(5, 3.6))
    bins = np.linspace(0.0, 1.0, 41)
    ax.hist(scores[labels == 1], bins=bins, histtype="step", density=True, label=f"{signal} (y=1)")
    ax.hist(scores[labels == 0], bins=bins, histtype="step", density=True, label=f"{background} (y=0)")
    ax.set_xlabel(f"classifier score P({signal})")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    return fig
