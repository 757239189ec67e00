"""Figures the arms log: reconstruction grids, ROC curves, score histograms."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


LOG_DECADES = 4.0  # the log colour scale spans this many decades below the figure's hottest pixel
GRID_COLUMNS = ("original", "masked input", "reconstruction", "reconstruction - original")


def reconstruction_grid(original: np.ndarray, pixel_mask: np.ndarray, reconstruction: np.ndarray,
                        channel_names: Sequence[str], title: str = "", scale: str = "log",
                        labels: Sequence[str] | None = None, unit: str = "preprocessed units") -> Figure:
    """One row per jet, four columns: original / masked input / reconstruction / difference.

    Each panel shows the sum over the channels: a physicist reads a jet image as where its
    energy went, and the summed deposit is that picture (one row per channel would triple the
    rows, and channels in very different units are best compared through the per-channel
    figures the run logs as metrics). The sum is only physical when the images are in the
    file's units (``unit`` names them; the arm maps its reconstructions back); in preprocessed
    units it is a sum of scaled values, and ``unit`` says so.

    The first three columns share ONE colour bar for the whole figure, so brightness compares
    across columns and jets; ``scale="log"`` (the default: deposits span orders of magnitude)
    spans LOG_DECADES decades below the hottest original pixel, fainter and empty pixels at the
    bottom; ``"linear"`` from 0. Masked patches are drawn grey, so "hidden" and "empty" differ.
    The difference column has its own symmetric, linear colour bar (red: too much, blue: too little).
    ``original`` and ``reconstruction`` are (N, C, H, W), ``pixel_mask`` (N, 1 or C, H, W) with
    1 = masked; ``labels`` (one per jet, e.g. the class name) go beside each row.
    """
    from matplotlib.colors import LogNorm, Normalize

    if scale not in ("log", "linear"):
        raise ValueError(f"grid scale must be 'log' or 'linear', got {scale!r}")
    n_jets = original.shape[0]
    if labels is not None and len(labels) != n_jets:
        raise ValueError(f"{len(labels)} labels for {n_jets} jets")
    truth, predicted = original.sum(axis=1), reconstruction.sum(axis=1)
    hidden = np.asarray(pixel_mask).max(axis=1) > 0.5  # a pixel hidden in any channel
    top = max(float(truth.max()), 1e-12)
    if scale == "log":
        norm: Normalize = LogNorm(vmin=top * 10.0 ** -LOG_DECADES, vmax=top)
        shown = [np.maximum(a, norm.vmin) for a in (truth, predicted)]  # empty (or negative) -> bottom
    else:
        norm = Normalize(vmin=min(0.0, float(truth.min())), vmax=top)
        shown = [truth, predicted]
    difference = predicted - truth
    reach = max(float(np.abs(difference).max()), 1e-12)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.75")
    fig, axes = plt.subplots(n_jets, 4, figsize=(8.4, 1.7 * n_jets + 0.9), squeeze=False, layout="constrained")
    image = diff_image = None
    for jet in range(n_jets):
        masked = np.ma.masked_array(shown[0][jet], mask=hidden[jet])
        for k, panel in enumerate((shown[0][jet], masked, shown[1][jet])):
            image = axes[jet, k].imshow(panel, cmap=cmap, norm=norm, interpolation="nearest")
        diff_image = axes[jet, 3].imshow(difference[jet], cmap="RdBu_r", vmin=-reach, vmax=reach,
                                         interpolation="nearest")
        for ax in axes[jet]:
            ax.set_xticks([])
            ax.set_yticks([])
        name = f"jet {jet + 1}" + (f"\n{labels[jet]}" if labels is not None else "")
        axes[jet, 0].set_ylabel(name, fontsize=8)
    for k, column in enumerate(GRID_COLUMNS):
        axes[0, k].set_title(column, fontsize=8)
    summed = " + ".join(channel_names) if len(channel_names) > 1 else str(channel_names[0])
    bar = fig.colorbar(image, ax=axes[:, :3].ravel().tolist(), location="bottom", shrink=0.8, aspect=40)
    bar.set_label(f"{summed} per pixel [{unit}]" + (", log scale" if scale == "log" else ""), fontsize=8)
    diff_bar = fig.colorbar(diff_image, ax=axes[:, 3].ravel().tolist(), location="bottom", aspect=12)
    diff_bar.set_label(f"difference [{unit}]", fontsize=8)
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
