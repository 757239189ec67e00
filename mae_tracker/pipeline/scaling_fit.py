"""The scaling study's numbers: AUC per (encoder, pretraining size, arm, fraction) and a fitted trend.

The trend is a saturating power law, AUC(N) = a - b * N^(-c), in the number N of pretraining jets,
fitted per (encoder, arm, labelled fraction) to every seed's test AUC (least squares, scipy's
curve_fit). Three or fewer distinct sizes cannot determine three parameters (with three, the curve
would pass exactly through the means and its errors would mean nothing), so there the exponent c is
held fixed (the spec's ``fit.c``) and only a and b are fitted; the table says which. Uncertainties:
curve_fit's covariance (seed scatter around the fit) and a bootstrap that resamples the seeds at each
size and of the baseline, refits and re-solves. Where the finetune (or probe) line would cross the best
baseline at that fraction is a solve of the fit: an EXTRAPOLATION beyond the largest measured size.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

POINT_COLUMNS = ["encoder", "pretrain_jets", "arm", "label_fraction", "labelled_jets", "seeds", "test_auc_mean",
                 "test_auc_std", "run_ids"]
C_BOUNDS = (0.01, 3.0)  # for a free exponent (4 or more sizes)


@dataclass(frozen=True)
class PowerLawFit:
    """AUC(N) = a - b * N^(-c); *_err are one standard deviation (nan where not determined)."""

    a: float
    b: float
    c: float
    a_err: float
    b_err: float
    c_err: float
    c_fixed: bool
    sizes: int  # distinct pretraining sizes
    dof: int  # sizes minus fitted parameters: 0 means the curve goes through the means exactly

    def predict(self, jets: np.ndarray | float) -> np.ndarray:
        return self.a - self.b * np.power(np.asarray(jets, dtype=float), -self.c)


def fit_power_law(jets: np.ndarray, auc: np.ndarray, c: float | None = None) -> PowerLawFit:
    """Fit every (N, AUC) point (one per seed and size). ``c``: hold the exponent fixed at this
    value (the default whenever there are fewer than 4 distinct sizes, then 0.5); None and >= 4
    sizes: fit it too, within C_BOUNDS."""
    from scipy.optimize import curve_fit

    jets, auc = np.asarray(jets, dtype=float), np.asarray(auc, dtype=float)
    sizes = len(np.unique(jets))
    if sizes < 2:
        raise ValueError("a power-law fit needs at least two pretraining sizes")
    free = c is None and sizes >= 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "covariance could not be estimated": reported as nan
        if free:
            params, cov = curve_fit(lambda n, a, b, k: a - b * np.power(n, -k), jets, auc,
                                    p0=(auc.max() + 0.01, 1.0, 0.5), bounds=([-np.inf, -np.inf, C_BOUNDS[0]],
                                                                             [np.inf, np.inf, C_BOUNDS[1]]),
                                    maxfev=20000)
            a, b, k = params
        else:
            k = 0.5 if c is None else float(c)
            x = np.power(jets, -k)  # linear in (a, b) at a fixed exponent
            params, cov = curve_fit(lambda x_, a, b: a - b * x_, x, auc, p0=(auc.max(), 0.0))
            a, b = params
    errors = np.sqrt(np.clip(np.diag(cov), 0, None)) if np.all(np.isfinite(cov)) else np.full(len(params), np.nan)
    n_params = 3 if free else 2
    return PowerLawFit(a=float(a), b=float(b), c=float(k), a_err=float(errors[0]), b_err=float(errors[1]),
                       c_err=float(errors[2]) if free else math.nan, c_fixed=not free, sizes=sizes,
                       dof=sizes - n_params)


def crossing_jets(a: float, b: float, c: float, level: float) -> float:
    """The N at which a - b * N^(-c) reaches ``level``: inf if it never does (asymptote a at or below
    it), 0 if it is above at every N (b <= 0 with a above the level)."""
    if a <= level:
        return math.inf
    if b <= 0:
        return 0.0
    return float((b / (a - level)) ** (1.0 / c))


def summarize_points(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-seed rows (encoder, pretrain_jets, arm, label_fraction, labelled_jets, seed, test_auc,
    run_id) -> mean and sample std over seeds per (encoder, pretrain_jets, arm, label_fraction).
    Baselines have encoder '-' and pretrain_jets 0."""
    if rows.empty:
        return pd.DataFrame(columns=POINT_COLUMNS)
    out = []
    for (encoder, jets, arm, fraction), group in rows.groupby(["encoder", "pretrain_jets", "arm", "label_fraction"]):
        out.append({"encoder": encoder, "pretrain_jets": int(jets), "arm": arm, "label_fraction": float(fraction),
                    "labelled_jets": int(group.labelled_jets.median()), "seeds": len(group),
                    "test_auc_mean": group.test_auc.mean(),
                    "test_auc_std": group.test_auc.std(ddof=1) if len(group) > 1 else 0.0,
                    "run_ids": " ".join(r[:8] for r in group.sort_values("seed").run_id)})
    frame = pd.DataFrame(out, columns=POINT_COLUMNS)
    frame["_baseline"] = frame.encoder == "-"
    return (frame.sort_values(["label_fraction", "_baseline", "encoder", "arm", "pretrain_jets"])
            .drop(columns="_baseline").reset_index(drop=True))


def fit_lines(rows: pd.DataFrame, *, c: float = 0.5, bootstrap: int = 300, seed: int = 0) -> pd.DataFrame:
    """One row per (encoder, arm, label_fraction) of the MAE arms: the fit, its errors, the best
    baseline at that fraction and where the line would cross it (an extrapolation)."""
    rng = np.random.default_rng(seed)
    lines, base = rows[rows.encoder != "-"], rows[rows.encoder == "-"]
    out = []
    for (encoder, arm, fraction), group in lines.groupby(["encoder", "arm", "label_fraction"]):
        fixed_c = c if group.pretrain_jets.nunique() < 4 else None
        try:
            fit = fit_power_law(group.pretrain_jets.to_numpy(), group.test_auc.to_numpy(), fixed_c)
        except RuntimeError:  # a free exponent that does not converge: held fixed instead (the table says so)
            fixed_c = c
            fit = fit_power_law(group.pretrain_jets.to_numpy(), group.test_auc.to_numpy(), fixed_c)
        best = _best_baseline(base[base.label_fraction == fraction])
        row = {"encoder": encoder, "arm": arm, "label_fraction": float(fraction), "sizes": fit.sizes,
               "points": len(group), "a": fit.a, "a_err": fit.a_err, "b": fit.b, "b_err": fit.b_err, "c": fit.c,
               "c_err": fit.c_err, "c_fit": "fixed" if fit.c_fixed else "fitted", "dof": fit.dof,
               "baseline": "", "baseline_auc": math.nan, "baseline_std": math.nan, "crossing_jets": math.nan,
               "crossing_lo": math.nan, "crossing_hi": math.nan, "never_share": math.nan, "verdict": "no baseline"}
        if best is not None:
            name, values = best
            boots = _bootstrap(group, values, fixed_c, bootstrap, rng)
            row.update(_verdict(fit, group.pretrain_jets.max(), name, values, boots))
        out.append(row)
    return pd.DataFrame(out)


def _best_baseline(base: pd.DataFrame) -> tuple[str, np.ndarray] | None:
    if base.empty:
        return None
    means = base.groupby("arm").test_auc.mean()
    name = str(means.idxmax())
    return name, base[base.arm == name].test_auc.to_numpy()


def _bootstrap(group: pd.DataFrame, baseline: np.ndarray, c: float | None, n: int, rng: np.random.Generator
               ) -> dict[str, np.ndarray]:
    """Resample the seeds at each size and the baseline's seeds; refit and re-solve each time."""
    by_size = [(jets, g.test_auc.to_numpy()) for jets, g in group.groupby("pretrain_jets")]
    a_values, crossings = [], []
    for _ in range(n):
        jets = np.concatenate([np.full(len(v), j, dtype=float) for j, v in by_size])
        auc = np.concatenate([rng.choice(v, size=len(v), replace=True) for _, v in by_size])
        level = rng.choice(baseline, size=len(baseline), replace=True).mean()
        try:
            fit = fit_power_law(jets, auc, c)
        except (RuntimeError, ValueError):  # no convergence on a degenerate resample
            continue
        a_values.append(fit.a)
        crossings.append(crossing_jets(fit.a, fit.b, fit.c, level))
    return {"a": np.array(a_values), "crossing": np.array(crossings)}


def _verdict(fit: PowerLawFit, largest: float, name: str, baseline: np.ndarray, boots: dict[str, np.ndarray]
             ) -> dict[str, object]:
    level = float(baseline.mean())
    spread = float(baseline.std(ddof=1)) if len(baseline) > 1 else 0.0
    a_err = fit.a_err if math.isfinite(fit.a_err) else (float(boots["a"].std()) if len(boots["a"]) else math.nan)
    error = math.sqrt(a_err ** 2 + (spread ** 2 / len(baseline))) if math.isfinite(a_err) else math.nan
    crossing = crossing_jets(fit.a, fit.b, fit.c, level)
    found = boots["crossing"]
    lo, hi = (np.quantile(found, [0.16, 0.84], method="nearest") if len(found) else (math.nan, math.nan))
    never = float(np.mean(~np.isfinite(found))) if len(found) else math.nan
    if crossing == 0.0 or (math.isfinite(crossing) and crossing <= largest):
        verdict = "at or above the baseline within the measured sizes"
    elif math.isfinite(crossing):
        verdict = f"extrapolation: crosses at ~{crossing:,.0f} pretraining jets"
        if math.isfinite(error) and fit.a - error <= level:
            verdict += " (asymptote within errors of the baseline: may never cross)"
    elif math.isfinite(error) and fit.a + error < level:
        verdict = "never: the asymptote a is below the baseline beyond its errors"
    else:
        verdict = "never at the best fit (asymptote below the baseline, but within errors)"
    return {"baseline": name, "baseline_auc": level, "baseline_std": spread, "crossing_jets": crossing,
            "crossing_lo": float(lo), "crossing_hi": float(hi), "never_share": never, "verdict": verdict}


def points_markdown(points: pd.DataFrame) -> str:
    lines = ["| labelled jets (fraction) | encoder | pretraining jets | arm | test AUC | seeds | runs |",
             "|---|---|---|---|---|---|---|"]
    for r in points.itertuples():
        jets = "-" if r.encoder == "-" else f"{r.pretrain_jets:,}"
        lines.append(f"| {r.labelled_jets} ({r.label_fraction:g}) | {r.encoder} | {jets} | {r.arm} | "
                     f"{r.test_auc_mean:.4f} ± {r.test_auc_std:.4f} | {r.seeds} | {r.run_ids} |")
    return "\n".join(lines)


def fits_markdown(fits: pd.DataFrame) -> str:
    lines = ["Fit: AUC(N) = a - b N^(-c) over N pretraining jets, to every seed's test AUC. `dof` = distinct sizes "
             "minus fitted parameters; with c `fixed` (3 or fewer sizes cannot determine it) the value of c is an "
             "assumption, not a measurement. Crossing = where the fitted line reaches the best baseline's mean: "
             "beyond the largest measured size it is an **extrapolation**, with a 68 % bootstrap interval over "
             "seeds (`never` share: resamples whose asymptote stays below the baseline).", "",
             "| fraction | encoder | arm | a (asymptote) | b | c | dof | best baseline | crossing (pretraining jets) "
             "| 68 % interval | never share | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in fits.itertuples():
        c = f"{r.c:.2f} (fixed)" if r.c_fit == "fixed" else f"{r.c:.2f} ± {r.c_err:.2f}"
        lines.append(f"| {r.label_fraction:g} | {r.encoder} | {r.arm} | {r.a:.4f} ± {r.a_err:.4f} | "
                     f"{r.b:.3g} ± {r.b_err:.2g} | {c} | {r.dof} | {r.baseline} {r.baseline_auc:.4f} ± "
                     f"{r.baseline_std:.4f} | {_jets(r.crossing_jets)} | {_jets(r.crossing_lo)} - "
                     f"{_jets(r.crossing_hi)} | {r.never_share:.2f} | {r.verdict} |")
    return "\n".join(lines)


def _jets(value: float) -> str:
    if not isinstance(value, float) or math.isnan(value):
        return "-"
    return "never" if math.isinf(value) else f"{value:,.0f}"
