"""Figures for the report and the label-efficiency study (matplotlib, no display needed)."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

ARM_COLOURS = {"finetune": "tab:blue", "probe": "tab:orange", "scratch": "tab:green", "pretrain": "tab:grey"}


def label_efficiency_figure(frame: pd.DataFrame, title: str = "") -> Figure:
    """Test AUC against the number of labelled jets (log x), one line per arm: the mean over
    seeds, a min-max band, and every seed as a dot."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for arm, group in frame.groupby("arm", sort=True):
        stats = group.groupby("labelled_jets")["test_auc"].agg(["mean", "min", "max", "count"]).sort_index()
        colour = ARM_COLOURS.get(arm)
        ax.plot(stats.index, stats["mean"], marker="o", color=colour,
                label=f"{arm} (mean of {int(stats['count'].max())} seeds)")
        ax.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.2, linewidth=0)
        ax.scatter(group["labelled_jets"], group["test_auc"], s=9, color=colour, alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training jets")
    ax.set_ylabel("test ROC AUC")
    ax.set_title(title or "Label efficiency (band: min-max over seeds)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def roc_figures(curves: Sequence[tuple[str, str, np.ndarray, np.ndarray]]) -> tuple[Figure, Figure]:
    """Standard ROC and the HEP convention (gluon rejection 1/eps_g vs quark efficiency eps_q,
    log y) for several classifiers on one plot each. ``curves``: (arm, legend, labels, scores)."""
    from sklearn.metrics import roc_curve

    roc, ax_roc = plt.subplots(figsize=(5, 4.6))
    rejection, ax_rej = plt.subplots(figsize=(5, 4.6))
    for arm, legend, labels, scores in curves:
        eps_g, eps_q, _ = roc_curve(labels, scores)
        colour = ARM_COLOURS.get(arm)
        ax_roc.plot(eps_g, eps_q, color=colour, label=legend)
        keep = eps_g > 0
        ax_rej.plot(eps_q[keep], 1.0 / eps_g[keep], color=colour, label=legend)
    ax_roc.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="random")
    ax_roc.set_xlabel("gluon efficiency (false positive rate)")
    ax_roc.set_ylabel("quark efficiency (true positive rate)")
    ax_roc.set_title("ROC on the test split", fontsize=10)
    ax_roc.legend(loc="lower right", fontsize=7)
    grid = np.linspace(0.01, 1.0, 100)
    ax_rej.plot(grid, 1.0 / grid, linestyle="--", color="grey", linewidth=0.8, label="random")
    ax_rej.set_yscale("log")
    ax_rej.set_xlabel(r"quark (signal) efficiency $\varepsilon_q$")
    ax_rej.set_ylabel(r"gluon rejection $1/\varepsilon_g$")
    ax_rej.set_title("Background rejection on the test split", fontsize=10)
    ax_rej.grid(alpha=0.3, which="both")
    ax_rej.legend(loc="upper right", fontsize=7)
    for fig in (roc, rejection):
        fig.tight_layout()
    return roc, rejection


def save(fig: Figure, path: str) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)
