"""`mae-tracker generate`'s entry point over the three tasks: which config and which writer each
task has, a config from keyword settings, and the file of any config.

The task metadata (names, class names, image key, schema) is :mod:`mae_tracker.data.tasks`; this
is the generator side of the same table.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mae_tracker.atomic import scratch_path
from mae_tracker.data.jetfile import JetImageReader
from mae_tracker.data.layouts import write_layout
from mae_tracker.data.tasks import TASKS, TaskSpec, get_task
from mae_tracker.sim import require_simulation
from mae_tracker.sim.electron_photon import EGammaConfig, generate_egamma_file
from mae_tracker.sim.quark_gluon import QuarkGluonConfig, generate_quark_gluon_file
from mae_tracker.sim.top_qcd import TopQCDConfig, generate_top_qcd_file

TaskConfig = QuarkGluonConfig | TopQCDConfig | EGammaConfig  # any task's generator config


@dataclass(frozen=True)
class Generator:
    """A task's generator: its config class, the field of that config counting the images,
    its file writer, and whether it runs Pythia (the ``sim`` extra)."""

    task: TaskSpec
    config: type
    count_field: str
    write: Callable[..., Path]
    needs_pythia: bool


GENERATORS: dict[str, Generator] = {
    "quark-gluon": Generator(TASKS["quark-gluon"], QuarkGluonConfig, "n_jets", generate_quark_gluon_file, True),
    "top-qcd": Generator(TASKS["top-qcd"], TopQCDConfig, "n_jets", generate_top_qcd_file, True),
    "electron-photon": Generator(TASKS["electron-photon"], EGammaConfig, "n_particles", generate_egamma_file, False),
}


def generator_of(config: Any) -> Generator:
    """The generator whose config ``config`` is."""
    for generator in GENERATORS.values():
        if isinstance(config, generator.config):
            return generator
    raise TypeError(f"not a generator config: {type(config).__name__}")


def task_of(config: Any) -> str:
    """The task name of a generator config."""
    return generator_of(config).task.name


def make_config(task: str, **settings: Any) -> TaskConfig:
    """The generator config of ``task`` from keyword settings; ``None`` values mean the task's
    default. ``n_jets`` (the CLI's ``--n-jets``, a pipeline spec's ``data.n_jets``) or
    ``n_images`` sets the task's image count (``n_particles`` for electron-photon). A setting the
    task does not have is a ValueError naming it."""
    spec = get_task(task)
    generator = GENERATORS[spec.name]
    given = {k: v for k, v in settings.items() if v is not None}
    for alias in ("n_images", "n_jets"):
        if alias in given and alias != generator.count_field:
            given.setdefault(generator.count_field, given.pop(alias))
    if spec.name == "quark-gluon" and given.pop("channels", 3) != 3:
        raise ValueError("quark-gluon images have 3 channels (Tracks, ECAL, HCAL); --channels is for top-qcd")
    if spec.name == "electron-photon":
        if given.pop("channels", 2) != 2:
            raise ValueError("electron-photon images have 2 channels (energy, time)")
        if given.pop("preset", "cpu") != "cpu":
            raise ValueError("electron-photon images are always 32x32 ECAL crystals; leave --preset out")
    names = {f.name for f in dataclasses.fields(generator.config)}
    unknown = sorted(set(given) - names)
    if unknown:
        options = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise ValueError(f"{options} do(es) not apply to --task {spec.name}")
    config: TaskConfig = generator.config(**given)
    return config


def generate_task_file(config: TaskConfig, out: Path | str, *, workers: int = 1, progress: bool = True) -> Path:
    """Write the file of whichever task ``config`` belongs to (see :func:`make_config`);
    :class:`~mae_tracker.sim.SimulationMissing` when the task needs Pythia and it is missing."""
    generator = generator_of(config)
    if generator.needs_pythia:
        require_simulation()
    return generator.write(config, out, workers=workers, progress=progress)


def generate_layout(config: TaskConfig, out: str | os.PathLike[str], *, fmt: str, files: int = 1,
                    split_by_class: bool = False, row_group_size: int = 1, workers: int = 1,
                    progress: bool = True) -> list[Path]:
    """Generate ``config``'s images (any task) and write them in a CMS layout into the folder ``out``
    (see :func:`mae_tracker.data.layouts.write_layout`); the generator's HDF5 file is a temporary
    beside ``out``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # fail before generating
        raise ValueError(f"{out} already exists; give a new folder (or an empty one) for a multi-file dataset")
    out.parent.mkdir(parents=True, exist_ok=True)
    with scratch_path(out, ".generated.h5") as scratch:
        generate_task_file(config, scratch, workers=workers, progress=progress)
        with JetImageReader(scratch) as reader:
            return write_layout(reader, out, fmt=fmt, files=files, split_by_class=split_by_class,
                                row_group_size=row_group_size)
