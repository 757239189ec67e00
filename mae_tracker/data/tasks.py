"""The three classification tasks the generator makes, and what a file says about its task.

Each task has defaults that make sense for it (class names for plots and reports, image size
and patch per preset) and writes them into the file attributes, so that readers, arms and the
report take them from the data instead of assuming quark/gluon:

* ``task``         -- "quark-gluon", "top-qcd" or "electron-photon";
* ``class_names``  -- [name of label 1, name of label 0], e.g. ["top", "QCD"];
* ``label_convention`` -- "1=top,0=QCD" (the older attribute, kept for compatibility);
* ``patch_size``   -- the ViT patch that suits the image (<= 64 tokens at the CPU preset).

:func:`class_names` and :func:`task_name` read them back from a :class:`JetFileInfo`, an attrs
dict or a path; files written before these attributes existed count as quark/gluon (``X_jets``)
or electron/photon (``X``).

The balanced two-class writer shared by the top/QCD generator (same reproducibility and
atomicity rules as :mod:`mae_tracker.data.generate`) lives here too.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import h5py
import numpy as np

from mae_tracker.data import generate as _gen
from mae_tracker.progress import progress_bar
from mae_tracker.signals import sigterm_as_exit


@dataclass(frozen=True)
class TaskSpec:
    name: str
    class_names: tuple[str, str]  # (label 1, label 0)
    images_key: str
    schema: str
    default_channels: int
    patch_size: Mapping[str, int]  # preset -> patch
    summary: str

    @property
    def label_convention(self) -> str:
        return f"1={self.class_names[0]},0={self.class_names[1]}"


TASKS: dict[str, TaskSpec] = {
    "quark-gluon": TaskSpec("quark-gluon", ("quark", "gluon"), "X_jets", "e2e-quark-gluon", 3,
                            {"cpu": 4, "e2e": 5}, "light-quark vs gluon jets, anti-kt R=0.4, pT 70-200 GeV"),
    "top-qcd": TaskSpec("top-qcd", ("top", "QCD"), "X_jets", "e2e-top-qcd", 8,
                        {"cpu": 4, "e2e": 5}, "hadronic top vs QCD fat jets, anti-kt R=0.8, pT 400-600 GeV"),
    "electron-photon": TaskSpec("electron-photon", ("electron", "photon"), "X", "e2e-electron-photon", 2,
                                {"cpu": 4, "e2e": 4}, "single electrons vs photons, 32x32 ECAL crystals"),
}
DEFAULT_TASK = "quark-gluon"


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)}") from None


def task_attrs(task: TaskSpec, preset: str) -> dict[str, Any]:
    """The per-task file attributes every generator writes."""
    return {"task": task.name, "class_names": list(task.class_names), "label_convention": task.label_convention,
            "patch_size": int(task.patch_size.get(preset, 4))}


def _attrs_of(source: Any) -> tuple[dict[str, Any], str]:
    if isinstance(source, Mapping):
        return dict(source), "X_jets"
    if hasattr(source, "attrs") and hasattr(source, "images_key"):  # JetFileInfo
        return dict(source.attrs), source.images_key
    from mae_tracker.data.validate import open_jet_file

    info = open_jet_file(source, check_values=False)
    return dict(info.attrs), info.images_key


def task_name(source: Any) -> str:
    """The task of a file (JetFileInfo, attrs dict or path); old files: by their image key."""
    attrs, key = _attrs_of(source)
    if str(attrs.get("task", "")) in TASKS:
        return str(attrs["task"])
    return "electron-photon" if key == "X" else DEFAULT_TASK


def class_names(source: Any) -> tuple[str, str]:
    """(name of label 1, name of label 0) of a file: attrs ``class_names``, else
    ``label_convention``, else the task's defaults (quark/gluon for old ``X_jets`` files)."""
    attrs, key = _attrs_of(source)
    names = attrs.get("class_names")
    if isinstance(names, str):
        try:
            names = json.loads(names)
        except ValueError:
            names = [n.strip() for n in names.split(",")]
    if isinstance(names, (list, tuple)) and len(names) == 2 and all(str(n) for n in names):
        return str(names[0]), str(names[1])
    parsed: dict[int, str] = {}
    for part in str(attrs.get("label_convention", "")).split(","):
        label, _, name = part.partition("=")
        if label.strip() in ("0", "1") and name.strip():
            parsed[int(label)] = name.strip()
    if set(parsed) == {0, 1}:
        return parsed[1], parsed[0]
    return TASKS["electron-photon" if key == "X" else DEFAULT_TASK].class_names


# --------------------------------------------------------------------------- balanced writer


def shard_seeds(salt: int, seed: int, label: int, shard: int) -> tuple[int, np.random.Generator]:
    """Pythia seed and detector rng of one shard; ``salt`` keeps tasks' streams apart."""
    pythia_word = np.random.SeedSequence(seed, spawn_key=(salt, label, shard, 0)).generate_state(1, np.uint64)[0]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(salt, label, shard, 1)))
    return int(pythia_word % _gen.PYTHIA_SEED_MAX) + 1, rng


@dataclass(frozen=True)
class Shard:
    """One shard to generate: ``n_jets`` jets of class ``label``; ``config`` is task-specific."""

    config: Any
    label: int
    shard: int
    n_jets: int


def plan_shards(config: Any, n_per_class: int, shard_jets: int) -> list[Shard]:
    tasks = []
    for i in range(math.ceil(n_per_class / shard_jets)):
        size = min(shard_jets, n_per_class - i * shard_jets)
        tasks += [Shard(config, label, i, size) for label in (1, 0)]
    return tasks


def write_balanced(out: Path | str, *, n_jets: int, seed: int, shard_jets: int, config: Any,
                   run: Callable[[Shard], Any], images_key: str, shape: tuple[int, ...],
                   extras: Iterable[str], attrs: Callable[[dict[str, Any]], dict[str, Any]],
                   workers: int = 1, progress: bool = True) -> Path:
    """Half label 1, half label 0, shuffled by ``seed``; written atomically to ``out``.

    ``run(shard)`` returns an object with ``label``, ``shard``, ``images`` (n, *shape), one
    array per name in ``extras`` and ``n_events``; row placement depends only on (label,
    shard), so the file does not depend on the number of workers. ``attrs(details)`` gives
    the file attributes (``details`` holds the event counts).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    extras = tuple(extras)
    half = n_jets // 2
    tmp = _gen._temp_path(out, ".tmp")
    try:
        with sigterm_as_exit(), \
                progress_bar(total=n_jets, unit="jet", desc=f"generate {out.name}", enabled=progress) as bar, \
                _gen._ShardRunner(workers, run) as runner, h5py.File(tmp, "w-") as f:
            perm = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,))).permutation(n_jets)
            row_of = np.argsort(perm)  # canonical order: label 1 by shard, then label 0
            images = _gen._image_dataset(f, images_key, n_jets, shape)
            y = np.zeros(n_jets, np.float32)
            columns = {name: np.zeros(n_jets, np.float32) for name in extras}
            n_events = {1: 0, 0: 0}
            for res in runner.run(plan_shards(config, half, shard_jets)):
                start = (0 if res.label == 1 else half) + res.shard * shard_jets
                rows = row_of[start:start + len(res.images)]
                _gen._write_rows(images, rows, res.images)
                y[rows] = res.label
                for name in extras:
                    columns[name][rows] = getattr(res, name)
                n_events[res.label] += res.n_events
                bar.update(len(res.images))
            f.create_dataset("y", data=y)
            for name in extras:
                f.create_dataset(name, data=columns[name])
            f.attrs.update(attrs({"n_events": {"1": n_events[1], "0": n_events[0]}, "n_candidates": n_jets}))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


# --------------------------------------------------------------------------- one entry point


def make_config(task: str, **settings: Any) -> Any:
    """The generator config of ``task`` from keyword settings; ``None`` values mean the task's
    default. A setting the task does not have is a ValueError naming it."""
    import dataclasses

    from mae_tracker.data.egamma import EGammaConfig
    from mae_tracker.data.generate import GeneratorConfig
    from mae_tracker.data.top_jets import TopQCDConfig

    spec = get_task(task)
    given = {k: v for k, v in settings.items() if v is not None}
    if spec.name == "quark-gluon" and given.pop("channels", 3) != 3:
        raise ValueError("quark-gluon images have 3 channels (Tracks, ECAL, HCAL); --channels is for top-qcd")
    if spec.name == "electron-photon":
        if given.pop("channels", 2) != 2:
            raise ValueError("electron-photon images have 2 channels (energy, time)")
        if given.pop("preset", "cpu") != "cpu":
            raise ValueError("electron-photon images are always 32x32 ECAL crystals; leave --preset out")
    cls = {"quark-gluon": GeneratorConfig, "top-qcd": TopQCDConfig, "electron-photon": EGammaConfig}[spec.name]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - names)
    if unknown:
        options = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise ValueError(f"{options} do(es) not apply to --task {spec.name}")
    return cls(**given)


def generate_task_file(config: Any, out: Path | str, *, workers: int = 1, progress: bool = True) -> Path:
    """Write the file of whichever task ``config`` belongs to (see :func:`make_config`)."""
    from mae_tracker.data.egamma import EGammaConfig, generate_egamma_file
    from mae_tracker.data.generate import GeneratorConfig, generate_file
    from mae_tracker.data.top_jets import TopQCDConfig, generate_top_qcd_file

    if isinstance(config, GeneratorConfig):
        return generate_file(config, out, workers=workers, progress=progress)
    if isinstance(config, TopQCDConfig):
        return generate_top_qcd_file(config, out, workers=workers, progress=progress)
    if isinstance(config, EGammaConfig):
        return generate_egamma_file(config, out, workers=workers, progress=progress)
    raise TypeError(f"not a generator config: {type(config).__name__}")
