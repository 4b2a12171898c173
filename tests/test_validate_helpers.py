"""Analytic potentials for the ``mlip validate`` tests (this module holds no tests itself).

:class:`SpringCalculator`: pairs closer than ``rc`` interact by phi(r) = -eps + k/2 (r - r0)^2
(eV, A). With ``rc`` between the first and second neighbour shells of a lattice at r0 it is the
nearest-neighbour central-spring model, whose properties have closed forms:

* fcc, lattice constant a = sqrt(2) r0, spring constant k: C11 = 2k/a, C12 = C44 = k/a,
  B = 4k/(3a) (eV/A^3); dynamical matrix D(q) = (k/m) sum_R (1 - cos q.R) R^ R^T over the 12
  neighbours R; vacancy formation energy 6 eps (each of the 12 broken bonds is shared by two
  atoms, so E_f = z eps / 2); surface energies 4 eps / a^2 for (100) and 2 sqrt(3) eps / a^2 for
  (111) (eV/A^2).
* a linear chain of spacing a: longitudinal omega(q) = 2 sqrt(k/m) |sin(q a / 2)|; transverse
  omega^2 = 2 phi'(a) / (a m) (1 - cos q a), imaginary when the chain is compressed (a < r0).

The broken calculators make an MD run fail in one known way each.
"""
import numpy as np
from ase.calculators.calculator import Calculator, all_changes


class SpringCalculator(Calculator):
    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, k: float = 2.0, r0: float = 2.0 ** 0.5 * 2.0, rc: float = 3.4, eps: float = 0.5, **kw):
        super().__init__(**kw)
        self.k, self.r0, self.rc, self.eps = k, r0, rc, eps
        self.ncalls = 0

    def pair_terms(self, atoms):
        """(i, j, D, r) of every ordered pair closer than rc (both i->j and j->i)."""
        from ase.neighborlist import neighbor_list

        if atoms.pbc.any():
            i, j, d, r = neighbor_list("ijDd", atoms, self.rc)
        else:
            diff = atoms.positions[None, :, :] - atoms.positions[:, None, :]
            dist = np.linalg.norm(diff, axis=2)
            i, j = np.nonzero((dist < self.rc) & ~np.eye(len(atoms), dtype=bool))
            d, r = diff[i, j], dist[i, j]
        return i, j, d, r

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.ncalls += 1
        atoms = self.atoms
        n = len(atoms)
        i, j, d, r = self.pair_terms(atoms)
        phi = -self.eps + 0.5 * self.k * (r - self.r0) ** 2
        dphi = self.k * (r - self.r0)
        energies = 0.5 * np.bincount(i, weights=phi, minlength=n)
        forces = np.zeros((n, 3))
        # a stretched bond (dphi > 0) pulls i towards j, along D = r_j - r_i
        np.add.at(forces, i, (dphi / r)[:, None] * d)
        self.results = {"energy": float(energies.sum()), "free_energy": float(energies.sum()),
                        "energies": energies, "forces": forces}
        if atoms.pbc.all():
            # ASE sign: stress = (1/V) dE/d(strain), positive when stretched
            virial = 0.5 * np.einsum("p,pa,pb->ab", dphi / r, d, d)
            s = virial / atoms.get_volume()
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


class JumpCalculator(SpringCalculator):
    """Springs, plus ``jump`` eV per atom on the energy from the ``after``-th call on (forces unchanged)."""

    def __init__(self, after: int, jump: float = 1.0, **kw):
        super().__init__(**kw)
        self.after, self.jump = after, jump

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.ncalls >= self.after:
            self.results["energy"] += self.jump * len(self.atoms)
            self.results["free_energy"] = self.results["energy"]


class HeatingCalculator(SpringCalculator):
    """Springs, plus a force gamma m v along each atom's velocity (negative friction, 1/fs): a
    model whose forces are not the gradient of its energy, which heats the system."""

    def __init__(self, gamma_per_fs: float = 0.05, **kw):
        super().__init__(**kw)
        self.gamma = gamma_per_fs

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from ase import units

        super().calculate(atoms, properties, system_changes)
        # atoms (not self.atoms, a copy without momenta) is the MD's own object
        v = atoms.get_velocities()  # A / ase time unit
        self.results["forces"] = self.results["forces"] + (self.gamma / units.fs) * atoms.get_masses()[:, None] * v


class NaNCalculator(SpringCalculator):
    """Springs until the ``after``-th call, then NaN energies and forces."""

    def __init__(self, after: int, **kw):
        super().__init__(**kw)
        self.after = after

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.ncalls >= self.after:
            self.results["energy"] = float("nan")
            self.results["forces"] = self.results["forces"] * np.nan


class RaisingCalculator(SpringCalculator):
    """Springs until the ``after``-th call, then an error, as MLIPCalculator raises for atoms
    closer than 0.1 A."""

    def __init__(self, after: int, **kw):
        super().__init__(**kw)
        self.after = after

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        if self.ncalls + 1 >= self.after:
            self.ncalls += 1
            raise ValueError("atoms 3 and 7 are 0.05 A apart")
        super().calculate(atoms, properties, system_changes)


def fcc_dynamical_frequencies(q_frac, cell, a: float, k: float, mass: float) -> np.ndarray:
    """Closed-form THz frequencies of the fcc nearest-neighbour spring model at fractional q
    (of ``cell``'s reciprocal lattice), ascending."""
    from mlip.validate.units import SQRT_EV_A2_AMU_IN_THZ

    kvec = np.asarray(q_frac, dtype=float) @ np.linalg.inv(np.asarray(cell)).T  # 1/A without 2 pi
    neighbours = np.array([[s1, s2, 0] for s1 in (1, -1) for s2 in (1, -1)]
                          + [[s1, 0, s2] for s1 in (1, -1) for s2 in (1, -1)]
                          + [[0, s1, s2] for s1 in (1, -1) for s2 in (1, -1)], dtype=float) * a / 2
    d = np.zeros((3, 3))
    for rv in neighbours:
        u = rv / np.linalg.norm(rv)
        d += (1 - np.cos(2 * np.pi * kvec @ rv)) * np.outer(u, u)
    lam = np.linalg.eigvalsh(k / mass * d)
    return np.sign(lam) * np.sqrt(np.abs(lam)) * SQRT_EV_A2_AMU_IN_THZ
