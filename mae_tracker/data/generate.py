"""`mae-tracker generate`: Pythia 8 quark/gluon jet images in the CMS E2E HDF5 schema.

Reproducibility: the job is cut into fixed shards of at most ``SHARD_JETS`` jets of one
class. Shard (label, index) gets its Pythia seed and its detector-noise stream from
``SeedSequence(seed, spawn_key=(label, index, ...))``, so the arrays depend on the seed and
the settings only, never on how many worker processes ran the shards or in which order
they finished. The final shuffle is seeded too.

Atomicity: everything is written to a temporary file beside the output and renamed onto it
at the very end; any exception or Ctrl-C deletes the temporary file (and terminates the
workers), so a file at ``out`` is always complete.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import secrets
import signal
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
from tqdm import tqdm

from mae_tracker.data.detector import CHANNEL_UNITS, CHANNELS, PRESETS, get_detector
from mae_tracker.data.pythia_jets import (COLLISION_ENERGY, GLUON, GLUON_ID, JET_R, LIGHT_QUARKS, MATCH_DR, PROCESSES,
                                          PYTHIA_SEED_MAX, QUARK, JetCuts, ShardJets, generate_jets,
                                          pythia_settings)
from mae_tracker.progress import progress_bar
from mae_tracker.signals import sigterm_as_exit

SHARD_JETS = 250  # jets of one class per shard; part of the output's identity (stored in attrs)
PT_BIN_WIDTH = 5.0  # GeV, pT-matched resampling granularity
OVERSAMPLE = 1.3  # pT-matched: candidates generated per kept jet in the first round
PTHAT_FRACTION = 0.7  # default pthat_min = 0.7 * pt_min (see GeneratorConfig)
BEAM_ENERGY = COLLISION_ENERGY / 2
SCHEMA = "e2e-quark-gluon"
LABEL_CONVENTION = "1=quark,0=gluon"


def jet_sample_problems(config: Any, presets: dict[str, Any]) -> list[str]:
    """What is wrong with a jet generator config's common settings (n_jets, seed, preset, the pT
    and eta window, pTHatMin); shared by every Pythia jet task."""
    problems = []
    if config.n_jets < 2 or config.n_jets % 2:
        problems.append(f"n_jets must be even and >= 2 (balanced classes), got {config.n_jets}")
    if config.seed < 0:
        problems.append(f"seed must be >= 0, got {config.seed}")
    if config.preset not in presets:
        problems.append(f"unknown preset {config.preset!r}; choose from {sorted(presets)}")
    if not 0 < config.pt_min < config.pt_max:
        problems.append(f"need 0 < pt_min < pt_max, got {config.pt_min}, {config.pt_max}")
    if config.pt_min >= BEAM_ENERGY:
        problems.append(f"pt_min must be below the {BEAM_ENERGY:g} GeV beam energy, got {config.pt_min}")
    if config.eta_max <= 0:
        problems.append(f"eta_max must be > 0, got {config.eta_max}")
    if not 0 < config.pthat_min < config.pt_max:
        problems.append(f"need 0 < pthat_min < pt_max, got {config.pthat_min}")
    return problems


def raise_problems(problems: list[str]) -> None:
    if problems:
        raise ValueError("; ".join(problems))


@dataclass
class GeneratorConfig:
    """Everything that determines the generated arrays (stored as JSON in the file).

    ``pthat_min`` defaults to 0.7 * ``pt_min`` (49 GeV for the default 70 GeV): measured
    here without MPI, a cut at 60 GeV loses ~10 % of the jets in the 70-200 GeV window
    (~20 % of those at 70-80 GeV: jets that gained pT from radiation/underlying event),
    a cut at 50 GeV loses ~1-5 % and costs ~1.8x the CPU time of 60.
    """

    n_jets: int = 10_000
    seed: int = 1
    preset: str = "cpu"
    pt_min: float = 70.0
    pt_max: float = 200.0
    eta_max: float = 1.5
    mpi: bool = True
    hadronisation: bool = True
    pt_matched: bool = False
    pthat_min: float | None = None

    def __post_init__(self) -> None:
        if self.pthat_min is None:
            self.pthat_min = round(PTHAT_FRACTION * self.pt_min, 1)
        raise_problems(jet_sample_problems(self, PRESETS))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GeneratorConfig":
        return cls(**data)

    @property
    def cuts(self) -> JetCuts:
        return JetCuts(self.pt_min, self.pt_max, self.eta_max)

    def pythia_settings(self, label: int) -> list[str]:
        assert self.pthat_min is not None
        return pythia_settings(label, pthat_min=self.pthat_min, mpi=self.mpi, hadronisation=self.hadronisation)


@dataclass(frozen=True)
class ShardTask:
    config: GeneratorConfig
    label: int
    shard: int
    n_jets: int


def shard_seeds(seed: int, label: int, shard: int) -> tuple[int, np.random.Generator]:
    """Pythia seed in [1, 900_000_000] and detector rng of one shard, from the run seed alone."""
    pythia_word = np.random.SeedSequence(seed, spawn_key=(label, shard, 0)).generate_state(1, np.uint64)[0]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(label, shard, 1)))
    return int(pythia_word % PYTHIA_SEED_MAX) + 1, rng


def run_shard(task: ShardTask) -> ShardJets:
    """Generate one shard (runs in a worker process or in-process for workers=1)."""
    pythia_seed, rng = shard_seeds(task.config.seed, task.label, task.shard)
    return generate_jets(task.label, task.n_jets, settings=task.config.pythia_settings(task.label),
                         pythia_seed=pythia_seed, cuts=task.config.cuts,
                         detector=get_detector(task.config.preset), rng=rng, shard=task.shard)


def _plan(n_per_class: int, first_shard: int, config: GeneratorConfig) -> list[ShardTask]:
    """Shards for ``n_per_class`` jets of each class, quark and gluon interleaved."""
    tasks = []
    for i in range(math.ceil(n_per_class / SHARD_JETS)):
        size = min(SHARD_JETS, n_per_class - i * SHARD_JETS)
        tasks += [ShardTask(config, label, first_shard + i, size) for label in (QUARK, GLUON)]
    return tasks


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and terminates workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _ShardRunner:
    """Runs shards in-process (workers=1) or in a pool of spawned worker processes."""

    def __init__(self, workers: int, fn: Any = None) -> None:
        self.workers = max(1, int(workers))
        self.fn = fn  # a picklable module-level function of one task; None: run_shard (looked up per call)
        self._pool: Any = None

    def run(self, tasks: list[Any]) -> Iterator[Any]:
        fn = run_shard if self.fn is None else self.fn
        if self.workers == 1 or len(tasks) == 1:
            yield from map(fn, tasks)
            return
        if self._pool is None:  # one pool for all rounds; each worker builds its own Pythia
            self._pool = multiprocessing.get_context("spawn").Pool(min(self.workers, len(tasks)),
                                                                 initializer=_ignore_sigint)
        yield from self._pool.imap_unordered(fn, tasks)

    def __enter__(self) -> "_ShardRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            if exc[0] is None:
                self._pool.close()
            else:
                self._pool.terminate()
            self._pool.join()


def package_versions() -> dict[str, str]:
    versions = {}
    for name in ("pythia8mc", "fastjet", "awkward", "numpy", "h5py", "mae-tracker"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def _temp_path(out: Path, suffix: str) -> Path:
    """A fresh name beside ``out`` (same file system, so os.replace is an atomic rename)."""
    return out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def _image_dataset(f: h5py.File, name: str, n: int, shape: tuple[int, ...], resizable: bool = False) -> h5py.Dataset:
    # One image per chunk + lzf: fast shuffled random access (see FIELD-NOTES).
    return f.create_dataset(name, shape=(n, *shape), maxshape=(None, *shape) if resizable else None,
                            dtype="float32", chunks=(1, *shape), compression="lzf")


def _write_rows(ds: h5py.Dataset, rows: np.ndarray, images: np.ndarray) -> None:
    for row, image in zip(rows.tolist(), images):
        ds[row] = image


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


def _generate_plain(config: GeneratorConfig, f: h5py.File, runner: _ShardRunner, bar: tqdm,
                    shape: tuple[int, ...]) -> dict[str, Any]:
    n, half = config.n_jets, config.n_jets // 2
    # Canonical order: quark jets by shard, then gluon jets; row = where the shuffle puts them.
    row_of = np.argsort(_shuffle(config))
    images = _image_dataset(f, "X_jets", n, shape)
    y, pt, m0 = np.zeros(n, np.float32), np.zeros(n, np.float32), np.zeros(n, np.float32)
    n_events = {QUARK: 0, GLUON: 0}
    for res in runner.run(_plan(half, 0, config)):
        assert len(res.pt) == min(SHARD_JETS, half - res.shard * SHARD_JETS)
        start = (0 if res.label == QUARK else half) + res.shard * SHARD_JETS
        rows = row_of[start:start + len(res.pt)]
        _write_rows(images, rows, res.images)
        y[rows], pt[rows], m0[rows] = res.label, res.pt, res.m0
        n_events[res.label] += res.n_events
        bar.update(len(res.pt))
    f.create_dataset("y", data=y)
    f.create_dataset("pt", data=pt)
    f.create_dataset("m0", data=m0)
    return {"n_events": {"quark": n_events[QUARK], "gluon": n_events[GLUON]}, "n_candidates": n}


def _generate_pt_matched(config: GeneratorConfig, f: h5py.File, runner: _ShardRunner, bar: tqdm,
                         shape: tuple[int, ...], scratch_path: Path) -> dict[str, Any]:
    """Generate candidates into a scratch file until the pT overlap suffices, then thin."""
    half = config.n_jets // 2
    edges = np.append(np.arange(config.pt_min, config.pt_max, PT_BIN_WIDTH), config.pt_max)
    # Per class, in canonical (shard index) order, so the choice does not depend on workers.
    found: dict[int, dict[int, tuple[np.ndarray, ShardJets]]] = {QUARK: {}, GLUON: {}}
    n_events = {QUARK: 0, GLUON: 0}

    def collected(label: int, what: str) -> np.ndarray:
        parts = [found[label][s][0] if what == "row" else getattr(found[label][s][1], what)
                 for s in sorted(found[label])]
        return np.concatenate(parts)

    with h5py.File(scratch_path, "w-") as scratch:
        candidates = _image_dataset(scratch, "X", 0, shape, resizable=True)
        tasks = _plan(math.ceil(OVERSAMPLE * half), 0, config)
        bar.total = 0
        while True:
            bar.total += sum(t.n_jets for t in tasks)
            bar.refresh()
            for res in runner.run(tasks):
                start = candidates.shape[0]
                candidates.resize(start + len(res.pt), axis=0)
                candidates[start:] = res.images
                found[res.label][res.shard] = (start + np.arange(len(res.pt)),
                                               dataclasses.replace(res, images=np.empty(0)))
                n_events[res.label] += res.n_events
                bar.update(len(res.pt))
            pts = {label: collected(label, "pt") for label in (QUARK, GLUON)}
            chosen = pt_matched_selection(pts[QUARK], pts[GLUON], half, edges)
            if chosen is not None:
                break
            # Too little overlap: ask for more, scaled by the overlap fraction seen so far.
            n_bins = len(edges) - 1
            overlap = int(np.minimum(*(np.bincount(_pt_bins(pts[lab], edges), minlength=n_bins)
                                       for lab in (QUARK, GLUON))).sum())
            per_class = min(len(pts[QUARK]), len(pts[GLUON]))
            more = math.ceil(1.2 * (half - overlap) * per_class / max(overlap, 1))
            tasks = _plan(more, max(found[QUARK]) + 1, config)

        keep = dict(zip((QUARK, GLUON), chosen))
        source_rows = np.concatenate([collected(lab, "row")[keep[lab]] for lab in (QUARK, GLUON)])
        pt = np.concatenate([pts[lab][keep[lab]] for lab in (QUARK, GLUON)])
        m0 = np.concatenate([collected(lab, "m0")[keep[lab]] for lab in (QUARK, GLUON)])
        y = np.repeat(np.array([QUARK, GLUON], np.float32), half)
        perm = _shuffle(config)
        images = _image_dataset(f, "X_jets", config.n_jets, shape)
        for i0 in range(0, config.n_jets, 256):
            wanted = source_rows[perm[i0:i0 + 256]]
            order = np.argsort(wanted)
            block = np.empty((len(wanted), *shape), np.float32)
            block[order] = candidates[wanted[order]]  # h5py wants increasing indices
            images[i0:i0 + len(wanted)] = block
    f.create_dataset("y", data=y[perm])
    f.create_dataset("pt", data=pt[perm])
    f.create_dataset("m0", data=m0[perm])
    return {"n_events": {"quark": n_events[QUARK], "gluon": n_events[GLUON]},
            "n_candidates": {"quark": len(pts[QUARK]), "gluon": len(pts[GLUON])},
            "pt_bin_edges": edges.tolist()}


def _shuffle(config: GeneratorConfig) -> np.ndarray:
    """Output row i holds canonical jet perm[i] (canonical: all quarks, then all gluons)."""
    return np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(2,))).permutation(config.n_jets)


def _file_attrs(config: GeneratorConfig, details: dict[str, Any]) -> dict[str, Any]:
    spec = get_detector(config.preset)
    generation = {
        "shard_jets": SHARD_JETS,
        "jet_definition": f"anti-kt R={JET_R}",
        "label_matching": f"leading jet within dR<{MATCH_DR} of an outgoing hard parton (status -23)",
        "quark_pdg_ids": list(LIGHT_QUARKS),
        "gluon_pdg_id": GLUON_ID,
        "processes": {"quark": list(PROCESSES[QUARK]), "gluon": list(PROCESSES[GLUON])},
        "pythia_settings": {"quark": config.pythia_settings(QUARK), "gluon": config.pythia_settings(GLUON)},
        "pt_bin_width": PT_BIN_WIDTH if config.pt_matched else None,
        **details,
    }
    return {
        "schema": SCHEMA,
        "creator": "mae-tracker",
        "task": "quark-gluon",
        "class_names": ["quark", "gluon"],  # [label 1, label 0]
        "patch_size": 5 if config.preset == "e2e" else 4,
        "channel_names": list(CHANNELS),
        "channel_units": json.dumps(CHANNEL_UNITS),
        "label_convention": LABEL_CONVENTION,
        "generator": json.dumps(config.to_dict()),
        "generation": json.dumps(generation),
        "detector": json.dumps(spec.to_dict()),
        "seed": config.seed,
        "versions": json.dumps(package_versions()),
    }


def generate_file(config: GeneratorConfig, out: Path | str, *, workers: int = 1, progress: bool = True) -> Path:
    """Generate ``config.n_jets`` jets (half quark, half gluon, shuffled) into ``out`` atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shape = get_detector(config.preset).shape
    tmp = _temp_path(out, ".tmp")
    scratch = _temp_path(out, ".scratch.tmp") if config.pt_matched else None
    try:
        with sigterm_as_exit(), \
                progress_bar(total=config.n_jets, unit="jet", desc=f"generate {out.name}", enabled=progress) as bar, \
                _ShardRunner(workers) as runner, h5py.File(tmp, "w-") as f:
            if config.pt_matched:
                assert scratch is not None
                details = _generate_pt_matched(config, f, runner, bar, shape, scratch)
            else:
                details = _generate_plain(config, f, runner, bar, shape)
            f.attrs.update(_file_attrs(config, details))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if scratch is not None:
            scratch.unlink(missing_ok=True)
    return out
