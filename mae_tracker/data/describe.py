"""`mae-tracker inspect`: what is in a jet-image file or dataset (folder, glob, list), in one streamed pass
(the module is ``describe`` so as not to shadow the standard library's ``inspect``).

Per channel: occupancy (fraction of non-zero pixels) and the per-image channel sum ("energy":
pT for tracks, energy for calorimeters), overall and per class, plus the largest pixel. Quark jets
are narrower with fewer particles than gluon jets, so class differences in these numbers are a
quick sanity check of a generated or downloaded file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mae_tracker.data.dataset import open_dataset
from mae_tracker.data.files import DataSpec
from mae_tracker.data.tasks import TASK_OF_IMAGES_KEY, TASKS
from mae_tracker.data.validate import SCAN_BLOCK_BYTES

# files without a schema attribute: named by the task their image key implies
SCHEMA_NAMES = {key: TASKS[task].schema for key, task in TASK_OF_IMAGES_KEY.items()}


def _moments(values: np.ndarray) -> dict[str, float]:
    values = values.astype(np.float64)
    return {"min": float(values.min()), "mean": float(values.mean()),
            "std": float(values.std()), "max": float(values.max())}


def summarize(path: DataSpec, *, with_mean_images: bool = False,
              progress: bool | None = None) -> dict[str, Any]:
    """Validate ``path`` and summarise it; JSON-able unless ``with_mean_images``.

    ``with_mean_images`` adds ``mean_images`` {class name: float32 (C, H, W)} for
    :func:`plot_mean_images`, from the same pass. ``progress`` None shows a bar only on a terminal.
    """
    reader = open_dataset(path)  # pixel values are checked in the pass below
    info = reader.info
    first = reader.file_infos[0]
    names = dict(zip((1, 0), info.class_names))  # label -> name
    labels = reader.labels()
    c, h, w = info.image_shape
    nonzero = np.zeros((2, c))  # [label, channel]
    sums = np.zeros((2, c))
    sums_sq = np.zeros(c)
    max_pixel = np.full(c, -np.inf)
    image_sums = np.zeros((2, c, h, w)) if with_mean_images else None
    rows = max(1, SCAN_BLOCK_BYTES // (4 * c * h * w))
    starts = range(0, info.n_jets, rows)
    from mae_tracker.progress import progress_bar

    for start in progress_bar(starts, desc=f"inspecting {info.path.name}", unit="block",
                      disable=None if progress is None else not progress):
        x, y = reader.read(np.arange(start, min(start + rows, info.n_jets)))  # checks NaN/inf
        channel_sums = x.sum(axis=(2, 3), dtype=np.float64)  # (b, C)
        channel_nonzero = np.count_nonzero(x, axis=(2, 3))
        sums_sq += np.square(channel_sums).sum(axis=0)
        np.maximum(max_pixel, x.max(axis=(0, 2, 3)), out=max_pixel)
        for label in (0, 1):
            mask = y == label
            nonzero[label] += channel_nonzero[mask].sum(axis=0)
            sums[label] += channel_sums[mask].sum(axis=0)
            if image_sums is not None:
                image_sums[label] += x[mask].sum(axis=0, dtype=np.float64)
    reader.close()

    counts = np.bincount(labels, minlength=2)[:2]
    n = info.n_jets
    sum_mean = sums.sum(axis=0) / n
    per_class = {lab: max(int(counts[lab]), 1) for lab in (0, 1)}  # guard empty classes
    channels = []
    for ch, name in enumerate(info.channel_names):
        channels.append({
            "name": name,
            "occupancy": float(nonzero[:, ch].sum() / (n * h * w)),
            "occupancy_by_class": {names[lab]: float(nonzero[lab, ch] / (per_class[lab] * h * w)) for lab in (1, 0)},
            "sum_mean": float(sum_mean[ch]),
            "sum_std": float(np.sqrt(max(sums_sq[ch] / n - sum_mean[ch] ** 2, 0.0))),
            "sum_mean_by_class": {names[lab]: float(sums[lab, ch] / per_class[lab]) for lab in (1, 0)},
            "max_pixel": float(max_pixel[ch]),
        })
    extras = {}
    for key in info.extra_keys:
        values = reader.read_extra(key, np.arange(n)).astype(np.float64)
        stats = _moments(values) if np.all(np.isfinite(values)) else {"non_finite": int((~np.isfinite(values)).sum())}
        stats["mean_by_class"] = {names[lab]: float(values[labels == lab].mean()) if counts[lab] else float("nan")
                                  for lab in (1, 0)}
        extras[key] = stats
    summary: dict[str, Any] = {
        "path": str(info.path),
        "schema": SCHEMA_NAMES.get(info.images_key, info.images_key),
        "images_key": info.images_key,
        "n_jets": n,
        "image_shape": list(info.image_shape),
        "layout": "channels-last (N, H, W, C)" if first.channels_last else "channels-first (N, C, H, W)",
        "format": info.format, "digest": reader.digest, "files": reader.file_records(),
        "channel_names": list(info.channel_names),
        "classes": {names[lab]: {"label": lab, "count": int(counts[lab]), "fraction": float(counts[lab] / n)}
                    for lab in (1, 0)},
        "channels": channels,
        "extras": extras,
        "attrs": info.attrs,
    }
    if image_sums is not None:
        summary["mean_images"] = {names[lab]: (image_sums[lab] / per_class[lab]).astype(np.float32) for lab in (1, 0)}
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable text of :func:`summarize`'s result."""
    c, h, w = summary["image_shape"]
    classes = summary["classes"]
    class_names = list(classes)
    files = summary.get("files", [])
    lines = [
        f"file      {summary['path']}" if len(files) <= 1 else
        f"dataset   {summary['path']}: {len(files)} {summary['format']} files, digest {summary['digest'][:12]}",
        f"schema    {summary['schema']} (images '{summary['images_key']}', labels 'y')",
        f"jets      {summary['n_jets']:,}",
        f"image     {c} x {h} x {w} (C x H x W), stored {summary['layout']}",
        "classes   " + "   ".join(f"{name} (y={v['label']}): {v['count']:,} ({100 * v['fraction']:.1f}%)"
                                  for name, v in classes.items()),
        "",
        "per channel: occupancy = fraction of non-zero pixels; sum = per-image channel sum",
        f"  {'channel':<10}{'occupancy':>10}" + "".join(f"{'occ ' + n:>12}" for n in class_names)
        + f"{'sum mean':>11}{'sum std':>11}" + "".join(f"{'sum ' + n:>12}" for n in class_names) + f"{'max pixel':>11}",
    ]
    for ch in summary["channels"]:
        lines.append(
            f"  {ch['name']:<10}{100 * ch['occupancy']:>9.2f}%"
            + "".join(f"{100 * ch['occupancy_by_class'][n]:>11.2f}%" for n in class_names)
            + f"{ch['sum_mean']:>11.4g}{ch['sum_std']:>11.4g}"
            + "".join(f"{ch['sum_mean_by_class'][n]:>12.4g}" for n in class_names)
            + f"{ch['max_pixel']:>11.4g}")
    if summary["extras"]:
        lines += ["", "per jet:"]
        for key, s in summary["extras"].items():
            if "non_finite" in s:
                lines.append(f"  {key:<6} {s['non_finite']} non-finite values")
                continue
            by_class = "  ".join(f"mean {n} {v:.4g}" for n, v in s["mean_by_class"].items())
            lines.append(f"  {key:<6} min {s['min']:.4g}  mean {s['mean']:.4g}  std {s['std']:.4g}  "
                         f"max {s['max']:.4g}  |  {by_class}")
    return "\n".join(lines)


def plot_mean_images(path: DataSpec, out_png: str | os.PathLike[str], *,
                     summary: dict[str, Any] | None = None) -> Path:
    """Save mean images per class side by side, one row per channel, log colour scale.

    Pass a ``summarize(..., with_mean_images=True)`` result as ``summary`` to skip a second pass.
    """
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg by default

    if summary is None or "mean_images" not in summary:
        summary = summarize(path, with_mean_images=True)
    means = summary["mean_images"]
    names = list(means)
    channel_names = summary["channel_names"]
    fig = Figure(figsize=(4.2 * len(names) + 1, 3.6 * len(channel_names)), layout="constrained")
    axes = fig.subplots(len(channel_names), len(names), squeeze=False)
    for ch, channel in enumerate(channel_names):
        vmax = max(float(means[n][ch].max()) for n in names)
        positive = [means[n][ch][means[n][ch] > 0] for n in names]
        positive = np.concatenate(positive) if positive else np.empty(0)
        # Jet images are sparse and peaked: a log scale shows the core and the halo together.
        norm = (LogNorm(vmin=max(float(positive.min()), vmax * 1e-6), vmax=vmax)
                if positive.size and vmax > 0 else Normalize(vmin=0.0, vmax=1.0))
        for col, name in enumerate(names):
            ax = axes[ch, col]
            image = np.ma.masked_less_equal(means[name][ch], 0) if isinstance(norm, LogNorm) else means[name][ch]
            shown = ax.imshow(image, norm=norm, cmap="viridis", origin="lower", interpolation="nearest")
            count = summary["classes"][name]["count"]
            ax.set_title(f"{channel}: mean {name} (n={count:,})")
            ax.set_xlabel("pixel column")
            ax.set_ylabel("pixel row")
        fig.colorbar(shown, ax=list(axes[ch]), shrink=0.9, label="mean pixel value")
    fig.suptitle(Path(summary["path"]).name)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    return out
