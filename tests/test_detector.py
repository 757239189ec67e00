"""Unit tests of the particle -> detector image step (no event generation)."""

import dataclasses
import json

import numpy as np
import pytest

from mae_tracker.sim.detector import (CHANNELS, PRESETS, DetectorSpec, charges_from_pid,
                                       particles_to_image)

TRACKS, ECAL, HCAL = range(3)


def one(pid, *, pt=50.0, eta=0.3, phi=1.0, jet_eta=0.3, jet_phi=1.0, preset="e2e", ideal=True, seed=0):
    spec = PRESETS[preset].ideal() if ideal else PRESETS[preset]
    return particles_to_image([pt], [eta], [phi], [pid], jet_eta=jet_eta, jet_phi=jet_phi,
                              detector=spec, rng=np.random.default_rng(seed))


def nonzero_pixels(image, channel):
    return [tuple(int(v) for v in ij) for ij in np.argwhere(image[..., channel] > 0)]


def test_presets_shapes():
    assert CHANNELS == ("Tracks", "ECAL", "HCAL")
    assert PRESETS["e2e"].shape == (125, 125, 3) and PRESETS["e2e"].cell_size == pytest.approx(0.0174)
    cpu = PRESETS["cpu"]
    assert cpu.shape == (32, 32, 3) and (cpu.height // 4) * (cpu.width // 4) == 64
    # an R=0.4 jet fits inside the window
    assert cpu.height * cpu.cell_size / 2 > 0.4 and PRESETS["e2e"].height * 0.0174 / 2 > 0.4
    assert json.loads(json.dumps(cpu.to_dict()))["channels"] == list(CHANNELS)
    assert DetectorSpec.from_dict(cpu.to_dict()) == cpu
    with pytest.raises(ValueError):
        DetectorSpec(name="bad", height=32, width=32, cell_size=0.05, hcal_tower=5)


def test_charges_from_pid():
    np.testing.assert_allclose(charges_from_pid(np.array([211, -211, 22, 11, -11, 2112, 130, 2212, 12])),
                               [1, -1, 0, -1, 1, 0, 0, 1, 0])


@pytest.mark.parametrize("preset,centre", [("e2e", 62), ("cpu", 16)])
def test_charged_pion_at_axis_hits_centre_tracks_and_hcal(preset, centre):
    image = one(211, preset=preset)
    assert image.shape == PRESETS[preset].shape and image.dtype == np.float32
    assert nonzero_pixels(image, TRACKS) == [(centre, centre)]
    assert image[centre, centre, TRACKS] == pytest.approx(50.0)
    assert image[..., ECAL].sum() == 0
    # HCAL: the tower containing the centre, spread evenly over its pixels
    tower = PRESETS[preset].hcal_tower
    hcal = image[..., HCAL]
    assert np.count_nonzero(hcal) == tower * tower
    assert hcal[centre, centre] > 0
    assert hcal.sum() == pytest.approx(50.0 * np.cosh(0.3), rel=1e-5)


def test_photon_ecal_only_neutrino_nowhere_muon_track_only():
    photon = one(22)
    assert nonzero_pixels(photon, ECAL) == [(62, 62)]
    assert photon[..., TRACKS].sum() == 0 and photon[..., HCAL].sum() == 0
    assert one(12).sum() == 0 and one(-14).sum() == 0
    muon = one(13)
    assert nonzero_pixels(muon, TRACKS) == [(62, 62)]
    assert muon[..., ECAL].sum() == 0 and muon[..., HCAL].sum() == 0
    electron = one(11)
    assert electron[..., TRACKS].sum() > 0 and electron[..., ECAL].sum() > 0 and electron[..., HCAL].sum() == 0
    neutron = one(2112)
    assert neutron[..., TRACKS].sum() == 0 and neutron[..., ECAL].sum() == 0 and neutron[..., HCAL].sum() > 0


def test_position_and_phi_wraparound():
    cell = PRESETS["e2e"].cell_size
    # +3 cells in eta -> row 65; +2 cells in phi -> column 64
    image = one(211, eta=0.3 + 3.0 * cell, phi=1.0 + 2.0 * cell)
    assert nonzero_pixels(image, TRACKS) == [(65, 64)]
    # jet at phi ~ +pi, particle just across the boundary at ~ -pi
    image = one(211, phi=-np.pi + 2.5 * cell, jet_phi=np.pi - 0.5 * cell)
    assert nonzero_pixels(image, TRACKS) == [(62, 65)]
    image = one(211, phi=np.pi - 1.5 * cell, jet_phi=-np.pi + 0.5 * cell)
    assert nonzero_pixels(image, TRACKS) == [(62, 60)]
    # outside the window -> dropped
    assert one(211, eta=0.3 + 2.0).sum() == 0


def test_energy_conserved_without_smearing_and_roughly_with_it():
    rng = np.random.default_rng(3)
    n = 400
    pt = rng.exponential(3.0, n) + 0.6
    eta = 0.1 + rng.normal(0, 0.15, n)
    phi = -0.2 + rng.normal(0, 0.15, n)
    pid = rng.choice([211, -211, 321, 22, 22, 130, 2112, 11, 13, 12], n)
    charge = charges_from_pid(pid)
    energy = pt * np.cosh(eta)
    is_ecal = np.isin(np.abs(pid), [11, 22])
    is_hcal = ~is_ecal & ~np.isin(np.abs(pid), [12, 13])
    visible_charged = (charge != 0)
    kw = dict(jet_eta=0.1, jet_phi=-0.2, charge=charge)

    ideal = particles_to_image(pt, eta, phi, pid, detector=PRESETS["e2e"].ideal(), rng=rng, **kw)
    assert ideal[..., TRACKS].sum() == pytest.approx(pt[visible_charged].sum(), rel=1e-5)
    assert ideal[..., ECAL].sum() == pytest.approx(energy[is_ecal].sum(), rel=1e-5)
    assert ideal[..., HCAL].sum() == pytest.approx(energy[is_hcal].sum(), rel=1e-5)

    real = particles_to_image(pt, eta, phi, pid, detector="e2e", rng=np.random.default_rng(1), **kw)
    for c, ref in ((TRACKS, pt[visible_charged].sum()), (ECAL, energy[is_ecal].sum()),
                   (HCAL, energy[is_hcal].sum())):
        assert real[..., c].sum() == pytest.approx(ref, rel=0.2)
    assert real[..., TRACKS].sum() < ideal[..., TRACKS].sum()  # 90 % tracking efficiency


def test_zero_suppression_and_noise():
    spec = PRESETS["e2e"]
    empty = particles_to_image([], [], [], [], jet_eta=0.0, jet_phi=0.0, detector=spec,
                               rng=np.random.default_rng(0))
    # noise alone: only the rare > 3 sigma fluctuations survive, every survivor above threshold
    ecal = empty[..., ECAL]
    assert 0 < np.count_nonzero(ecal) < 0.01 * ecal.size
    assert ecal[ecal > 0].min() > spec.ecal_threshold
    assert (empty >= 0).all() and empty[..., TRACKS].sum() == 0
    # a deposit below threshold is removed, with or without noise
    # (HCAL noise stays on in `quiet`, so look at ECAL only; a seeded rng keeps the test repeatable)
    quiet = dataclasses.replace(spec, ecal_noise=0.0, ecal_stochastic=0.0, ecal_constant=0.0)
    soft = particles_to_image([0.05], [0.0], [0.0], [22], jet_eta=0.0, jet_phi=0.0, detector=quiet,
                              rng=np.random.default_rng(1))
    assert soft[..., ECAL].sum() == 0
    # soft tracks are below the tracking threshold
    assert one(211, pt=0.3, ideal=False)[..., TRACKS].sum() == 0


def test_reproducible_with_seeded_rng():
    args = ([40.0, 10.0, 5.0], [0.0, 0.1, -0.1], [0.0, 0.05, 0.1], [211, 22, 2112])
    a = particles_to_image(*args, jet_eta=0.0, jet_phi=0.0, detector="cpu", rng=np.random.default_rng(7))
    b = particles_to_image(*args, jet_eta=0.0, jet_phi=0.0, detector="cpu", rng=np.random.default_rng(7))
    c = particles_to_image(*args, jet_eta=0.0, jet_phi=0.0, detector="cpu", rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
