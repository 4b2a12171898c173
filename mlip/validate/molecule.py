"""Molecules: relaxed geometry (bond lengths, angles) and harmonic frequencies.

Frequencies come from a finite-difference Hessian (central differences of the forces, +/- ``delta``
A on every Cartesian coordinate: 6 N calls), mass-weighted, with the three translations and the
three rotations (two for a linear molecule) projected out exactly, so a molecule of N atoms has
3N - 6 (3N - 5) vibrational frequencies regardless of how well the model keeps rotational
invariance. Frequencies are in THz (``frequencies``) and cm^-1 (``wavenumbers``); an imaginary
mode (a saddle point, or a geometry the model does not hold) is a negative number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from mlip.validate.common import relax, with_calc
from mlip.validate.phonons import eigenvalues_to_thz
from mlip.validate.units import THZ_IN_CM1


def relax_molecule(atoms, calc, fmax: float = 1e-3, steps: int = 1000):
    """``(relaxed copy, converged)``; ``fmax`` in eV/A."""
    return relax(atoms, calc, fmax=fmax, steps=steps)


def bond_length(atoms, i: int, j: int) -> float:
    """Distance of atoms i and j (Angstrom)."""
    return float(atoms.get_distance(i, j))


def bond_angle(atoms, i: int, j: int, k: int) -> float:
    """Angle i-j-k at vertex j (degrees)."""
    return float(atoms.get_angle(i, j, k))


def _rigid_body_basis(positions: np.ndarray, masses: np.ndarray) -> np.ndarray:
    """Orthonormal mass-weighted vectors of the rigid translations and rotations, (3N, 5 or 6)."""
    n = len(masses)
    sq = np.sqrt(masses)
    com = (masses[:, None] * positions).sum(axis=0) / masses.sum()
    r = positions - com
    vecs = []
    for a in range(3):
        t = np.zeros((n, 3))
        t[:, a] = sq
        vecs.append(t.ravel())
    for a in range(3):
        axis = np.zeros(3)
        axis[a] = 1.0
        vecs.append((sq[:, None] * np.cross(axis, r)).ravel())
    u, s, _ = np.linalg.svd(np.array(vecs).T, full_matrices=False)
    # a linear molecule has one rotation of zero length (about its axis): drop it
    return u[:, s > 1e-6 * s.max()]


@dataclass
class VibrationResult:
    frequencies: np.ndarray       # THz, ascending, signed (negative = imaginary)
    hessian: np.ndarray           # eV/A^2, (3N, 3N)
    n_rigid: int                  # rigid-body modes removed (5 or 6; 3 for a single atom)

    @property
    def wavenumbers(self) -> np.ndarray:
        """Frequencies in cm^-1."""
        return self.frequencies * THZ_IN_CM1

    def n_imaginary(self, tolerance: float = 0.1) -> int:
        """Modes below -``tolerance`` THz."""
        return int((self.frequencies < -abs(tolerance)).sum())


def harmonic_frequencies(atoms, calc, delta: float = 5e-3, hessian: Optional[np.ndarray] = None) -> VibrationResult:
    """Harmonic frequencies of ``atoms`` (relax first: away from a minimum they mean little).

    ``delta``: finite-difference step in A. ``hessian``: use this (eV/A^2) instead of computing it."""
    work = with_calc(atoms, calc)
    n = len(work)
    if hessian is None:
        hessian = np.zeros((3 * n, 3 * n))
        pos0 = work.positions.copy()
        for i in range(n):
            for a in range(3):
                f = []
                for sign in (1.0, -1.0):
                    work.positions = pos0
                    work.positions[i, a] += sign * delta
                    f.append(np.asarray(work.get_forces()).ravel())
                hessian[3 * i + a] = -(f[0] - f[1]) / (2.0 * delta)
        work.positions = pos0
        hessian = 0.5 * (hessian + hessian.T)
    masses = work.get_masses()
    m = np.repeat(masses, 3)
    hw = hessian / np.sqrt(np.outer(m, m))
    rigid = _rigid_body_basis(work.positions, masses)
    # the internal space: the orthogonal complement of the rigid-body motions
    full = np.linalg.svd(rigid, full_matrices=True)[0]
    internal = full[:, rigid.shape[1]:]
    eig = np.linalg.eigvalsh(internal.T @ hw @ internal) if internal.shape[1] else np.zeros(0)
    return VibrationResult(np.sort(eigenvalues_to_thz(eig)), hessian, rigid.shape[1])
