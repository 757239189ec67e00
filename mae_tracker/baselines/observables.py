"""Classical jet observables computed from the raw images (as stored) and the file's geometry.

Per channel (named after the file's channel names, lower case):

* ``<ch>_occupied_pixels`` -- pixels with a value > 0 (track-pixel count for ``tracks``);
* ``<ch>_sum``             -- sum of the pixel values (scalar pT sum or energy sum);
* ``<ch>_girth``           -- value-weighted mean distance of the pixels from the jet axis in
  (eta, phi) (the image centre: generators centre each image on its jet axis);
* ``<ch>_ptd``             -- sum of squares / squared sum (pTD-like: 1 for one hot pixel,
  1/n for n equal ones).

Plus ``image_mass``: the invariant mass of the calorimeter pixels as massless particles at their
(eta, phi) (the formula tests/test_top_qcd.py checks the top mass peak with), and ``jet_pt`` when
the file stores it. An empty channel gets 0 for girth and ptd, so every observable is finite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from mae_tracker.data.jetfile import JetFileInfo

# Calorimeter channels (energies) build the image mass; tracks would count charged hadrons twice,
# once as a track and once in HCAL. Used when the file's units do not say which channels are energies.
CALORIMETER_NAMES = ("ecal", "hcal", "energy")
OBSERVABLE_BATCH = 1024  # jets per read while computing observables


@dataclass(frozen=True)
class Geometry:
    """What the observables need to know about a file's pixels."""

    channel_names: tuple[str, ...]
    height: int
    width: int
    cell_size: float  # eta and phi extent of one pixel; 1.0 with girth in pixel units when unknown
    cell_size_known: bool
    energy_channels: tuple[int, ...]  # channels whose values are energies (the image mass)

    @classmethod
    def from_info(cls, info: JetFileInfo) -> "Geometry":
        """Pixel size from the file's ``detector`` attribute (every mae-tracker generator writes
        it) or a ``cell_size`` attribute; which channels are energies from the units, else names."""
        detector = info.attrs.get("detector", {})
        if isinstance(detector, str):
            try:
                detector = json.loads(detector)
            except ValueError:
                detector = {}
        cell = detector.get("cell_size", info.attrs.get("cell_size")) if isinstance(detector, dict) else None
        names = tuple(str(n).lower() for n in info.channel_names)
        units = detector.get("units", {}) if isinstance(detector, dict) else {}
        by_unit = tuple(i for i, n in enumerate(info.channel_names)
                        if str(units.get(n, "")).strip().startswith("E "))
        by_name = tuple(i for i, n in enumerate(names) if n in CALORIMETER_NAMES)
        known = cell is not None and float(cell) > 0
        return cls(channel_names=names, height=info.height, width=info.width,
                   cell_size=float(cell) if known else 1.0, cell_size_known=known,
                   energy_channels=by_unit or by_name)

    def pixel_offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """(d_eta per row, d_phi per column) of the pixel centres from the jet axis; rows are eta.

        The axis is the image centre: the middle of the central pixel for odd sizes, the corner
        shared by the two central pixels for even ones (sim/detector.py's convention)."""
        d_eta = (np.arange(self.height) + 0.5 - self.height / 2) * self.cell_size
        d_phi = (np.arange(self.width) + 0.5 - self.width / 2) * self.cell_size
        return d_eta, d_phi

    @property
    def has_mass(self) -> bool:
        return self.cell_size_known and bool(self.energy_channels)


def observable_names(geometry: Geometry, extras: tuple[str, ...] = ()) -> list[str]:
    """Column order of :func:`compute_observables`."""
    names = [f"{ch}_{kind}" for ch in geometry.channel_names
             for kind in ("occupied_pixels", "sum", "girth", "ptd")]
    if geometry.has_mass:
        names.append("image_mass")
    if "pt" in extras:
        names.append("jet_pt")
    return names


def image_mass(energy: np.ndarray, d_eta: np.ndarray, d_phi: np.ndarray,
               jet_eta: np.ndarray | None = None) -> np.ndarray:
    """Invariant mass of (N, H, W) pixel energies as massless particles at (eta, phi).

    Pixel pT = E / cosh(eta). Without the jet's eta (quark/gluon files do not store it) the jet
    is taken at eta = 0, i.e. the values are read as pT in the jet's frame: masses then come
    out ~cosh(eta_jet) too high for jets away from eta = 0 (|eta| < 1.5: up to x2.4).
    """
    eta0 = np.zeros(len(energy)) if jet_eta is None else np.asarray(jet_eta, dtype=np.float64)
    energy = energy.astype(np.float64)
    pix_eta = eta0[:, None, None] + d_eta[None, :, None]
    pt = energy / np.cosh(pix_eta)
    px = (pt * np.cos(d_phi)[None, None, :]).sum(axis=(1, 2))
    py = (pt * np.sin(d_phi)[None, None, :]).sum(axis=(1, 2))
    pz = (pt * np.sinh(pix_eta)).sum(axis=(1, 2))
    e = energy.sum(axis=(1, 2))
    return np.sqrt(np.clip(e**2 - px**2 - py**2 - pz**2, 0.0, None))


def compute_observables(images: np.ndarray, geometry: Geometry, extras: dict[str, np.ndarray] | None = None
                        ) -> np.ndarray:
    """(N, n_observables) float64 from raw (N, C, H, W) images, columns as :func:`observable_names`.

    ``extras`` are per-jet file datasets: ``pt`` becomes ``jet_pt``, ``eta`` places the image
    mass's pixels at their absolute eta.
    """
    extras = extras or {}
    x = np.asarray(images, dtype=np.float64)
    d_eta, d_phi = geometry.pixel_offsets()
    radius = np.hypot(d_eta[:, None], d_phi[None, :])  # (H, W)
    columns = []
    for c in range(x.shape[1]):
        values = x[:, c]
        total = values.sum(axis=(1, 2))
        safe = np.where(total > 0, total, 1.0)  # empty channel: girth and ptd 0, not 0/0
        columns += [(values > 0).sum(axis=(1, 2)).astype(np.float64), total,
                    np.where(total > 0, (values * radius).sum(axis=(1, 2)) / safe, 0.0),
                    np.where(total > 0, (values**2).sum(axis=(1, 2)) / safe**2, 0.0)]
    if geometry.has_mass:
        energy = x[:, list(geometry.energy_channels)].sum(axis=1)
        columns.append(image_mass(energy, d_eta, d_phi, extras.get("eta")))
    if "pt" in extras:
        columns.append(np.asarray(extras["pt"], dtype=np.float64))
    return np.stack(columns, axis=1)


def observables_of(reader: Any, indices: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(observables (N, K), labels (N,)) of the jets ``indices``, read in batches."""
    keys = tuple(reader.info.extra_keys)
    rows, labels = [], []
    for start in range(0, len(indices), OBSERVABLE_BATCH):
        part = indices[start:start + OBSERVABLE_BATCH]
        images, batch_labels = reader.read(part)
        extras = {k: reader.read_extra(k, part) for k in ("pt", "eta") if k in keys}
        rows.append(compute_observables(images, geometry, extras))
        labels.append(batch_labels)
    width = len(observable_names(geometry, keys))
    if not rows:
        return np.zeros((0, width)), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(labels)
