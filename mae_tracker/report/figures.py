"""Figures for the report and the label-efficiency grid (matplotlib, no display needed)."""

from __future__ import annotations


import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mae_tracker.baselines.config import BASELINES  # noqa: E402

ARM_COLOURS = {"finetune": "tab:blue", "probe": "tab:orange", "scratch": "tab:green", "pretrain": "tab:grey",
               "cnn": "tab:purple", "gbdt": "tab:brown", "observable": "tab:olive"}


def label_efficiency_figure(frame: pd.DataFrame, title: str = "") -> Figure:
    """Test AUC against the number of labelled jets (log x), one line per arm: the mean over
    seeds, a min-max band, and every seed as a dot."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for arm, group in frame.groupby("arm", sort=True):
        stats = group.groupby("labelled_jets")["test_auc"].agg(["mean", "min", "max", "count"]).sort_index()
        colour = ARM_COLOURS.get(arm)
        ax.plot(stats.index, stats["mean"], marker="o", color=colour, linestyle="--" if arm in BASELINES else "-",
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


def save(fig: Figure, path: str) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)
