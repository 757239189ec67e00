"""Labelled quark or gluon jets from Pythia 8 + FastJet, one reproducible shard at a time.

Physics choices (see also GeneratorConfig in generate.py):

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

The speed comes from ``Pythia.nextBatch`` (events as awkward arrays) and FastJet's awkward
interface, which cluster a whole batch in C++; only the few selected jets are looped over.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Iterator

import awkward as ak
import numpy as np

from mae_tracker.data.detector import DetectorSpec, particles_to_image

COLLISION_ENERGY = 13000.0  # GeV, pp
QUARK, GLUON = 1, 0
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
PYTHIA_SEED_MAX = 900_000_000  # Pythia's Random:seed upper limit


@dataclass(frozen=True)
class JetCuts:
    pt_min: float
    pt_max: float
    eta_max: float


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


_FLAG_WORDS = {"on": True, "yes": True, "true": True, "1": True, "off": False, "no": False, "false": False, "0": False}
# Output only, no physics: Pythia errors go to stderr (stdout stays clean for the CLI).
_OUTPUT_SETTINGS = ("Print:useErrorStream = on", "Print:quiet = on")


def make_pythia(settings: list[str], seed: int) -> Any:
    """An initialised Pythia; raises instead of silently running with a misspelt setting."""
    import pythia8mc

    if not 1 <= seed <= PYTHIA_SEED_MAX:
        raise ValueError(f"Pythia seed {seed} outside [1, {PYTHIA_SEED_MAX}]")
    pythia = pythia8mc.Pythia("", False)  # no banner
    for line in [*_OUTPUT_SETTINGS, *settings, "Random:setSeed = on", f"Random:seed = {seed}"]:
        if not pythia.readString(line):  # unknown name or unparsable value
            raise ValueError(f"Pythia rejected the setting {line!r}")
        key, _, value = (part.strip() for part in line.partition("="))
        # For a flag Pythia reads any unknown word ("onn") as off without complaint.
        if pythia.settings.isFlag(key) and _FLAG_WORDS.get(value.lower()) != pythia.flag(key):
            raise ValueError(f"Pythia did not take the setting {line!r} as meant")
    if not pythia.init():
        raise RuntimeError(f"Pythia failed to initialise with {settings}")
    return pythia


@functools.lru_cache(maxsize=1)
def _jet_definition() -> Any:
    import fastjet
    import fastjet._swig

    # FastJet prints its banner on fd 1 the first time it clusters; a null stream mutes it.
    fastjet._swig.ClusterSequence.set_fastjet_banner_stream(None)
    return fastjet.JetDefinition(fastjet.antikt_algorithm, JET_R)


def _kinematics(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(pz / pt)  # pT = 0 gives +-inf / nan; the imager drops non-finite
    return pt, eta, np.arctan2(py, px)


def _offsets(event_of: np.ndarray, n_events: int) -> np.ndarray:
    """Start of each event's entries in a flat array sorted by event."""
    return np.concatenate([[0], np.cumsum(np.bincount(event_of, minlength=n_events))])


class _Batch:
    """One nextBatch worth of events as flat numpy arrays + per-event offsets.

    Awkward calls have a fixed cost each, so the record is flattened once and everything
    else is numpy; awkward is only rebuilt for FastJet's jagged input.
    """

    def __init__(self, batch: ak.Array, jet_def: Any, jet_pt_min: float) -> None:
        import fastjet

        self.n_events = n = len(batch)
        prt = batch.prt
        event_of = np.repeat(np.arange(n), ak.to_numpy(ak.num(prt)))
        status = ak.to_numpy(ak.flatten(prt.status))
        pid = ak.to_numpy(ak.flatten(prt.id))
        px, py, pz, e = (ak.to_numpy(ak.flatten(prt.p[f])) for f in ("px", "py", "pz", "e"))

        final = status > 0
        self.pid = pid[final]
        self.pt, self.eta, self.phi = _kinematics(px[final], py[final], pz[final])
        self.offsets = _offsets(event_of[final], n)

        visible = final & (np.abs(pid) != 12) & (np.abs(pid) != 14) & (np.abs(pid) != 16)  # no neutrinos
        four_vectors = ak.zip({"px": px[visible], "py": py[visible], "pz": pz[visible], "E": e[visible]})
        inputs = ak.unflatten(four_vectors, np.bincount(event_of[visible], minlength=n))
        jets = fastjet.ClusterSequence(inputs, jet_def).inclusive_jets(min_pt=jet_pt_min)
        jpx, jpy, jpz, je = (ak.to_numpy(ak.flatten(jets[f])) for f in ("px", "py", "pz", "E"))
        self.jet_pt, self.jet_eta, self.jet_phi = _kinematics(jpx, jpy, jpz)
        self.jet_mass = np.sqrt(np.clip(je**2 - jpx**2 - jpy**2 - jpz**2, 0.0, None))
        self.jet_offsets = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(jets)))])

        hard = status == HARD_PARTON_STATUS
        self.parton_id = pid[hard]
        _, self.parton_eta, self.parton_phi = _kinematics(px[hard], py[hard], pz[hard])
        self.parton_offsets = _offsets(event_of[hard], n)


def _matched_jets(jet_pt: np.ndarray, jet_eta: np.ndarray, jet_phi: np.ndarray,
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


class _ChargeTable:
    """PDG id -> charge, cached; nextBatch records carry no charge field."""

    def __init__(self, particle_data: Any) -> None:
        self._data = particle_data
        self._cache: dict[int, float] = {}

    def __call__(self, pid: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(pid, return_inverse=True)
        for i in unique.tolist():
            if i not in self._cache:
                self._cache[i] = self._data.charge(i) if self._data.isParticle(i) else 0.0
        return np.array([self._cache[i] for i in unique.tolist()])[inverse]


def generate_jets(label: int, n_jets: int, *, settings: list[str], pythia_seed: int, cuts: JetCuts,
                  detector: DetectorSpec, rng: np.random.Generator, shard: int = 0) -> ShardJets:
    """The first ``n_jets`` labelled jets (and their images) of a freshly seeded Pythia."""
    flavour_ok = (lambda pid: abs(pid) in LIGHT_QUARKS) if label == QUARK else (lambda pid: pid == GLUON_ID)
    pythia = make_pythia(settings, pythia_seed)
    jet_def = _jet_definition()

    charges = _ChargeTable(pythia.particleData)
    images: list[np.ndarray] = []
    pts: list[float] = []
    masses: list[float] = []
    n_events = 0
    while len(pts) < n_jets:
        if not pts and n_events >= MAX_EVENTS_WITHOUT_JET:
            raise RuntimeError(f"no jet passed the cuts {cuts} in {n_events} events; "
                               "check the pT window, |eta| cut and pthat_min")
        # Batch size follows the jet yield so far (the event sequence, hence the output, does
        # not depend on it); bigger batches amortise the fixed cost of each awkward call.
        per_event = len(pts) / n_events if pts else 0.1
        size = int(np.clip(1.1 * (n_jets - len(pts)) / per_event, MIN_BATCH, MAX_BATCH))
        raw = pythia.nextBatch(size)
        if len(raw) == 0:
            raise RuntimeError("Pythia returned no events (see its errors on stderr)")
        n_events += len(raw)
        ev = _Batch(raw, jet_def, 0.5 * cuts.pt_min)
        charge = charges(ev.pid)
        for event in range(ev.n_events):
            js = slice(ev.jet_offsets[event], ev.jet_offsets[event + 1])
            hs = slice(ev.parton_offsets[event], ev.parton_offsets[event + 1])
            if js.start == js.stop or hs.start == hs.stop:
                continue
            for j, k in _matched_jets(ev.jet_pt[js], ev.jet_eta[js], ev.jet_phi[js],
                                      ev.parton_id[hs], ev.parton_eta[hs], ev.parton_phi[hs]):
                jet = js.start + j
                if not (flavour_ok(int(ev.parton_id[hs.start + k])) and abs(ev.jet_eta[jet]) < cuts.eta_max
                        and cuts.pt_min <= ev.jet_pt[jet] < cuts.pt_max):
                    continue
                ps = slice(ev.offsets[event], ev.offsets[event + 1])
                images.append(particles_to_image(
                    ev.pt[ps], ev.eta[ps], ev.phi[ps], ev.pid[ps], jet_eta=float(ev.jet_eta[jet]),
                    jet_phi=float(ev.jet_phi[jet]), detector=detector, rng=rng, charge=charge[ps]))
                pts.append(float(ev.jet_pt[jet]))
                masses.append(float(ev.jet_mass[jet]))
                if len(pts) == n_jets:
                    break
            if len(pts) == n_jets:
                break
    return ShardJets(label=label, shard=shard, images=np.stack(images).astype(np.float32, copy=False),
                     pt=np.array(pts, dtype=np.float32), m0=np.array(masses, dtype=np.float32),
                     n_events=n_events)
