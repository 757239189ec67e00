"""Simulation: the event generators and detector response that write labelled jet-image files.

One module per task (:mod:`~mae_tracker.sim.quark_gluon`, :mod:`~mae_tracker.sim.top_qcd`,
:mod:`~mae_tracker.sim.electron_photon`), the shared Pythia/FastJet event loop
(:mod:`~mae_tracker.sim.events`), the calorimeter and tracker response
(:mod:`~mae_tracker.sim.detector`, :mod:`~mae_tracker.sim.tracker`), the shard planner and
writer (:mod:`~mae_tracker.sim.shards`) and the entry point over all tasks
(:mod:`~mae_tracker.sim.generate`, :mod:`~mae_tracker.sim.default` for the cached default
dataset). Reading files is :mod:`mae_tracker.data`'s job, which imports nothing from here.

Pythia 8, FastJet and awkward are the optional ``sim`` extra; the modules here import them
only when generating, and :func:`require_simulation` turns their absence into one line.
"""

from __future__ import annotations

import importlib.util

SIM_PACKAGES = ("pythia8mc", "fastjet", "awkward")
EXTRA_HINT = "event generation needs the simulation extra: pip install 'mae-tracker[sim]'"


class SimulationMissing(RuntimeError):
    """The ``sim`` extra (Pythia 8, FastJet, awkward) is not installed."""


def simulation_available() -> bool:
    """Whether Pythia 8, FastJet and awkward can be imported."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in SIM_PACKAGES)
    except (ImportError, ValueError):  # a module set to None in sys.modules, a broken install
        return False


def require_simulation() -> None:
    """Raise :class:`SimulationMissing` (one line naming the extra) unless the stack imports."""
    if not simulation_available():
        raise SimulationMissing(EXTRA_HINT)
