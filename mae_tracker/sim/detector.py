"""A simple calorimeter + tracker response that turns particle-level jets into images.

The images follow the CMS end-to-end (E2E) quark/gluon convention: three channels,
channels last, a square window in (eta, phi) centred on the jet axis.

* ``Tracks`` -- transverse momentum [GeV] of reconstructed charged particles
  (tracking efficiency, pT threshold, no smearing: tracker resolution is far better than
  the pixel size matters for).
* ``ECAL``   -- energy [GeV] deposited by photons and electrons, smeared per cell with a
  stochastic and a constant term, plus Gaussian noise, then zero-suppressed.
* ``HCAL``   -- energy [GeV] of hadrons (charged and neutral; charged hadrons leave a track
  *and* an HCAL deposit) summed in coarser towers of ``hcal_tower`` x ``hcal_tower``
  pixels, smeared, noise, zero-suppressed per tower, then spread evenly over the tower's
  pixels so that all channels share the same (H, W) and the tower energy is conserved.

Muons leave a track only; neutrinos leave nothing. Unhadronised partons (only when a user
switches hadronisation off) are treated like hadrons. Calorimeter channels store energy,
not pT, because the CMS E2E files store energy-like deposits for ECAL/HCAL and pT for
tracks; this module is consistent with that everywhere.

Pixel geometry: row index = eta, column index = phi. The jet axis sits at the centre of
the image: for an odd size (125) that is the middle of pixel 62; for an even size (32) it
is the corner shared by pixels 15 and 16, and a particle exactly on the axis falls into
pixel ``size // 2``. Calorimeter towers are aligned with the image grid. Detector
acceptance limits (e.g. tracker |eta| < 2.5) are deliberately not modelled.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

CHANNELS: tuple[str, ...] = ("Tracks", "ECAL", "HCAL")
CHANNEL_UNITS: dict[str, str] = {"Tracks": "pT [GeV]", "ECAL": "E [GeV]", "HCAL": "E [GeV]"}

_NEUTRINOS = (12, 14, 16)
_ECAL_IDS = (11, 22)  # electrons and photons shower electromagnetically
_MUON = 13


@dataclass(frozen=True)
class DetectorSpec:
    """Geometry and response of the toy detector (all energies in GeV).

    Resolutions follow sigma/E = stochastic/sqrt(E) (+) constant, applied to the summed
    energy of each ECAL cell / HCAL tower. Noise is Gaussian per ECAL cell / HCAL tower;
    zero suppression removes cells (towers) whose measured energy is below the threshold.
    """

    name: str
    height: int
    width: int
    cell_size: float  # eta and phi extent of one pixel
    tracking_efficiency: float = 0.9
    track_pt_min: float = 0.5
    ecal_stochastic: float = 0.028  # CMS ECAL barrel: 2.8 %/sqrt(E)
    ecal_constant: float = 0.003
    ecal_noise: float = 0.04  # per cell; CMS barrel crystal ~40 MeV
    ecal_threshold: float = 0.12  # zero suppression at 3 sigma of the noise
    hcal_stochastic: float = 1.0  # CMS HCAL ~100 %/sqrt(E) (+) 5 %
    hcal_constant: float = 0.05
    hcal_noise: float = 0.2  # per tower
    hcal_threshold: float = 0.6
    hcal_tower: int = 5  # tower edge in pixels (CMS: 5x5 ECAL crystals per HCAL tower)

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1 or self.cell_size <= 0:
            raise ValueError(f"detector {self.name!r}: need positive height, width and cell_size")
        if self.hcal_tower < 1 or self.height % self.hcal_tower or self.width % self.hcal_tower:
            raise ValueError(f"detector {self.name!r}: hcal_tower={self.hcal_tower} must divide "
                             f"the image size {self.height}x{self.width}")
        if not 0.0 <= self.tracking_efficiency <= 1.0:
            raise ValueError(f"detector {self.name!r}: tracking_efficiency must be in [0, 1]")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Image shape (H, W, C), channels last as in the E2E files."""
        return (self.height, self.width, len(CHANNELS))

    def ideal(self) -> "DetectorSpec":
        """Same geometry, perfect response: every track kept, no smearing, no noise."""
        return dataclasses.replace(
            self, name=f"{self.name}-ideal", tracking_efficiency=1.0, track_pt_min=0.0,
            ecal_stochastic=0.0, ecal_constant=0.0, ecal_noise=0.0, ecal_threshold=0.0,
            hcal_stochastic=0.0, hcal_constant=0.0, hcal_noise=0.0, hcal_threshold=0.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (fields plus channel names, units and axes)."""
        out: dict[str, Any] = dataclasses.asdict(self)
        out.update(channels=list(CHANNELS), units=dict(CHANNEL_UNITS), axes=["eta", "phi", "channel"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DetectorSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


PRESETS: dict[str, DetectorSpec] = {
    # Same shape as the CMS E2E quark/gluon files: 125x125 ECAL crystals of 0.0174.
    "e2e": DetectorSpec(name="e2e", height=125, width=125, cell_size=0.0174, hcal_tower=5),
    # CPU-friendly: 32x32 = 64 patches of 4x4; 32 * 0.05 = 1.6 wide so an R=0.4 jet fits
    # with margin. A 0.05 cell covers ~8 crystals, so the per-cell ECAL noise is larger
    # (0.04 * sqrt(8) ~ 0.1); 2x2-pixel towers are 0.1 wide, close to CMS's 0.087.
    "cpu": DetectorSpec(name="cpu", height=32, width=32, cell_size=0.05, ecal_noise=0.1,
                        ecal_threshold=0.3, hcal_tower=2),
}
DEFAULT_PRESET = "cpu"


def get_detector(detector: DetectorSpec | str) -> DetectorSpec:
    """A preset by name, or the spec itself."""
    if isinstance(detector, DetectorSpec):
        return detector
    try:
        return PRESETS[detector]
    except KeyError:
        raise ValueError(f"unknown detector preset {detector!r}; choose from {sorted(PRESETS)}") from None


@functools.lru_cache(maxsize=1)
def _particle_data() -> Any:
    import pythia8mc  # only needed when the caller gives no charges

    return pythia8mc.Pythia("", False).particleData


def charges_from_pid(pid: np.ndarray) -> np.ndarray:
    """Electric charge (units of e) for PDG ids, from Pythia's particle table."""
    pid = np.asarray(pid, dtype=np.int64)
    unique, inverse = np.unique(pid, return_inverse=True)
    table = _particle_data()
    charge = np.array([table.charge(int(i)) if table.isParticle(int(i)) else 0.0 for i in unique])
    return charge[inverse].reshape(pid.shape)


def _smear(energy: np.ndarray, stochastic: float, constant: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative Gaussian smearing of positive entries; measured energy stays >= 0."""
    hit = energy > 0
    if (stochastic == 0 and constant == 0) or not hit.any():
        return energy
    e = energy[hit]
    rel = np.sqrt(stochastic**2 / e + constant**2)
    energy = energy.copy()
    energy[hit] = np.clip(e * (1.0 + rel * rng.standard_normal(e.size)), 0.0, None)
    return energy


def _measure(energy: np.ndarray, stochastic: float, constant: float, noise: float, threshold: float,
             rng: np.random.Generator) -> np.ndarray:
    """Smearing, electronic noise on every cell, then zero suppression."""
    energy = _smear(energy, stochastic, constant, rng)
    if noise > 0:
        energy = energy + noise * rng.standard_normal(energy.shape)
    return np.where(energy > threshold, energy, 0.0)


def particles_to_image(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, pid: np.ndarray, *,
                       jet_eta: float, jet_phi: float, detector: DetectorSpec | str = DEFAULT_PRESET,
                       rng: np.random.Generator | None = None,
                       charge: np.ndarray | None = None) -> np.ndarray:
    """Detector image (H, W, 3) float32 of final-state particles around a jet axis.

    ``pt`` [GeV], ``eta`` (pseudorapidity; rapidity works too, it is only a coordinate),
    ``phi`` [rad] and ``pid`` (PDG ids) are 1-d arrays of the same length: pass all visible
    final-state particles of the event, the window crop is done here. ``charge`` defaults to
    Pythia's particle table. Pass a seeded ``rng`` for reproducible images (tracking
    inefficiency, smearing and noise are random); ``None`` uses fresh OS entropy.
    """
    return detector_image(pt, eta, phi, pid, jet_eta=jet_eta, jet_phi=jet_phi, detector=detector,
                          rng=rng, charge=charge)[0]


@dataclass
class WindowParticles:
    """Which input particles the image used, for extra channels built on the same tracks.

    ``inside`` (bool, one per input particle) selects the particles in the window; ``row``,
    ``col`` and ``tracked`` (bool: reconstructed as a track, same random draw as the
    ``Tracks`` channel) are per selected particle.
    """

    inside: np.ndarray
    row: np.ndarray
    col: np.ndarray
    tracked: np.ndarray


def detector_image(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray, pid: np.ndarray, *,
                   jet_eta: float, jet_phi: float, detector: DetectorSpec | str = DEFAULT_PRESET,
                   rng: np.random.Generator | None = None,
                   charge: np.ndarray | None = None) -> tuple[np.ndarray, WindowParticles]:
    """:func:`particles_to_image` plus the particles it used (same random draws, same image)."""
    spec = get_detector(detector)
    rng = np.random.default_rng() if rng is None else rng
    pt = np.asarray(pt, dtype=np.float64).ravel()
    eta = np.asarray(eta, dtype=np.float64).ravel()
    phi = np.asarray(phi, dtype=np.float64).ravel()
    pid = np.asarray(pid, dtype=np.int64).ravel()
    if not (pt.size == eta.size == phi.size == pid.size):
        raise ValueError("pt, eta, phi and pid must have the same length")
    charge = charges_from_pid(pid) if charge is None else np.asarray(charge, dtype=np.float64).ravel()
    if charge.size != pt.size:
        raise ValueError("charge must have the same length as pt")

    height, width, tower = spec.height, spec.width, spec.hcal_tower
    # Position relative to the jet axis, phi wrapped into [-pi, pi).
    row_f = (eta - jet_eta) / spec.cell_size + height / 2
    dphi = np.mod(phi - jet_phi + np.pi, 2 * np.pi) - np.pi
    col_f = dphi / spec.cell_size + width / 2
    inside = np.isfinite(row_f) & np.isfinite(col_f) & (pt > 0)
    inside &= (row_f >= 0) & (row_f < height) & (col_f >= 0) & (col_f < width)
    row = row_f[inside].astype(np.int64)
    col = col_f[inside].astype(np.int64)
    pt, eta, charge = pt[inside], eta[inside], charge[inside]
    abs_id = np.abs(pid[inside])
    energy = pt * np.cosh(eta)  # massless approximation; a calorimeter sees E
    pixel = row * width + col
    n_pix = height * width

    charged = (charge != 0) & ~np.isin(abs_id, _NEUTRINOS)
    tracked = charged & (pt > spec.track_pt_min)
    if spec.tracking_efficiency < 1.0:
        tracked &= rng.random(pt.size) < spec.tracking_efficiency
    tracks = np.bincount(pixel[tracked], weights=pt[tracked], minlength=n_pix)

    to_ecal = np.isin(abs_id, _ECAL_IDS)
    ecal = np.bincount(pixel[to_ecal], weights=energy[to_ecal], minlength=n_pix)
    ecal = _measure(ecal, spec.ecal_stochastic, spec.ecal_constant, spec.ecal_noise,
                    spec.ecal_threshold, rng)

    to_hcal = ~to_ecal & (abs_id != _MUON) & ~np.isin(abs_id, _NEUTRINOS)
    tower_w = width // tower
    tower_idx = (row[to_hcal] // tower) * tower_w + col[to_hcal] // tower
    towers = np.bincount(tower_idx, weights=energy[to_hcal], minlength=(height // tower) * tower_w)
    towers = _measure(towers, spec.hcal_stochastic, spec.hcal_constant, spec.hcal_noise,
                      spec.hcal_threshold, rng)
    towers = towers.reshape(height // tower, tower_w) / (tower * tower)
    hcal = np.repeat(np.repeat(towers, tower, axis=0), tower, axis=1)

    image = np.empty((height, width, len(CHANNELS)), dtype=np.float32)
    image[..., 0] = tracks.reshape(height, width)
    image[..., 1] = ecal.reshape(height, width)
    image[..., 2] = hcal
    return image, WindowParticles(inside=inside, row=row, col=col, tracked=tracked)
