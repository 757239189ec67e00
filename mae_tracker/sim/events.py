"""What every Pythia jet task shares: Pythia set-up, one batch of events as flat arrays with its
FastJet jets, the event loop that collects a shard's jets, and the common config checks.

The speed comes from ``Pythia.nextBatch`` (events as awkward arrays) and FastJet's awkward
interface, which cluster a whole batch in C++; only the few selected jets are looped over.
Pythia, FastJet and awkward are imported when a batch is made (the ``sim`` extra).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

COLLISION_ENERGY = 13000.0  # GeV, pp
BEAM_ENERGY = COLLISION_ENERGY / 2
PYTHIA_SEED_MAX = 900_000_000  # Pythia's Random:seed upper limit
NEUTRINOS = (12, 14, 16)

_FLAG_WORDS = {"on": True, "yes": True, "true": True, "1": True, "off": False, "no": False, "false": False, "0": False}
# Output only, no physics: Pythia errors go to stderr (stdout stays clean for the CLI).
_OUTPUT_SETTINGS = ("Print:useErrorStream = on", "Print:quiet = on")


@dataclass(frozen=True)
class JetCuts:
    pt_min: float
    pt_max: float
    eta_max: float


class JetSample:
    """What the Pythia jet tasks' configs (quark/gluon, top/QCD) share: a count of jets, the pT and
    eta window, and JSON in and out (the config is what the file's attributes and a run log)."""

    n_jets: int
    pt_min: float
    pt_max: float
    eta_max: float

    @property
    def n_images(self) -> int:
        """Images in the file (every task's config has this count)."""
        return self.n_jets

    @property
    def cuts(self) -> JetCuts:
        return JetCuts(self.pt_min, self.pt_max, self.eta_max)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        return cls(**data)


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


@functools.lru_cache(maxsize=None)
def jet_definition(radius: float) -> Any:
    """Anti-kt with ``radius``; FastJet's banner muted."""
    import fastjet
    import fastjet._swig

    # FastJet prints its banner on fd 1 the first time it clusters; a null stream mutes it.
    fastjet._swig.ClusterSequence.set_fastjet_banner_stream(None)
    return fastjet.JetDefinition(fastjet.antikt_algorithm, radius)


def kinematics(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pT, eta, phi); pT = 0 gives eta +-inf / nan, which the imager drops."""
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        eta = np.arcsinh(pz / pt)
    return pt, eta, np.arctan2(py, px)


def offsets(event_of: np.ndarray, n_events: int) -> np.ndarray:
    """Start of each event's entries in a flat array sorted by event."""
    return np.concatenate([[0], np.cumsum(np.bincount(event_of, minlength=n_events))])


class ChargeTable:
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


class EventBatch:
    """One nextBatch worth of events as flat numpy arrays + per-event offsets, with its jets.

    Awkward calls have a fixed cost each, so the record is flattened once and everything else
    is numpy; awkward is only rebuilt for FastJet's jagged input. Flat arrays over all particles:
    ``status``, ``id``, ``px``..``e``, ``event_of``; over final-state particles: ``pid``, ``pt``,
    ``eta``, ``phi`` (``offsets`` per event); over jets: ``jet_pt``, ``jet_eta``, ``jet_phi``,
    ``jet_mass`` (``jet_offsets``).
    """

    def __init__(self, batch: Any, jet_radius: float, jet_pt_min: float) -> None:
        import awkward as ak
        import fastjet

        self.n_events = n = len(batch)
        self.record = prt = batch.prt
        counts = ak.to_numpy(ak.num(prt))
        self.event_of = event_of = np.repeat(np.arange(n), counts)
        self.status = ak.to_numpy(ak.flatten(prt.status))
        self.id = pid = ak.to_numpy(ak.flatten(prt.id))
        self.all_px, self.all_py, self.all_pz, e = (ak.to_numpy(ak.flatten(prt.p[f])) for f in ("px", "py", "pz", "e"))
        px, py, pz = self.all_px, self.all_py, self.all_pz

        self.final = final = self.status > 0
        self.pid = pid[final]
        self.pt, self.eta, self.phi = kinematics(px[final], py[final], pz[final])
        self.offsets = offsets(event_of[final], n)

        visible = final & ~np.isin(np.abs(pid), NEUTRINOS)
        four_vectors = ak.zip({"px": px[visible], "py": py[visible], "pz": pz[visible], "E": e[visible]})
        inputs = ak.unflatten(four_vectors, np.bincount(event_of[visible], minlength=n))
        jets = fastjet.ClusterSequence(inputs, jet_definition(jet_radius)).inclusive_jets(min_pt=jet_pt_min)
        jpx, jpy, jpz, je = (ak.to_numpy(ak.flatten(jets[f])) for f in ("px", "py", "pz", "E"))
        self.jet_pt, self.jet_eta, self.jet_phi = kinematics(jpx, jpy, jpz)
        self.jet_mass = np.sqrt(np.clip(je**2 - jpx**2 - jpy**2 - jpz**2, 0.0, None))
        self.jet_offsets = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(jets)))])


@dataclass
class CollectedJets:
    """A shard's jets in generation order, and the events it took."""

    images: np.ndarray  # (n, H, W, C) float32
    pt: np.ndarray
    m0: np.ndarray  # particle-level jet mass
    eta: np.ndarray  # jet axis
    n_events: int
    seconds_images: float


@dataclass(frozen=True)
class EventLoop:
    """How a task turns Pythia events into jets: ``make_batch(raw)`` flattens a nextBatch,
    ``select(batch, event)`` gives the event's chosen jet indices (global, in order),
    ``image(batch, event, jet, charge)`` draws one jet. Batches start at ``first_yield`` jets
    per event and stay within ``batch_range``."""

    make_batch: Callable[[Any], EventBatch]
    select: Callable[[Any, int], Iterable[int]]
    image: Callable[[Any, int, int, np.ndarray], np.ndarray]
    batch_range: tuple[int, int]
    first_yield: float
    max_events_without_jet: int


def collect_jets(pythia: Any, n_jets: int, loop: EventLoop, cuts: JetCuts) -> CollectedJets:
    """The first ``n_jets`` selected jets (and their images) of a freshly seeded Pythia."""
    charges = ChargeTable(pythia.particleData)
    images: list[np.ndarray] = []
    pts: list[float] = []
    masses: list[float] = []
    etas: list[float] = []
    n_events = 0
    image_seconds = 0.0
    while len(pts) < n_jets:
        if not pts and n_events >= loop.max_events_without_jet:
            raise RuntimeError(f"no jet passed the cuts {cuts} in {n_events} events; "
                               "check the pT window, |eta| cut and pthat_min")
        # Batch size follows the jet yield so far (the event sequence, hence the output, does
        # not depend on it); bigger batches amortise the fixed cost of each awkward call.
        per_event = len(pts) / n_events if pts else loop.first_yield
        size = int(np.clip(1.1 * (n_jets - len(pts)) / per_event, *loop.batch_range))
        raw = pythia.nextBatch(size)
        if len(raw) == 0:
            raise RuntimeError("Pythia returned no events (see its errors on stderr)")
        n_events += len(raw)
        ev = loop.make_batch(raw)
        charge = charges(ev.pid)
        for event in range(ev.n_events):
            for jet in loop.select(ev, event):
                t0 = time.perf_counter()
                images.append(loop.image(ev, event, jet, charge))
                image_seconds += time.perf_counter() - t0
                pts.append(float(ev.jet_pt[jet]))
                masses.append(float(ev.jet_mass[jet]))
                etas.append(float(ev.jet_eta[jet]))
                if len(pts) == n_jets:
                    break
            if len(pts) == n_jets:
                break
    return CollectedJets(images=np.stack(images).astype(np.float32, copy=False), pt=np.array(pts, np.float32),
                         m0=np.array(masses, np.float32), eta=np.array(etas, np.float32), n_events=n_events,
                         seconds_images=image_seconds)
