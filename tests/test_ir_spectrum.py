"""scripts/ir_spectrum.py: the spectral analysis on signals with known answers (the MD run and the
plot are exercised by the example itself, see docs)."""
import importlib.util
import os

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module():
    spec = importlib.util.spec_from_file_location("ir_spectrum", os.path.join(REPO, "scripts", "ir_spectrum.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_dipole_oscillating_at_a_known_wavenumber_peaks_there():
    ir = _module()
    dt = 0.5  # fs
    t = np.arange(8000) * dt * 1e-15
    nu = np.array([1600.0, 3700.0])  # cm^-1
    omega = 2 * np.pi * ir.C_CM_PER_S * nu
    mu = np.stack([0.1 * np.cos(omega[0] * t), 0.05 * np.sin(omega[1] * t), np.full_like(t, 0.7)], axis=1)
    w, s = ir.power_spectrum(mu, dt)
    found = ir.peaks(w, s, count=2)
    assert len(found) == 2
    for (peak, _), want in zip(found, nu):
        assert abs(peak - want) < 5.0, (peak, want)
    # the derivative weights intensity by omega^2: same amplitude, higher frequency, larger peak
    assert w[1] - w[0] < 5.0


def test_raman_parts_split_isotropic_and_anisotropic():
    ir = _module()
    rng = np.random.default_rng(0)
    iso_only = np.eye(3)[None] * rng.uniform(1, 2, size=(5, 1, 1))
    iso, aniso = ir.raman_parts(iso_only)
    np.testing.assert_allclose(iso[:, 0], iso_only[:, 0, 0])
    np.testing.assert_allclose(aniso, 0.0, atol=1e-15)
    a = rng.normal(size=(4, 3, 3))
    a = a + a.transpose(0, 2, 1)
    iso, aniso = ir.raman_parts(a)
    # beta^2 = 3/2 tr(A'^2) with A' the traceless part, from the 6 weighted components
    traceless = a - np.trace(a, axis1=1, axis2=2)[:, None, None] / 3 * np.eye(3)
    beta2 = 1.5 * np.einsum("tij,tji->t", traceless, traceless)
    np.testing.assert_allclose((aniso ** 2).sum(axis=1), beta2)


def test_kabsch_undoes_a_rotation():
    from scipy.spatial.transform import Rotation

    ir = _module()
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(5, 3))
    masses = rng.uniform(1, 16, size=5)
    ref -= (ref * masses[:, None]).sum(0) / masses.sum()
    rot = Rotation.random(random_state=2).as_matrix()
    moved = ref @ rot.T
    r = ir.kabsch(moved, ref, masses)
    np.testing.assert_allclose(moved @ r.T, ref, atol=1e-12)
    np.testing.assert_allclose(r, rot.T, atol=1e-12)
