"""``mlip validate`` property functions against potentials whose answers are known in closed form
(tests/test_validate_helpers.py): equation of state, elastic constants, phonons, vacancy and
surface energies, molecular geometry and frequencies."""
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from mlip.validate.defects import surface_energy, vacancy_formation_energy
from mlip.validate.elastic import elastic_constants
from mlip.validate.eos import birch_murnaghan_energy, equation_of_state, fit_birch_murnaghan
from mlip.validate.molecule import bond_angle, bond_length, harmonic_frequencies, relax_molecule
from mlip.validate.phonons import compute_phonons, phonopy_available
from mlip.validate.units import EV_PER_A2_IN_J_PER_M2, EV_PER_A3_IN_GPA, SQRT_EV_A2_AMU_IN_THZ, THZ_IN_CM1
from test_validate_helpers import SpringCalculator, fcc_dynamical_frequencies

A, K, EPS = 4.0, 2.0, 0.5  # fcc lattice constant (A), spring constant (eV/A^2), bond energy (eV)


def fcc_springs(**kw):
    return SpringCalculator(k=K, r0=A / np.sqrt(2.0), rc=3.4, eps=EPS, **kw)


def test_unit_constants():
    # the familiar numbers, derived here from CODATA through ase.units
    assert EV_PER_A3_IN_GPA == pytest.approx(160.21766, rel=1e-6)
    assert EV_PER_A2_IN_J_PER_M2 == pytest.approx(16.021766, rel=1e-6)
    assert THZ_IN_CM1 == pytest.approx(33.35641, rel=1e-6)
    assert SQRT_EV_A2_AMU_IN_THZ == pytest.approx(15.633302, rel=1e-6)


@pytest.mark.parametrize("e0,v0,b0,b0p", [(-3.0, 12.0, 0.6, 4.5), (-10.8, 40.9, 0.55, 4.2), (2.0, 100.0, 0.1, 6.0)])
def test_birch_murnaghan_fit_is_exact_on_its_own_form(e0, v0, b0, b0p):
    # an asymmetric scan that does not have V0 at its centre
    v = np.linspace(0.93 * v0, 1.09 * v0, 11)
    fit = fit_birch_murnaghan(v, birch_murnaghan_energy(v, e0, v0, b0, b0p))
    assert fit.e0 == pytest.approx(e0, abs=1e-10)
    assert fit.v0 == pytest.approx(v0, rel=1e-10)
    assert fit.b0 == pytest.approx(b0, rel=1e-8)
    assert fit.b0_prime == pytest.approx(b0p, rel=1e-6)
    assert fit.b0_gpa == pytest.approx(b0 * 160.21766208, rel=1e-8)


def test_birch_murnaghan_fit_refuses_a_scan_without_minimum():
    v = np.linspace(10.0, 12.0, 7)
    with pytest.raises(ValueError, match="no minimum"):
        fit_birch_murnaghan(v, -v)  # energy falls all the way: the equilibrium is outside
    with pytest.raises(ValueError, match="at least 5"):
        fit_birch_murnaghan(v[:4], v[:4] ** 2)


def test_equation_of_state_of_the_fcc_spring_model():
    start = bulk("Cu", "fcc", a=A)
    res = equation_of_state(start, fcc_springs())
    assert res.lattice["a"] == pytest.approx(A, rel=1e-5)
    assert res.volume_per_atom == pytest.approx(A ** 3 / 4, rel=1e-5)
    assert res.fit.e0 / res.natoms == pytest.approx(-6 * EPS, rel=1e-5)  # 12 bonds, each shared
    # B = 4k / (3a); the spring E(V) is not of Birch-Murnaghan form, so allow the fit's 0.3 %
    assert res.fit.b0 == pytest.approx(4 * K / (3 * A), rel=1e-2)


def test_elastic_constants_of_the_fcc_spring_model():
    res = elastic_constants(bulk("Cu", "fcc", a=A), fcc_springs())
    c11, c12 = 2 * K / A * EV_PER_A3_IN_GPA, K / A * EV_PER_A3_IN_GPA
    expected = np.zeros((6, 6))
    expected[:3, :3] = c12
    np.fill_diagonal(expected[:3, :3], c11)
    expected[3, 3] = expected[4, 4] = expected[5, 5] = c12  # C44 = C12 = k/a (Cauchy relation)
    np.testing.assert_allclose(res.C, expected, atol=1e-3 * c11)
    assert res.asymmetry < 1e-6
    assert res.bulk_modulus_voigt == pytest.approx(4 * K / (3 * A) * EV_PER_A3_IN_GPA, rel=1e-4)
    assert res.mechanically_stable


def test_elastic_constants_in_a_rotated_cubic_cell_are_the_same():
    # the conventional 4-atom cell gives the same Cartesian constants as the primitive one
    res = elastic_constants(bulk("Cu", "fcc", a=A, cubic=True), fcc_springs())
    assert res.named()["C11"] == pytest.approx(2 * K / A * EV_PER_A3_IN_GPA, rel=1e-3)
    assert res.named()["C44"] == pytest.approx(K / A * EV_PER_A3_IN_GPA, rel=1e-3)


def test_negative_springs_are_mechanically_unstable():
    # springs of negative curvature: the lattice sits on an energy maximum, C is negative definite
    calc = SpringCalculator(k=-K, r0=A / np.sqrt(2.0), rc=3.4, eps=EPS)
    assert not elastic_constants(bulk("Cu", "fcc", a=A), calc, relax_ions=False).mechanically_stable


def test_phonons_of_the_fcc_spring_model_match_the_closed_form():
    prim = bulk("Cu", "fcc", a=A)
    res = compute_phonons(prim, fcc_springs(), repeat=(3, 3, 3), backend="numpy", mesh=6)
    q = np.random.default_rng(3).uniform(-0.5, 0.5, (7, 3))  # not commensurate with the supercell
    expected = np.array([fcc_dynamical_frequencies(x, prim.cell.array, A, K, prim.get_masses()[0]) for x in q])
    np.testing.assert_allclose(res.model.frequencies(q), expected, atol=1e-4)
    # band path from ASE's FCC path, starting at Gamma with three zero acoustic modes
    assert res.band_labels[0] == "Γ"
    np.testing.assert_allclose(res.band_frequencies[0], 0.0, atol=1e-6)
    assert not res.has_imaginary
    # the DOS integrates to 3 modes per atom
    assert np.trapezoid(res.dos, res.dos_frequencies) == pytest.approx(3.0, rel=1e-3)


def test_phonons_of_a_two_atom_cell_are_the_folded_closed_form():
    # the same fcc crystal described by a cell of two atoms (a3 doubled): its bands at q are the
    # fcc bands at k and at k + b3/2, the wave vector folded back by the larger cell
    from mlip.validate.common import supercell

    prim = bulk("Cu", "fcc", a=A)
    double = supercell(prim, [[1, 0, 0], [0, 1, 0], [0, 0, 2]])
    res = compute_phonons(double, fcc_springs(), repeat=(3, 3, 2), backend="numpy", mesh=4)
    m = prim.get_masses()[0]
    q = np.random.default_rng(5).uniform(-0.5, 0.5, (6, 3))
    k = q @ double.cell.reciprocal()                      # Cartesian, 1/A without 2 pi
    half_b3 = double.cell.reciprocal()[2]
    for qi, ki in zip(q, k):
        expected = np.sort(np.concatenate([
            fcc_dynamical_frequencies(kk @ prim.cell.array.T, prim.cell.array, A, K, m) for kk in (ki, ki + half_b3)]))
        np.testing.assert_allclose(res.model.frequencies(qi[None])[0], expected, atol=1e-4)


@pytest.mark.skipif(not phonopy_available(), reason="phonopy not installed (optional dependency)")
@pytest.mark.filterwarnings("ignore:Warning. Point group symmetries")  # the 3x3x2 supercell's, as intended
def test_phonopy_backend_matches_the_closed_form():
    prim = bulk("Cu", "fcc", a=A)
    res = compute_phonons(prim, fcc_springs(), repeat=(3, 3, 3), backend="phonopy", mesh=4)
    assert res.backend == "phonopy"
    q = np.random.default_rng(4).uniform(-0.5, 0.5, (5, 3))
    expected = np.array([fcc_dynamical_frequencies(x, prim.cell.array, A, K, prim.get_masses()[0]) for x in q])
    np.testing.assert_allclose(res.model.frequencies(q), expected, atol=1e-4)
    # two atoms per cell: phonopy (symmetry-reduced displacements) and the numpy back end agree
    from mlip.validate.common import supercell

    double = supercell(prim, [[1, 0, 0], [0, 1, 0], [0, 0, 2]])
    a = compute_phonons(double, fcc_springs(), repeat=(3, 3, 2), backend="phonopy", mesh=2)
    b = compute_phonons(double, fcc_springs(), repeat=(3, 3, 2), backend="numpy", mesh=2)
    np.testing.assert_allclose(a.model.frequencies(q), b.model.frequencies(q), atol=1e-4)


@pytest.mark.parametrize("r0,imaginary", [(2.3, False), (2.7, True)])
def test_linear_chain_dispersion_and_imaginary_modes(r0, imaginary):
    a, k = 2.5, 1.0
    chain = Atoms("Ar", positions=[[0, 0, 0]], cell=[a, 12.0, 12.0], pbc=True)
    res = compute_phonons(chain, SpringCalculator(k=k, r0=r0, rc=3.5, eps=0.0), repeat=(4, 1, 1),
                          backend="numpy", mesh=4)
    m = chain.get_masses()[0]
    qx = np.linspace(0.0, 0.5, 6)
    freqs = res.model.frequencies(np.c_[qx, np.zeros(6), np.zeros(6)])
    # longitudinal: 2 sqrt(k/m) |sin(q a / 2)|, with q a = 2 pi qx
    np.testing.assert_allclose(freqs[:, 2], 2 * np.sqrt(k / m) * np.abs(np.sin(np.pi * qx)) * SQRT_EV_A2_AMU_IN_THZ,
                               atol=1e-5)
    # transverse: omega^2 = 2 phi'(a) / (a m) (1 - cos 2 pi qx), phi'(a) = k (a - r0)
    # (a sideways displacement changes the bond length at second order: the finite difference
    # with delta = 0.01 A is exact to (delta / a)^2 ~ 1e-5 relative, not to round-off)
    lam = 2 * k * (a - r0) / (a * m) * (1 - np.cos(2 * np.pi * qx))
    np.testing.assert_allclose(freqs[:, 0], np.sign(lam) * np.sqrt(np.abs(lam)) * SQRT_EV_A2_AMU_IN_THZ,
                               rtol=1e-4, atol=1e-6)
    assert res.has_imaginary is imaginary
    if imaginary:
        assert res.min_frequency == pytest.approx(-np.sqrt(4 * k * (r0 - a) / (a * m)) * SQRT_EV_A2_AMU_IN_THZ,
                                                  rel=1e-4)


def test_imaginary_tolerance_ignores_small_negative_values():
    chain = Atoms("Ar", positions=[[0, 0, 0]], cell=[2.5, 12.0, 12.0], pbc=True)
    calc = SpringCalculator(k=1.0, r0=2.5001, rc=3.5, eps=0.0)  # barely compressed: -0.02 THz
    res = compute_phonons(chain, calc, repeat=(4, 1, 1), backend="numpy", mesh=4, imaginary_tolerance=0.1)
    assert -0.1 < res.min_frequency < 0 and not res.has_imaginary
    res = compute_phonons(chain, calc, repeat=(4, 1, 1), backend="numpy", mesh=4, imaginary_tolerance=0.001)
    assert res.has_imaginary


def test_vacancy_formation_energy_is_half_the_broken_bonds():
    res = vacancy_formation_energy(bulk("Cu", "fcc", a=A, cubic=True), fcc_springs(), (2, 2, 2))
    assert res.natoms == 32
    assert res.energy == pytest.approx(6 * EPS, abs=1e-9)
    assert res.converged


@pytest.mark.parametrize("miller,gamma", [((1, 0, 0), 4 * EPS / A ** 2), ((1, 1, 1), 2 * np.sqrt(3) * EPS / A ** 2)])
def test_surface_energy_counts_the_cut_bonds(miller, gamma):
    res = surface_energy(bulk("Cu", "fcc", a=A, cubic=True), fcc_springs(), miller, layers=6)
    assert res.energy_ev_per_a2 == pytest.approx(gamma, rel=1e-9)
    assert res.energy == pytest.approx(gamma * EV_PER_A2_IN_J_PER_M2, rel=1e-9)


def test_relaxed_molecule_and_its_harmonic_frequencies():
    k, r0 = 10.0, 1.0
    calc = SpringCalculator(k=k, r0=r0, rc=2.0, eps=0.0)
    triangle = Atoms("H3", positions=[[0, 0, 0], [1.1, 0, 0], [0.4, 0.8, 0.1]])
    relaxed, converged = relax_molecule(triangle, calc, fmax=1e-5)
    assert converged
    assert bond_length(relaxed, 0, 1) == pytest.approx(r0, abs=1e-5)
    assert bond_angle(relaxed, 0, 1, 2) == pytest.approx(60.0, abs=1e-3)
    vib = harmonic_frequencies(relaxed, calc)
    m = relaxed.get_masses()[0]
    # equilateral triangle of springs: E' (twice) omega^2 = 3k/(2m), A1' omega^2 = 3k/m
    expected = np.sqrt([1.5 * k / m, 1.5 * k / m, 3 * k / m]) * SQRT_EV_A2_AMU_IN_THZ
    assert vib.n_rigid == 6
    np.testing.assert_allclose(vib.frequencies, expected, rtol=1e-5)
    dimer, _ = relax_molecule(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.8]]), calc, fmax=1e-5)
    vib = harmonic_frequencies(dimer, calc)
    assert vib.n_rigid == 5  # linear: two rotations
    np.testing.assert_allclose(vib.wavenumbers, [np.sqrt(k / (m / 2)) * SQRT_EV_A2_AMU_IN_THZ * THZ_IN_CM1], rtol=1e-6)
    assert vib.n_imaginary() == 0


def test_equation_of_state_extends_a_scan_that_misses_the_minimum():
    # start 12 % too small in volume: the first scan (+/- 6 %) has its lowest energy at the end
    start = bulk("Cu", "fcc", a=A * 0.96)
    res = equation_of_state(start, fcc_springs(), relax_ions=False)
    assert res.fit is not None
    assert res.lattice["a"] == pytest.approx(A, rel=1e-4)
    assert len(res.volumes) == 9 and res.volumes.min() < res.fit.v0 < res.volumes.max()
