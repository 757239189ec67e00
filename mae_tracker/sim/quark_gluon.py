"""Labelled quark or gluon jets from Pythia 8 + FastJet (``mae-tracker generate``, the default task).

Physics choices:

* pp at 13 TeV. Quark jets come from ``HardQCD:qq2qq``, ``qqbar2qqbarNew`` and ``gg2qqbar``;
  gluon jets from ``HardQCD:gg2gg`` and ``qqbar2gg``, in *separate* Pythia instances, so a
  shard holds one class only.
* Jets: anti-kt R = 0.4 on all visible final-state particles (neutrinos excluded).
* Label: a jet is kept when it is the highest-pT jet within dR < 0.4 of an outgoing hard
  parton (status -23) that is its nearest hard parton, and that parton has the shard's
  flavour: light quarks u/d/s (|id| 1-3, as in the CMS E2E quark/gluon file; c/b from the
  quark sea in qq2qq are dropped) or gluons (21).
* Images are made from *all* final-state particles of the event in the window around the
  jet axis (as a calorimeter sees them, underlying event and neighbours included).

Written in the CMS E2E quark/gluon HDF5 schema (``X_jets``, ``y``, ``pt``, ``m0``), balanced
and shuffled (:mod:`mae_tracker.sim.shards`), or pT-matched (:mod:`mae_tracker.sim.pt_matched`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from mae_tracker.data.tasks import TASKS
from mae_tracker.sim.detector import CHANNEL_UNITS, PRESETS, DetectorSpec, get_detector, particles_to_image
from mae_tracker.sim.events import (COLLISION_ENERGY, EventBatch, EventLoop, JetCuts, JetSample, collect_jets,
                                    jet_sample_problems, kinematics, make_pythia, offsets, raise_problems)
from mae_tracker.sim.pt_matched import PT_BIN_WIDTH, write_pt_matched
from mae_tracker.sim.shards import ShardJob, file_attrs, shard_seeds, write_balanced

QUARK, GLUON = 1, 0
TASK = TASKS["quark-gluon"]
PROCESSES: dict[int, tuple[str, ...]] = {
    QUARK: ("HardQCD:qq2qq", "HardQCD:qqbar2qqbarNew", "HardQCD:gg2qqbar"),
    GLUON: ("HardQCD:gg2gg", "HardQCD:qqbar2gg"),
}
LIGHT_QUARKS = (1, 2, 3)
GLUON_ID = 21
JET_R = 0.4
MATCH_DR = 0.4
HARD_PARTON_STATUS = -23
MIN_BATCH, MAX_BATCH = 50, 500  # events per nextBatch call; no effect on the output
MAX_EVENTS_WITHOUT_JET = 20_000
SHARD_JETS = 250  # jets of one class per shard; part of the output's identity (stored in attrs)
PTHAT_FRACTION = 0.7  # default pthat_min = 0.7 * pt_min (see QuarkGluonConfig)


@dataclass
class ShardJets:
    """Jets of one class from one shard, in generation order."""

    label: int
    shard: int
    images: np.ndarray  # (n, H, W, 3) float32
    pt: np.ndarray  # (n,) float32
    m0: np.ndarray  # (n,) float32 jet mass
    n_events: int


def pythia_settings(label: int, *, pthat_min: float, mpi: bool, hadronisation: bool) -> list[str]:
    """Pythia settings for one class, seed excluded (stored in the HDF5 attributes)."""
    on = {True: "on", False: "off"}
    return [
        f"Beams:eCM = {COLLISION_ENERGY:g}",
        *(f"{process} = on" for process in PROCESSES[label]),
        f"PhaseSpace:pTHatMin = {pthat_min:g}",
        f"PartonLevel:MPI = {on[mpi]}",
        f"HadronLevel:all = {on[hadronisation]}",
    ]


@dataclass
class QuarkGluonConfig(JetSample):
    """Everything that determines a quark/gluon file (stored as JSON in the file).

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

    def pythia_settings(self, label: int) -> list[str]:
        assert self.pthat_min is not None
        return pythia_settings(label, pthat_min=self.pthat_min, mpi=self.mpi, hadronisation=self.hadronisation)


class QuarkGluonBatch(EventBatch):
    """A batch with its R = 0.4 jets and its outgoing hard partons."""

    def __init__(self, batch: Any, jet_pt_min: float) -> None:
        super().__init__(batch, JET_R, jet_pt_min)
        hard = self.status == HARD_PARTON_STATUS
        self.parton_id = self.id[hard]
        _, self.parton_eta, self.parton_phi = kinematics(self.all_px[hard], self.all_py[hard], self.all_pz[hard])
        self.parton_offsets = offsets(self.event_of[hard], self.n_events)


def matched_jets(jet_pt: np.ndarray, jet_eta: np.ndarray, jet_phi: np.ndarray,
                 parton_id: np.ndarray, parton_eta: np.ndarray, parton_phi: np.ndarray) -> Iterator[tuple[int, int]]:
    """(jet index, parton index) pairs for one event: each hard parton's leading nearby jet."""
    dphi = np.mod(jet_phi[:, None] - parton_phi[None, :] + np.pi, 2 * np.pi) - np.pi
    dr = np.hypot(jet_eta[:, None] - parton_eta[None, :], dphi)
    nearest = np.argmin(dr, axis=1)
    matched = dr[np.arange(len(jet_pt)), nearest] < MATCH_DR
    for k in range(len(parton_id)):
        candidates = np.flatnonzero(matched & (nearest == k))
        if candidates.size:
            yield int(candidates[np.argmax(jet_pt[candidates])]), k


def jet_selector(label: int, cuts: JetCuts) -> Callable[[QuarkGluonBatch, int], list[int]]:
    """The event's jets matched to a hard parton of the shard's flavour, inside the cuts."""
    flavour_ok = (lambda pid: abs(pid) in LIGHT_QUARKS) if label == QUARK else (lambda pid: pid == GLUON_ID)

    def select(ev: QuarkGluonBatch, event: int) -> list[int]:
        js = slice(ev.jet_offsets[event], ev.jet_offsets[event + 1])
        hs = slice(ev.parton_offsets[event], ev.parton_offsets[event + 1])
        if js.start == js.stop or hs.start == hs.stop:
            return []
        chosen = []
        for j, k in matched_jets(ev.jet_pt[js], ev.jet_eta[js], ev.jet_phi[js],
                                 ev.parton_id[hs], ev.parton_eta[hs], ev.parton_phi[hs]):
            jet = js.start + j
            if (flavour_ok(int(ev.parton_id[hs.start + k])) and abs(ev.jet_eta[jet]) < cuts.eta_max
                    and cuts.pt_min <= ev.jet_pt[jet] < cuts.pt_max):
                chosen.append(jet)
        return chosen

    return select


def generate_jets(label: int, n_jets: int, *, settings: list[str], pythia_seed: int, cuts: JetCuts,
                  detector: DetectorSpec, rng: np.random.Generator, shard: int = 0) -> ShardJets:
    """The first ``n_jets`` labelled jets (and their images) of a freshly seeded Pythia."""

    def image(ev: QuarkGluonBatch, event: int, jet: int, charge: np.ndarray) -> np.ndarray:
        ps = slice(ev.offsets[event], ev.offsets[event + 1])
        return particles_to_image(ev.pt[ps], ev.eta[ps], ev.phi[ps], ev.pid[ps], jet_eta=float(ev.jet_eta[jet]),
                                  jet_phi=float(ev.jet_phi[jet]), detector=detector, rng=rng, charge=charge[ps])

    loop = EventLoop(make_batch=lambda raw: QuarkGluonBatch(raw, 0.5 * cuts.pt_min), select=jet_selector(label, cuts),
                     image=image, batch_range=(MIN_BATCH, MAX_BATCH), first_yield=0.1,
                     max_events_without_jet=MAX_EVENTS_WITHOUT_JET)
    jets = collect_jets(make_pythia(settings, pythia_seed), n_jets, loop, cuts)
    return ShardJets(label=label, shard=shard, images=jets.images, pt=jets.pt, m0=jets.m0, n_events=jets.n_events)


def run_shard(job: ShardJob) -> ShardJets:
    """Generate one shard (runs in a worker process or in-process for workers=1)."""
    pythia_seed, rng = shard_seeds(job.config.seed, job.label, job.shard)
    return generate_jets(job.label, job.n_images, settings=job.config.pythia_settings(job.label),
                         pythia_seed=pythia_seed, cuts=job.config.cuts,
                         detector=get_detector(job.config.preset), rng=rng, shard=job.shard)


def _by_class(counts: Any) -> Any:
    """{"1": a, "0": b} -> {"quark": a, "gluon": b}; anything else unchanged."""
    if isinstance(counts, dict):
        return {"quark": counts["1"], "gluon": counts["0"]}
    return counts


def _file_attrs(config: QuarkGluonConfig, details: dict[str, Any]) -> dict[str, Any]:
    generation = {
        "shard_jets": SHARD_JETS,
        "jet_definition": f"anti-kt R={JET_R}",
        "label_matching": f"leading jet within dR<{MATCH_DR} of an outgoing hard parton (status -23)",
        "quark_pdg_ids": list(LIGHT_QUARKS),
        "gluon_pdg_id": GLUON_ID,
        "processes": {"quark": list(PROCESSES[QUARK]), "gluon": list(PROCESSES[GLUON])},
        "pythia_settings": {"quark": config.pythia_settings(QUARK), "gluon": config.pythia_settings(GLUON)},
        "pt_bin_width": PT_BIN_WIDTH if config.pt_matched else None,
        **{key: _by_class(value) if key in ("n_events", "n_candidates") else value for key, value in details.items()},
    }
    return file_attrs(TASK, config.preset, config, channel_units=dict(CHANNEL_UNITS), generation=generation,
                      detector=get_detector(config.preset).to_dict())


def generate_quark_gluon_file(config: QuarkGluonConfig, out: Path | str, *, workers: int = 1,
                              progress: bool = True) -> Path:
    """Generate ``config.n_jets`` jets (half quark, half gluon, shuffled) into ``out`` atomically."""
    shape = get_detector(config.preset).shape

    def attrs(details: dict[str, Any]) -> dict[str, Any]:
        return _file_attrs(config, details)

    if config.pt_matched:
        return write_pt_matched(out, config, run=run_shard, shard_size=SHARD_JETS, shape=shape, attrs=attrs,
                                workers=workers, progress=progress)
    return write_balanced(out, n_images=config.n_jets, seed=config.seed, shard_size=SHARD_JETS, config=config,
                          run=run_shard, images_key=TASK.images_key, shape=shape, extras=("pt", "m0"),
                          attrs=attrs, workers=workers, progress=progress)
