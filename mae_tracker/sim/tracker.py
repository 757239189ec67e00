"""Extra tracker channels for jet images: impact parameters and pixel-layer hit maps.

Like the CMS boosted-top E2E images (tracks pT, d0, dz, ECAL, HCAL, BPix1-3), with a toy
response. Inputs are the generator's particles with their production vertices (Pythia's
``vProd``, mm); B hadrons from top decays fly a few mm at these boosts, so their decay products
are displaced, which is what these channels show.

* ``d0`` / ``dz`` [GeV mm]: per pixel, sum over reconstructed tracks (the very tracks of the
  ``Tracks`` channel, same efficiency draw) of track pT x |impact parameter|. Impact parameters
  are those of a straight line from the production vertex (a 1 GeV track bends by ~1 um over
  the mm that matter here) relative to the beam line through the origin:
  ``d0 = (x py - y px) / pT``, ``dz = z - (x px + y py) / pT * pz / pT``, each smeared by a
  Gaussian vertex resolution sigma = a (+) b / pT (defaults: d0 10 um (+) 90 um GeV,
  dz 20 um (+) 120 um GeV, close to CMS's measured track impact-parameter resolutions).
  Stored as absolute values so every pixel is >= 0 like the other channels (the preprocessing
  zero-suppresses negative values). Divide by the ``Tracks`` pixel to get the pT-weighted
  mean |d0| of a pixel: prompt tracks give tens of um, B-hadron daughters hundreds.
* ``BPix1..3`` [hits]: number of hits in each barrel pixel layer (radii 44, 73, 102 mm, the
  CMS Run-1 barrel pixel detector), binned at the hit position as seen from the origin:
  a charged particle made at transverse radius r0 < R crosses layer R on a straight line
  plus its bending in the 3.8 T field (lateral offset s^2 / (2 rho) over the path s,
  rho = pT / (0.3 B)); particles curling up before R (pT < 0.3 B R / 2) or made outside it
  leave no hit; 99 % hit efficiency. All charged particles count, also those below the
  tracking threshold.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from mae_tracker.sim.detector import DetectorSpec, WindowParticles

EXTRA_CHANNELS: tuple[str, ...] = ("d0", "dz", "BPix1", "BPix2", "BPix3")
EXTRA_UNITS: dict[str, str] = {"d0": "sum pT*|d0| [GeV mm]", "dz": "sum pT*|dz| [GeV mm]",
                               "BPix1": "hits", "BPix2": "hits", "BPix3": "hits"}
_NEUTRINOS = (12, 14, 16)


@dataclass(frozen=True)
class TrackerSpec:
    d0_res: float = 0.010  # mm, high-pT limit
    d0_res_pt: float = 0.090  # mm GeV, multiple scattering term (divided by pT)
    dz_res: float = 0.020
    dz_res_pt: float = 0.120
    pixel_radii: tuple[float, ...] = (44.0, 73.0, 102.0)  # mm
    hit_efficiency: float = 0.99
    field: float = 3.8  # T

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["pixel_radii"] = list(self.pixel_radii)
        return out


def tracker_channels(n_extra: int, window: WindowParticles, detector: DetectorSpec, tracker: TrackerSpec, *,
                     px: np.ndarray, py: np.ndarray, pz: np.ndarray, vx: np.ndarray, vy: np.ndarray,
                     vz: np.ndarray, charge: np.ndarray, pid: np.ndarray, jet_eta: float, jet_phi: float,
                     rng: np.random.Generator) -> np.ndarray:
    """The first ``n_extra`` of :data:`EXTRA_CHANNELS` as (H, W, n_extra) float32.

    Per-particle arrays cover the same particles (same order) that were passed to
    :func:`mae_tracker.sim.detector.detector_image`, which returned ``window``.
    """
    height, width = detector.height, detector.width
    out = np.zeros((height, width, n_extra), np.float32)
    if n_extra == 0:
        return out
    n_pix = height * width
    inside = window.inside
    pix = window.row * width + window.col
    t = window.tracked
    tpx, tpy, tpz = px[inside][t], py[inside][t], pz[inside][t]
    tvx, tvy, tvz = vx[inside][t], vy[inside][t], vz[inside][t]
    pt = np.hypot(tpx, tpy)
    d0 = (tvx * tpy - tvy * tpx) / pt
    dz = tvz - (tvx * tpx + tvy * tpy) / pt * (tpz / pt)
    d0 = d0 + np.hypot(tracker.d0_res, tracker.d0_res_pt / pt) * rng.standard_normal(pt.size)
    dz = dz + np.hypot(tracker.dz_res, tracker.dz_res_pt / pt) * rng.standard_normal(pt.size)
    for k, value in enumerate((d0, dz)[:n_extra]):
        out[..., k] = np.bincount(pix[t], weights=pt * np.abs(value), minlength=n_pix).reshape(height, width)
    if n_extra <= 2:
        return out

    charged = (charge != 0) & ~np.isin(np.abs(pid), _NEUTRINOS)
    cpx, cpy, cpz = px[charged], py[charged], pz[charged]
    cvx, cvy, cvz, q = vx[charged], vy[charged], vz[charged], charge[charged]
    cpt = np.hypot(cpx, cpy)
    ux, uy = cpx / cpt, cpy / cpt
    r0_sq = cvx**2 + cvy**2
    along = cvx * ux + cvy * uy
    for k, radius in enumerate(tracker.pixel_radii[: n_extra - 2]):
        rho = cpt / (0.3 * tracker.field) * 1000.0  # mm
        reach = (r0_sq < radius**2) & (cpt > 0.3 * tracker.field * radius / 2000.0)
        reach &= rng.random(cpt.size) < tracker.hit_efficiency
        s = -along + np.sqrt(np.clip(along**2 - (r0_sq - radius**2), 0.0, None))  # path to the layer, mm
        hx, hy = cvx + s * ux, cvy + s * uy
        hz = cvz + s * cpz / cpt
        bend = -np.sign(q) * s**2 / (2 * rho * radius)  # lateral offset / radius
        eta = np.arcsinh(hz / radius)
        phi = np.arctan2(hy, hx) + bend
        row_f = (eta - jet_eta) / detector.cell_size + height / 2
        col_f = (np.mod(phi - jet_phi + np.pi, 2 * np.pi) - np.pi) / detector.cell_size + width / 2
        ok = reach & (row_f >= 0) & (row_f < height) & (col_f >= 0) & (col_f < width)
        hits = row_f[ok].astype(np.int64) * width + col_f[ok].astype(np.int64)
        out[..., 2 + k] = np.bincount(hits, minlength=n_pix).reshape(height, width)
    return out
