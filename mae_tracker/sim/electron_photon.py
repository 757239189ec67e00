"""Single electrons vs photons in a CMS-like barrel ECAL (``mae-tracker generate --task electron-photon``).

Written in the CMS E2E electron/photon schema: ``X`` (N, 32, 32, 2) = (energy [GeV], time
[ns]) of 32x32 crystals centred on the most energetic crystal, ``y`` = 1 electron, 0 photon;
per particle also ``pt``, ``eta`` and ``converted`` (truth: the photon converted, or 0).

The model, per particle (a direct particle gun; no event generator is needed for one particle):

* Gun: pT uniform in [pt_min, pt_max] (default 40-60 GeV, around the 50 GeV of the CMS open
  samples SinglePhotonPt50 / SingleElectronPt50), |eta| uniform below 1.44 (the barrel),
  phi uniform; from the origin.
* Tracker material: x/X0(eta) = 0.35 cosh(eta) (1 + 0.3 eta^2) radiation lengths between
  r = 40 and 1100 mm, spread evenly in radius (0.35 X0 at eta = 0 rising to ~1.3 at 1.44,
  the shape of the CMS material budget).
* Photon conversions: probability 1 - exp(-7/9 x/X0) (24 % at eta = 0 to 63 % at 1.44, the
  20-60 % quoted by CMS);
  the conversion point follows the material; the pair shares the energy uniformly.
* Electrons (the gun's and conversion pairs) radiate bremsstrahlung in ``BREM_STEPS`` steps
  of material: over t X0 the electron keeps a fraction z with -ln z ~ Gamma(t / ln 2)
  (Bethe-Heitler); each step's lost energy is a photon emitted along the electron's current
  direction. In the 3.8 T field the electron bends in phi with radius rho = pT / (0.3 B),
  more so as it loses energy, so brem spreads the energy in phi between the straight line
  and the electron's impact (brem photons do not convert again: second order).
* Showers in PbWO4 (X0 = 8.9 mm, Moliere radius 21.9 mm, critical energy 8.5 MeV, 25.8 X0
  deep) from each particle reaching the ECAL at r = 1290 mm: energy deposited in spots with a
  longitudinal gamma profile (b = 0.5, t_max = ln(E / Ec) - 0.5 for e, + 0.5 for gamma;
  what passes 25.8 X0 leaks out the back), radial profile core + tail
  (f(r) ~ 2 r R^2 / (r^2 + R^2)^2 with 85 % in a core of R_C = (0.12 + 0.10 t/t_max) R_M and
  the rest in R_T = (0.8 + 0.3 t/t_max) R_M), and sampling fluctuations (spot energies
  gamma-distributed so that the total fluctuates by 2.8 %/sqrt(E)). A lateral offset d at the
  ECAL face is d / 1290 mm in eta and in phi; crystals are 0.0174 x 0.0174.
* Per crystal: 40 MeV Gaussian noise, zero suppression below 3 sigma (0.12 GeV).
* Time: time of flight from the collision to the crystal (R cosh(eta) / c), smeared by the
  ECAL timing resolution sigma_t = 1.4 ns GeV / E (+) 0.1 ns, clipped to the 25 ns readout
  window; 0 where a crystal has no energy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mae_tracker.data.tasks import TASKS
from mae_tracker.sim.shards import ShardJob, file_attrs, write_balanced

ELECTRON, PHOTON = 1, 0
TASK = TASKS["electron-photon"]
SIZE = 32
CANVAS = 96  # crystals simulated around the impact before cropping on the seed
CRYSTAL = 0.0174
R_ECAL = 1290.0  # mm
X0_MM, MOLIERE_MM, CRITICAL_GEV, DEPTH_X0 = 8.9, 21.9, 0.0085, 25.8
TRACKER_R = (40.0, 1100.0)  # mm
BREM_STEPS = 8
SPOTS_PER_GEV, MIN_SPOTS, MAX_SPOTS = 8, 8, 600
CORE_FRACTION = 0.85
STOCHASTIC = 0.028
NOISE, THRESHOLD = 0.04, 0.12  # GeV per crystal
TIME_N, TIME_C, TIME_WINDOW = 1.4, 0.1, 25.0  # ns GeV, ns, ns
C_MM_PER_NS = 299.792458
SHARD_JETS = 500
SEED_SALT = 11


@dataclass
class EGammaConfig:
    """Everything that determines an electron/photon file (stored as JSON in its attributes)."""

    n_particles: int = 10_000  # one particle (one shower image) each; `generate --n-jets` sets it
    seed: int = 1
    pt_min: float = 40.0
    pt_max: float = 60.0
    eta_max: float = 1.44
    material: float = 0.35  # x/X0 of the tracker at eta = 0
    field: float = 3.8  # T

    def __post_init__(self) -> None:
        problems = []
        if self.n_particles < 2 or self.n_particles % 2:
            problems.append(f"n_particles must be even and >= 2 (balanced classes), got {self.n_particles}")
        if self.seed < 0:
            problems.append(f"seed must be >= 0, got {self.seed}")
        if not 0 < self.pt_min < self.pt_max:
            problems.append(f"need 0 < pt_min < pt_max, got {self.pt_min}, {self.pt_max}")
        if not 0 < self.eta_max <= 1.48:
            problems.append(f"eta_max must be in (0, 1.48] (the ECAL barrel), got {self.eta_max}")
        if self.material < 0 or self.field < 0:
            problems.append("material and field must be >= 0")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def n_images(self) -> int:
        """Images in the file (every task's config has this count)."""
        return self.n_particles

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def material_x0(self, eta: float) -> float:
        return self.material * math.cosh(eta) * (1 + 0.3 * eta * eta)


@dataclass
class EGammaShard:
    label: int
    shard: int
    images: np.ndarray
    pt: np.ndarray
    eta: np.ndarray
    converted: np.ndarray
    n_events: int


def _electron_path(energy: float, charge: float, r_start: float, y_start: float, beta_start: float,
                   eta: float, config: EGammaConfig, rng: np.random.Generator) -> list[tuple[float, float]]:
    """(energy, lateral offset at the ECAL [mm]) of an electron and its brem photons.

    Transverse small-angle geometry: ``y`` is the lateral offset from the gun's straight line
    and ``beta`` the direction angle; both start where the electron is made (radius r_start).
    """
    cosh = math.cosh(eta)
    r_in, r_out = TRACKER_R
    x_total = config.material_x0(eta)
    edges = np.linspace(max(r_start, r_in), r_out, BREM_STEPS + 1)
    deposits = []
    y, beta, e, r = y_start, beta_start, energy, r_start

    def move(to: float) -> None:  # bend with the current energy from r to ``to``
        nonlocal y, beta, r
        inv_rho = -charge * 0.3 * config.field / (e / cosh) / 1000.0  # 1/mm, signed
        dr = to - r
        y += beta * dr + 0.5 * inv_rho * dr * dr
        beta += inv_rho * dr
        r = to

    for r0, r1 in zip(edges[:-1], edges[1:]):
        move(0.5 * (r0 + r1))  # radiate in the middle of each step
        t = x_total * (r1 - r0) / (r_out - r_in)
        keep = math.exp(-rng.gamma(t / math.log(2))) if t > 0 else 1.0
        photon = e * (1 - keep)
        if photon > 1e-3:
            deposits.append((photon, y + beta * (R_ECAL - r)))
        e *= keep
        move(r1)
    inv_rho = -charge * 0.3 * config.field / (e / cosh) / 1000.0
    dr = R_ECAL - r_out
    deposits.append((e, y + beta * dr + 0.5 * inv_rho * dr * dr))
    return deposits


def _shower(canvas: np.ndarray, energy: float, offset_phi: float, offset_eta: float, is_photon: bool,
            rng: np.random.Generator) -> None:
    """Adds one EM shower (energy [GeV], impact offset in crystals) to ``canvas`` (CANVAS x CANVAS)."""
    n = int(np.clip(energy * SPOTS_PER_GEV, MIN_SPOTS, MAX_SPOTS))
    t_max = max(math.log(energy / CRITICAL_GEV) + (0.5 if is_photon else -0.5), 0.5)
    b = 0.5
    depth = rng.gamma(b * t_max + 1, 1 / b, n)
    # sampling fluctuations: the n spot energies sum to E with relative spread STOCHASTIC/sqrt(E)
    k = energy / (n * STOCHASTIC**2)
    spot = energy / n * rng.gamma(k, 1 / k, n)
    spot[depth > DEPTH_X0] = 0.0  # longitudinal leakage
    tau = depth / t_max
    core = rng.random(n) < CORE_FRACTION
    radius = np.where(core, 0.12 + 0.10 * tau, 0.8 + 0.3 * tau) * MOLIERE_MM
    u = np.minimum(rng.random(n), 0.995)
    r = radius * np.sqrt(u / (1 - u))
    angle = rng.uniform(0, 2 * np.pi, n)
    scale = 1.0 / (R_ECAL * CRYSTAL)  # mm -> crystals
    col = CANVAS / 2 + offset_phi + r * np.cos(angle) * scale
    row = CANVAS / 2 + offset_eta + r * np.sin(angle) * scale
    ok = (row >= 0) & (row < CANVAS) & (col >= 0) & (col < CANVAS)
    np.add.at(canvas, (row[ok].astype(np.int64), col[ok].astype(np.int64)), spot[ok])


def particle_image(label: int, pt: float, eta: float, config: EGammaConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """(32, 32, 2) image of one electron (label 1) or photon (0), and whether it converted."""
    energy = pt * math.cosh(eta)
    sub_eta, sub_phi = rng.random(2) - 0.5  # impact point within its crystal
    deposits: list[tuple[float, float, bool]] = []  # energy, lateral offset [mm], is_photon
    converted = False
    if label == ELECTRON:
        charge = rng.choice((-1.0, 1.0))
        path = _electron_path(energy, charge, 0.0, 0.0, 0.0, eta, config, rng)
        deposits += [(e, y, i < len(path) - 1) for i, (e, y) in enumerate(path)]
    else:
        x_total = config.material_x0(eta)
        p_convert = 1 - math.exp(-7 / 9 * x_total)
        if rng.random() < p_convert:
            converted = True
            fraction = -math.log(1 - rng.random() * p_convert) / (7 / 9) / x_total  # of the material
            r_conv = TRACKER_R[0] + fraction * (TRACKER_R[1] - TRACKER_R[0])
            share = rng.random()
            for e, charge in ((share * energy, -1.0), ((1 - share) * energy, 1.0)):
                path = _electron_path(e, charge, r_conv, 0.0, 0.0, eta, config, rng)
                deposits += [(de, y, i < len(path) - 1) for i, (de, y) in enumerate(path)]
        else:
            deposits.append((energy, 0.0, True))
    canvas = np.zeros((CANVAS, CANVAS))
    to_crystals = 1.0 / (R_ECAL * CRYSTAL)
    for e, y, is_photon in deposits:
        if e > 1e-3:
            _shower(canvas, e, sub_phi + y * to_crystals, sub_eta, is_photon, rng)
    seed_row, seed_col = np.unravel_index(int(np.argmax(canvas)), canvas.shape)
    r0 = int(np.clip(seed_row - SIZE // 2, 0, CANVAS - SIZE))
    c0 = int(np.clip(seed_col - SIZE // 2, 0, CANVAS - SIZE))
    crop = canvas[r0:r0 + SIZE, c0:c0 + SIZE] + NOISE * rng.standard_normal((SIZE, SIZE))
    crop = np.where(crop > THRESHOLD, crop, 0.0)
    hit = crop > 0
    sigma_t = np.hypot(TIME_N / np.where(hit, crop, 1.0), TIME_C)
    time = R_ECAL * math.cosh(eta) / C_MM_PER_NS + sigma_t * rng.standard_normal((SIZE, SIZE))
    time = np.where(hit, np.clip(time, 1e-3, TIME_WINDOW), 0.0)
    return np.stack([crop, time], axis=-1).astype(np.float32), converted


def generate_shard(job: ShardJob) -> EGammaShard:
    """``job.n_images`` particles of class ``job.label`` from the shard's own random stream."""
    config: EGammaConfig = job.config
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(SEED_SALT, job.label, job.shard)))
    n = job.n_images
    images = np.empty((n, SIZE, SIZE, 2), np.float32)
    pts = rng.uniform(config.pt_min, config.pt_max, n)
    etas = rng.uniform(-config.eta_max, config.eta_max, n)
    converted = np.zeros(n, np.float32)
    for i in range(n):
        images[i], conv = particle_image(job.label, float(pts[i]), float(etas[i]), config, rng)
        converted[i] = conv
    return EGammaShard(job.label, job.shard, images, pts.astype(np.float32), etas.astype(np.float32),
                       converted, n_events=n)


def _attrs(config: EGammaConfig, details: dict[str, Any]) -> dict[str, Any]:
    model = {"crystal": CRYSTAL, "r_ecal_mm": R_ECAL, "x0_mm": X0_MM, "moliere_mm": MOLIERE_MM,
             "critical_gev": CRITICAL_GEV, "depth_x0": DEPTH_X0, "tracker_r_mm": list(TRACKER_R),
             "brem_steps": BREM_STEPS, "core_fraction": CORE_FRACTION, "stochastic": STOCHASTIC,
             "noise_gev": NOISE, "threshold_gev": THRESHOLD, "time_resolution": [TIME_N, TIME_C],
             "time_window_ns": TIME_WINDOW, "image": [SIZE, SIZE], "centred_on": "most energetic crystal"}
    units = {"energy": "E [GeV]", "time": "t [ns] since the collision"}
    generation = {"gun": "direct particle gun, one particle per image", "shard_jets": SHARD_JETS,
                  "n_particles": {"electron": details["n_events"]["1"], "photon": details["n_events"]["0"]}}
    detector = {"name": "ecal-barrel", "height": SIZE, "width": SIZE, "cell_size": CRYSTAL,
                "channels": list(units), "units": units, "model": model}
    return file_attrs(TASK, "cpu", config, channel_units=units, generation=generation, detector=detector)


def generate_egamma_file(config: EGammaConfig, out: Path | str, *, workers: int = 1, progress: bool = True) -> Path:
    """``config.n_particles`` particles (half electrons, half photons, shuffled) into ``out``, atomically."""
    return write_balanced(out, n_images=config.n_particles, seed=config.seed, shard_size=SHARD_JETS, config=config,
                          run=generate_shard, images_key=TASK.images_key, shape=(SIZE, SIZE, 2),
                          extras=("pt", "eta", "converted"), attrs=lambda details: _attrs(config, details),
                          workers=workers, progress=progress)
