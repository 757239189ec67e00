"""Boosted hadronic top quarks vs QCD fat jets (``mae-tracker generate --task top-qcd``).

Physics choices:

* pp at 13 TeV, Pythia 8. Signal: ``Top:gg2ttbar`` + ``Top:qqbar2ttbar`` with both W bosons
  forced to quarks (``24:onMode = off``, ``24:onIfAny = 1 2 3 4 5``), so every top decays
  t -> b q q'. Background: ``HardQCD:all`` (light, c and b jets in their natural mix).
  ``PhaseSpace:pTHatMin`` defaults to 0.85 x the jet pT cut: a top (or parton) just below the
  cut still makes jets above it after radiation and the underlying event, and much lower
  values only burn CPU on events with no jet in the window.
* Long-lived decays: ``ParticleDecays:limitTau0 = on`` with ``tau0Max = 10`` mm, so B and D
  hadrons (c tau ~0.1-0.5 mm) decay at displaced vertices while K0S, Lambda and the like
  (c tau >= 27 mm) leave the event as they would reach the calorimeter; production vertices
  (``vProd``, mm) feed the impact-parameter channels (:mod:`mae_tracker.sim.tracker`).
* Fat jets: anti-kt R = 0.8 on all visible final-state particles; kept when
  ``pt_min <= pT < pt_max`` and ``|eta| < eta_max``.
* Top label (1), truth matching from the event record: for each top quark, its last copy in
  the record (the one that decays, after the shower has recoiled it) gives the top direction;
  its daughter down-type quark (the b, >99 %) and the two quarks of its W (following the W
  through its shower copies to the decay) are the three decay quarks, taken at the moment of
  the decay (before their own showers). A jet is a top jet when it is the jet nearest the top
  within dR < 0.8 and all three decay quarks lie within dR < 0.8 of the jet axis. This is the
  standard "fully merged" definition of the top-tagging benchmarks: requiring the quarks (not
  only the top) inside the cone makes sure the three-prong structure is actually in the
  image, so the label means what a tagger is asked to see, instead of including partially
  merged jets that look like W or b jets. Its cost: at 400 GeV only part of the tops are fully
  merged (the decay opening angle is ~2 m/pT ~ 0.9), so more events are needed per jet.
* QCD label (0): each outgoing hard parton (status -23) gives at most one jet, its nearest jet
  within dR < 0.8, when that jet passes the cuts (one jet per parton, like the quark/gluon
  generator; no flavour requirement).
* Images: the event's particles in a window around the jet axis, sized for R = 0.8 at both
  presets (``cpu``: 32x32 pixels of 0.06, 64 patches of 4x4, half-width 0.96; ``e2e``:
  125x125 ECAL crystals of 0.0174 as in the CMS top dataset, half-width 1.09); channels
  Tracks, ECAL, HCAL (as quark/gluon) and, with ``channels`` 5 or 8, d0, dz and BPix1-3.
  Per jet the file also holds ``pt``, ``m0`` (particle-level jet mass) and ``eta`` (jet axis,
  so that masses can be computed from the energy images).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mae_tracker.data.tasks import TASKS
from mae_tracker.sim import detector as det
from mae_tracker.sim.detector import DetectorSpec
from mae_tracker.sim.events import (COLLISION_ENERGY, EventBatch, EventLoop, JetCuts, JetSample, collect_jets,
                                    jet_sample_problems, kinematics, make_pythia, raise_problems)
from mae_tracker.sim.shards import ShardJob, file_attrs, shard_seeds, write_balanced
from mae_tracker.sim.tracker import EXTRA_CHANNELS, EXTRA_UNITS, TrackerSpec, tracker_channels

TOP, QCD = 1, 0
TASK = TASKS["top-qcd"]
FAT_JET_R = 0.8
MATCH_DR = 0.8
PROCESSES = {TOP: ("Top:gg2ttbar", "Top:qqbar2ttbar"), QCD: ("HardQCD:all",)}
HADRONIC_W = ("24:onMode = off", "24:onIfAny = 1 2 3 4 5")
LONG_LIVED = ("ParticleDecays:limitTau0 = on", "ParticleDecays:tau0Max = 10")
SHARD_JETS = 100
SEED_SALT = 6  # keeps this task's random streams apart from quark/gluon's for the same seed
PTHAT_FRACTION = 0.85
MIN_BATCH, MAX_BATCH = 20, 200
MAX_EVENTS_WITHOUT_JET = 5_000
CHANNEL_SETS = {3: det.CHANNELS, 5: det.CHANNELS + EXTRA_CHANNELS[:2], 8: det.CHANNELS + EXTRA_CHANNELS}
PRESETS: dict[str, DetectorSpec] = {
    # 32 x 0.06 = 1.92 wide: an R=0.8 jet fits with 0.16 margin; a 0.06 cell is ~12 crystals,
    # so the per-cell ECAL noise is 0.04 * sqrt(12) ~ 0.14 (zero suppression at 3 sigma).
    "cpu": DetectorSpec(name="top-cpu", height=32, width=32, cell_size=0.06, ecal_noise=0.14,
                        ecal_threshold=0.42, hcal_tower=2),
    "e2e": det.PRESETS["e2e"],
}


@dataclass
class TopQCDConfig(JetSample):
    """Everything that determines a top/QCD file (stored as JSON in its attributes)."""

    n_jets: int = 2_000
    seed: int = 1
    preset: str = "cpu"
    channels: int = 8
    pt_min: float = 400.0
    pt_max: float = 600.0
    eta_max: float = 1.5
    mpi: bool = True
    pthat_min: float | None = None

    def __post_init__(self) -> None:
        if self.pthat_min is None:
            self.pthat_min = round(PTHAT_FRACTION * self.pt_min, 1)
        problems = jet_sample_problems(self, PRESETS)
        if self.channels not in CHANNEL_SETS:
            problems.append(f"channels must be one of {sorted(CHANNEL_SETS)} for top-qcd, got {self.channels}")
        raise_problems(problems)

    @property
    def channel_names(self) -> tuple[str, ...]:
        return CHANNEL_SETS[self.channels]

    def pythia_settings(self, label: int) -> list[str]:
        on = {True: "on", False: "off"}
        return [f"Beams:eCM = {COLLISION_ENERGY:g}", *(f"{p} = on" for p in PROCESSES[label]),
                *(HADRONIC_W if label == TOP else ()), *LONG_LIVED,
                f"PhaseSpace:pTHatMin = {self.pthat_min:g}", f"PartonLevel:MPI = {on[self.mpi]}"]


@dataclass
class TopShard:
    label: int
    shard: int
    images: np.ndarray
    pt: np.ndarray
    m0: np.ndarray
    eta: np.ndarray
    n_events: int
    seconds_images: float = 0.0


def _delta_r(eta1: Any, phi1: Any, eta2: Any, phi2: Any) -> Any:
    dphi = np.mod(np.asarray(phi1) - phi2 + np.pi, 2 * np.pi) - np.pi
    return np.hypot(np.asarray(eta1) - eta2, dphi)


class TopBatch(EventBatch):
    """A batch with its R = 0.8 fat jets, the decay tree (daughters) and production vertices."""

    def __init__(self, batch: Any, jet_pt_min: float) -> None:
        import awkward as ak

        super().__init__(batch, FAT_JET_R, jet_pt_min)
        prt = self.record
        self.event_start = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(prt)))])
        self.d1 = ak.to_numpy(ak.flatten(prt.daughter1))
        self.d2 = ak.to_numpy(ak.flatten(prt.daughter2))
        self.all_pt, self.all_eta, self.all_phi = kinematics(self.all_px, self.all_py, self.all_pz)
        vx, vy, vz = (np.asarray(ak.to_numpy(ak.fill_none(ak.flatten(prt.vProd[f]), 0.0)), dtype=np.float64)
                      for f in ("px", "py", "pz"))
        final = self.final
        self.px, self.py, self.pz = self.all_px[final], self.all_py[final], self.all_pz[final]
        self.vx, self.vy, self.vz = vx[final], vy[final], vz[final]

    def tops(self, event: int) -> list[tuple[int, list[int]]]:
        """(top index, [b, q, q'] indices) per hadronically decaying top (global flat indices)."""
        start, stop = self.event_start[event], self.event_start[event + 1]
        out = []
        for i in np.flatnonzero(np.abs(self.id[start:stop]) == 6) + start:
            daughters = range(start + self.d1[i], start + self.d2[i] + 1) if self.d1[i] > 0 else range(0)
            w = [j for j in daughters if abs(self.id[j]) == 24]
            b = [j for j in daughters if abs(self.id[j]) in (1, 3, 5)]
            if not w or not b:
                continue  # a copy of the top, not the one that decays
            k = w[0]
            while self.d1[k] > 0 and self.d2[k] in (0, self.d1[k]):  # follow the W's shower copies
                k = start + self.d1[k]
            quarks = [start + j for j in range(self.d1[k], self.d2[k] + 1)
                      if self.d1[k] > 0 and 1 <= abs(self.id[start + j]) <= 5]
            if len(quarks) == 2:
                out.append((int(i), [b[0], *quarks]))
        return out

    def hard_partons(self, event: int) -> np.ndarray:
        start, stop = self.event_start[event], self.event_start[event + 1]
        return np.flatnonzero(self.status[start:stop] == -23) + start


def _selected_jets(ev: TopBatch, event: int, label: int, cuts: JetCuts) -> list[int]:
    js = slice(ev.jet_offsets[event], ev.jet_offsets[event + 1])
    if js.start == js.stop:
        return []
    jeta, jphi, jpt = ev.jet_eta[js], ev.jet_phi[js], ev.jet_pt[js]
    passes = (np.abs(jeta) < cuts.eta_max) & (jpt >= cuts.pt_min) & (jpt < cuts.pt_max)
    chosen: list[int] = []
    if label == TOP:
        for top, quarks in ev.tops(event):
            dr = _delta_r(jeta, jphi, ev.all_eta[top], ev.all_phi[top])
            j = int(np.argmin(dr))
            if dr[j] >= MATCH_DR or not passes[j]:
                continue
            if np.all(_delta_r(ev.all_eta[quarks], ev.all_phi[quarks], jeta[j], jphi[j]) < MATCH_DR):
                chosen.append(j)
    else:
        for parton in ev.hard_partons(event):
            dr = _delta_r(jeta, jphi, ev.all_eta[parton], ev.all_phi[parton])
            j = int(np.argmin(dr))
            if dr[j] < MATCH_DR and passes[j]:
                chosen.append(j)
    return [js.start + j for j in dict.fromkeys(chosen)]  # one entry per jet, in order


def jet_images(ev: TopBatch, event: int, jet: int, config: TopQCDConfig, charge: np.ndarray,
               rng: np.random.Generator, tracker: TrackerSpec = TrackerSpec()) -> np.ndarray:
    """(H, W, channels) image of one fat jet from its event's final-state particles."""
    spec = PRESETS[config.preset]
    ps = slice(ev.offsets[event], ev.offsets[event + 1])
    jet_eta, jet_phi = float(ev.jet_eta[jet]), float(ev.jet_phi[jet])
    image, window = det.detector_image(ev.pt[ps], ev.eta[ps], ev.phi[ps], ev.pid[ps], jet_eta=jet_eta,
                                       jet_phi=jet_phi, detector=spec, rng=rng, charge=charge[ps])
    if config.channels == 3:
        return image
    extra = tracker_channels(config.channels - 3, window, spec, tracker, px=ev.px[ps], py=ev.py[ps],
                             pz=ev.pz[ps], vx=ev.vx[ps], vy=ev.vy[ps], vz=ev.vz[ps], charge=charge[ps],
                             pid=ev.pid[ps], jet_eta=jet_eta, jet_phi=jet_phi, rng=rng)
    return np.concatenate([image, extra], axis=-1)


def generate_shard(job: ShardJob) -> TopShard:
    """The first ``job.n_images`` jets of class ``job.label`` from a freshly seeded Pythia."""
    config: TopQCDConfig = job.config
    pythia_seed, rng = shard_seeds(config.seed, job.label, job.shard, stream=(SEED_SALT,))
    loop = EventLoop(make_batch=lambda raw: TopBatch(raw, 0.5 * config.pt_min),
                     select=lambda ev, event: _selected_jets(ev, event, job.label, config.cuts),
                     image=lambda ev, event, jet, charge: jet_images(ev, event, jet, config, charge, rng),
                     batch_range=(MIN_BATCH, MAX_BATCH), first_yield=0.2,
                     max_events_without_jet=MAX_EVENTS_WITHOUT_JET)
    jets = collect_jets(make_pythia(config.pythia_settings(job.label), pythia_seed), job.n_images, loop, config.cuts)
    return TopShard(label=job.label, shard=job.shard, images=jets.images, pt=jets.pt, m0=jets.m0, eta=jets.eta,
                    n_events=jets.n_events, seconds_images=jets.seconds_images)


def _attrs(config: TopQCDConfig, details: dict[str, Any]) -> dict[str, Any]:
    spec = PRESETS[config.preset]
    names = config.channel_names
    units = {**det.CHANNEL_UNITS, **EXTRA_UNITS}
    generation = {
        "shard_jets": SHARD_JETS,
        "jet_definition": f"anti-kt R={FAT_JET_R}",
        "label_matching": ("top: jet nearest the top (last copy) within dR<0.8 with its b and both W "
                           "quarks within dR<0.8 of the jet axis; QCD: nearest jet within dR<0.8 of an "
                           "outgoing hard parton (status -23)"),
        "processes": {"top": list(PROCESSES[TOP]), "QCD": list(PROCESSES[QCD])},
        "pythia_settings": {"top": config.pythia_settings(TOP), "QCD": config.pythia_settings(QCD)},
        "tracker": TrackerSpec().to_dict() if config.channels > 3 else None,
        "n_events": {"top": details["n_events"]["1"], "QCD": details["n_events"]["0"]},
        "n_candidates": details["n_candidates"],
    }
    detector = spec.to_dict()
    detector.update(channels=list(names), units={n: units[n] for n in names})
    return file_attrs(TASK, config.preset, config, channel_units={n: units[n] for n in names},
                      generation=generation, detector=detector)


def generate_top_qcd_file(config: TopQCDConfig, out: Path | str, *, workers: int = 1,
                          progress: bool = True) -> Path:
    """``config.n_jets`` fat jets (half top, half QCD, shuffled) into ``out``, atomically."""
    spec = PRESETS[config.preset]
    return write_balanced(out, n_images=config.n_jets, seed=config.seed, shard_size=SHARD_JETS, config=config,
                          run=generate_shard, images_key=TASK.images_key,
                          shape=(spec.height, spec.width, config.channels), extras=("pt", "m0", "eta"),
                          attrs=lambda details: _attrs(config, details), workers=workers, progress=progress)
