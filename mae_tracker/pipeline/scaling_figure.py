"""The scaling study's figure: test AUC against pretraining jets, one panel per labelled fraction."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from mae_tracker.report import figures

LINE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:cyan", "tab:pink", "tab:olive", "tab:grey")
EXTEND = 1000.0  # the fitted curves are drawn at most this factor beyond the largest measured size


def save_scaling_figure(points: pd.DataFrame, fits: pd.DataFrame, rows: pd.DataFrame, path: str | Path, *,
                        encoder_params: dict[str, int] | None = None, title: str = "") -> None:
    """Mean ± std over seeds per (encoder, arm) against pretraining jets (log x), every seed as a
    dot; baselines as horizontal bands (mean ± std); each fit dashed, extended to its crossing with
    the best baseline (or EXTEND x the largest size), and marked as an extrapolation."""
    plt = figures.plt
    fractions = sorted(points.label_fraction.unique())
    fig, axes = plt.subplots(1, len(fractions), figsize=(6.2 * len(fractions), 4.8), squeeze=False)
    lines = points[points.encoder != "-"]
    keys = sorted({(r.encoder, r.arm) for r in lines.itertuples()})
    colours = {key: LINE_COLOURS[i % len(LINE_COLOURS)] for i, key in enumerate(keys)}
    sizes = encoder_params or {}
    for ax, fraction in zip(axes[0], fractions):
        here = points[points.label_fraction == fraction]
        largest = float(lines.pretrain_jets.max()) if not lines.empty else 1.0
        right = largest
        for key in keys:
            encoder, arm = key
            group = here[(here.encoder == encoder) & (here.arm == arm)].sort_values("pretrain_jets")
            if group.empty:
                continue
            params = f", {sizes[encoder] / 1e6:.2f} M params" if sizes.get(encoder) else ""
            ax.errorbar(group.pretrain_jets, group.test_auc_mean, yerr=group.test_auc_std, color=colours[key],
                        marker="o", capsize=3, label=f"{encoder}{params}: {arm}")
            seeds = rows[(rows.encoder == encoder) & (rows.arm == arm) & (rows.label_fraction == fraction)]
            ax.scatter(seeds.pretrain_jets, seeds.test_auc, s=8, color=colours[key], alpha=0.5)
            right = max(right, _draw_fit(ax, fits, encoder, arm, fraction, float(group.pretrain_jets.min()), largest,
                                         colours[key]))
        for baseline in here[here.encoder == "-"].itertuples():
            colour = figures.ARM_COLOURS.get(baseline.arm, "tab:brown")
            ax.axhspan(baseline.test_auc_mean - baseline.test_auc_std, baseline.test_auc_mean + baseline.test_auc_std,
                       color=colour, alpha=0.18, linewidth=0)
            ax.axhline(baseline.test_auc_mean, color=colour, linewidth=1,
                       label=f"{baseline.arm} baseline (mean ± std)")
        ax.plot([], [], color="black", linestyle="--", label="fit a - b N^-c (extrapolation beyond the data)")
        ax.axvspan(largest, right * 1.3, color="grey", alpha=0.07, linewidth=0)
        ax.set_xscale("log")
        ax.set_xlim(left=float(lines.pretrain_jets.min()) / 1.5 if not lines.empty else None, right=right * 1.3)
        labelled = int(here.labelled_jets.median()) if not here.empty else 0
        ax.set_title(f"{labelled} labelled jets (fraction {fraction:g})", fontsize=10)
        ax.set_xlabel("pretraining jets (grey: extrapolation)")
        ax.set_ylabel("test ROC AUC")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(f"Scaling study {title}: test AUC against pretraining jets", fontsize=11)
    fig.tight_layout()
    figures.save(fig, str(path))


def _draw_fit(ax: object, fits: pd.DataFrame, encoder: str, arm: str, fraction: float, smallest: float,
              largest: float, colour: str) -> float:
    """The fitted curve (dashed) from the smallest size to the crossing point or EXTEND x the largest;
    returns the rightmost size drawn."""
    found = fits[(fits.encoder == encoder) & (fits.arm == arm) & (fits.label_fraction == fraction)]
    if found.empty:
        return largest
    fit = found.iloc[0]
    crossing = float(fit.crossing_jets)
    end = largest * EXTEND if not math.isfinite(crossing) else min(max(crossing, largest) * 1.5, largest * EXTEND)
    jets = np.geomspace(smallest, end, 200)
    ax.plot(jets, fit.a - fit.b * np.power(jets, -fit.c), color=colour, linestyle="--", linewidth=1.2)
    if math.isfinite(crossing) and largest < crossing <= largest * EXTEND:
        ax.plot([crossing], [fit.baseline_auc], marker="*", markersize=11, color=colour, linestyle="none")
        ax.annotate(f"{crossing:,.0f}\n(extrapolation)", (crossing, fit.baseline_auc), fontsize=7, color=colour,
                    textcoords="offset points", xytext=(-70, -24))
    return end
