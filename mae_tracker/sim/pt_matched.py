"""pT-matched quark/gluon files (``mae-tracker generate --pt-matched``): equal quark and gluon
counts in every pT bin, so a classifier cannot learn the jet pT spectrum instead of the flavour.

Candidates are generated shard by shard (:mod:`mae_tracker.sim.shards`, same seeds and
atomicity) into a scratch file beside the output until the overlap of the two spectra holds
enough jets, then thinned to the overlap and shuffled into the output.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from mae_tracker.atomic import atomic_path, scratch_path
from mae_tracker.progress import progress_bar
from mae_tracker.signals import sigterm_as_exit
from mae_tracker.sim.shards import ShardJob, ShardRunner, image_dataset, plan_shards, shuffle

PT_BIN_WIDTH = 5.0  # GeV, pT-matched resampling granularity
OVERSAMPLE = 1.3  # candidates generated per kept jet in the first round
LABELS = (1, 0)  # quark, gluon


def _balanced_quota(common: np.ndarray, total: int) -> np.ndarray:
    """Per-bin counts summing to ``total``, proportional to ``common`` and never above it."""
    share = common * (total / common.sum())
    quota = np.floor(share).astype(np.int64)
    largest_remainders = np.argsort(-(share - quota), kind="stable")
    quota[largest_remainders[: total - quota.sum()]] += 1
    return np.minimum(quota, common)


def _pt_bins(pt: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.digitize(pt, edges) - 1, 0, len(edges) - 2)  # jets are inside the window


def pt_matched_selection(pt_quark: np.ndarray, pt_gluon: np.ndarray, n_per_class: int,
                         edges: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Indices keeping equal quark and gluon counts in every pT bin, ``n_per_class`` each.

    The overlap of the two spectra (per bin, the smaller count) is scaled down to exactly
    ``n_per_class`` jets; each bin keeps its first jets in the given order. ``None`` when
    the overlap holds fewer than ``n_per_class`` jets (generate more and retry).
    """
    n_bins = len(edges) - 1
    bins = [_pt_bins(pt_quark, edges), _pt_bins(pt_gluon, edges)]
    common = np.minimum(*(np.bincount(b, minlength=n_bins) for b in bins))
    if common.sum() < n_per_class:
        return None
    quota = _balanced_quota(common, n_per_class)

    def first_per_bin(b: np.ndarray) -> np.ndarray:
        rank = np.empty(len(b), dtype=np.int64)  # position of each jet within its bin
        for k in range(n_bins):
            members = np.flatnonzero(b == k)
            rank[members] = np.arange(members.size)
        return np.flatnonzero(rank < quota[b])

    return first_per_bin(bins[0]), first_per_bin(bins[1])


def _candidates(config: Any, runner: ShardRunner, bar: Any, scratch: h5py.File, shape: tuple[int, ...],
                shard_size: int, edges: np.ndarray) -> tuple[h5py.Dataset, dict[int, dict[int, Any]], dict[int, int],
                                                            tuple[np.ndarray, np.ndarray]]:
    """Generate candidates into ``scratch`` until the pT overlap suffices."""
    half = config.n_jets // 2
    # Per class, in canonical (shard index) order, so the choice does not depend on workers.
    found: dict[int, dict[int, tuple[np.ndarray, Any]]] = {1: {}, 0: {}}
    n_events = {1: 0, 0: 0}
    candidates = image_dataset(scratch, "X", 0, shape, resizable=True)
    jobs = plan_shards(config, math.ceil(OVERSAMPLE * half), shard_size)
    bar.total = 0
    while True:
        bar.total += sum(job.n_images for job in jobs)
        bar.refresh()
        for res in runner.run(jobs):
            start = candidates.shape[0]
            candidates.resize(start + len(res.pt), axis=0)
            candidates[start:] = res.images
            found[res.label][res.shard] = (start + np.arange(len(res.pt)), dataclasses.replace(res, images=np.empty(0)))
            n_events[res.label] += res.n_events
            bar.update(len(res.pt))
        pts = {label: collected(found, label, "pt") for label in LABELS}
        chosen = pt_matched_selection(pts[1], pts[0], half, edges)
        if chosen is not None:
            return candidates, found, n_events, chosen
        # Too little overlap: ask for more, scaled by the overlap fraction seen so far.
        n_bins = len(edges) - 1
        overlap = int(np.minimum(*(np.bincount(_pt_bins(pts[lab], edges), minlength=n_bins)
                                   for lab in LABELS)).sum())
        per_class = min(len(pts[1]), len(pts[0]))
        more = math.ceil(1.2 * (half - overlap) * per_class / max(overlap, 1))
        jobs = plan_shards(config, more, shard_size, first_shard=max(found[1]) + 1)


def collected(found: dict[int, dict[int, Any]], label: int, what: str) -> np.ndarray:
    """One class's candidate rows (``what`` "row") or a per-jet column, in shard order."""
    parts = [found[label][s][0] if what == "row" else getattr(found[label][s][1], what) for s in sorted(found[label])]
    return np.concatenate(parts)


def write_pt_matched(out: Path | str, config: Any, *, run: Callable[[ShardJob], Any], shard_size: int,
                     shape: tuple[int, ...], attrs: Callable[[dict[str, Any]], dict[str, Any]], workers: int = 1,
                     progress: bool = True) -> Path:
    """``config.n_jets`` jets, half of each class with equal pT spectra, shuffled, into ``out``
    atomically; ``run(job)`` gives a shard's ``images``, ``pt``, ``m0`` and ``n_events``."""
    out = Path(out)
    n, half = config.n_jets, config.n_jets // 2
    edges = np.append(np.arange(config.pt_min, config.pt_max, PT_BIN_WIDTH), config.pt_max)
    with sigterm_as_exit(), atomic_path(out) as tmp, scratch_path(out) as scratch_file, \
            progress_bar(total=n, unit="jet", desc=f"generate {out.name}", enabled=progress) as bar, \
            ShardRunner(workers, run) as runner, h5py.File(tmp, "w-") as f:
        with h5py.File(scratch_file, "w-") as scratch:
            candidates, found, n_events, chosen = _candidates(config, runner, bar, scratch, shape, shard_size, edges)
            keep = dict(zip(LABELS, chosen))
            source_rows = np.concatenate([collected(found, lab, "row")[keep[lab]] for lab in LABELS])
            pt = np.concatenate([collected(found, lab, "pt")[keep[lab]] for lab in LABELS])
            m0 = np.concatenate([collected(found, lab, "m0")[keep[lab]] for lab in LABELS])
            n_candidates = {str(lab): len(collected(found, lab, "pt")) for lab in LABELS}
            y = np.repeat(np.array(LABELS, np.float32), half)
            perm = shuffle(config.seed, n)
            images = image_dataset(f, "X_jets", n, shape)
            for i0 in range(0, n, 256):
                wanted = source_rows[perm[i0:i0 + 256]]
                order = np.argsort(wanted)
                block = np.empty((len(wanted), *shape), np.float32)
                block[order] = candidates[wanted[order]]  # h5py wants increasing indices
                images[i0:i0 + len(wanted)] = block
        f.create_dataset("y", data=y[perm])
        f.create_dataset("pt", data=pt[perm])
        f.create_dataset("m0", data=m0[perm])
        f.attrs.update(attrs({"n_events": {"1": n_events[1], "0": n_events[0]}, "n_candidates": n_candidates,
                              "pt_bin_edges": edges.tolist()}))
    return out
