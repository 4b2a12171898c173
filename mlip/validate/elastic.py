"""Elastic constants from stress against strain.

For each of the six Voigt strains e_j (xx, yy, zz, yz, xz, xy; shear as engineering strain
gamma = 2 eps) the relaxed cell is strained by +delta and -delta, the ions are relaxed at fixed
cell (the "relaxed-ion" constants that experiments and DFT tables report: in diamond Si the
internal relaxation lowers C44 by about a third), and the stress sigma_i is taken from the
calculator. Central differences give

    C_ij = (sigma_i(+delta e_j) - sigma_i(-delta e_j)) / (2 delta)

with ASE's stress sign (positive = tensile), so that sigma = C e for small strains. Stress is in
eV/A^3 from the calculator; constants are reported in GPa (1 eV/A^3 = 160.21766 GPa). The
constants refer to the Cartesian axes of the cell: for a cubic crystal built by
``ase.build.bulk`` (primitive or cubic cell) those are the cube axes.

The reference state should be relaxed (zero stress): a residual stress shows up as an asymmetry
C_ij != C_ji, which :func:`elastic_constants` reports.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np

from mlip.validate.common import relax, with_calc
from mlip.validate.units import EV_PER_A3_IN_GPA

_VOIGT = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]


def voigt_strain(j: int, delta: float) -> np.ndarray:
    """The symmetric strain tensor of Voigt component ``j`` (0..5) with magnitude ``delta``
    (engineering shear: eps_yz = eps_zy = delta / 2 for j = 3)."""
    eps = np.zeros((3, 3))
    a, b = _VOIGT[j]
    if a == b:
        eps[a, a] = delta
    else:
        eps[a, b] = eps[b, a] = delta / 2.0
    return eps


def strained(atoms, eps: np.ndarray):
    """A copy of ``atoms`` with its cell and positions deformed by (1 + eps)."""
    new = atoms.copy()
    deform = np.eye(3) + eps
    # rows of ase's cell are lattice vectors: each transforms as v -> (1 + eps) v
    new.set_cell(atoms.cell.array @ deform.T, scale_atoms=True)
    return new


@dataclass
class ElasticResult:
    """Voigt elastic constants (GPa) and what tells whether to trust them."""

    C: np.ndarray               # 6x6, GPa, symmetrised
    asymmetry: float            # max |C_ij - C_ji| / max |C|, before symmetrising
    residual_stress: float      # max |sigma| of the reference state, GPa
    delta: float

    def named(self) -> Dict[str, float]:
        """``{"C11": ..., "C12": ..., ...}`` for i <= j, in GPa."""
        return {f"C{i + 1}{j + 1}": float(self.C[i, j]) for i in range(6) for j in range(i, 6)}

    @property
    def bulk_modulus_voigt(self) -> float:
        """Voigt bulk modulus (GPa); (C11 + 2 C12) / 3 for cubic crystals."""
        c = self.C
        return float((c[0, 0] + c[1, 1] + c[2, 2] + 2.0 * (c[0, 1] + c[0, 2] + c[1, 2])) / 9.0)

    @property
    def mechanically_stable(self) -> bool:
        """Born criterion: all eigenvalues of the (symmetric) Voigt matrix are positive."""
        return bool(np.linalg.eigvalsh(self.C).min() > 0)


def elastic_constants(atoms, calc, delta: float = 5e-3, relax_ions: bool = True,
                      fmax: float = 1e-4) -> ElasticResult:
    """Voigt C_ij (GPa) of relaxed ``atoms`` with ``calc`` by +/- ``delta`` strains.

    ``relax_ions``: relax the positions in each strained cell to ``fmax`` (eV/A); without it
    the constants are the clamped-ion ones. ``delta`` = 0.5 % keeps the response linear for
    ordinary solids while staying far above the noise of a float32 model's stress."""
    ref = with_calc(atoms, calc)
    residual = np.abs(ref.get_stress(voigt=True)).max() * EV_PER_A3_IN_GPA
    c = np.zeros((6, 6))
    for j in range(6):
        stresses = []
        for sign in (1.0, -1.0):
            work = strained(ref, voigt_strain(j, sign * delta))
            if relax_ions and len(work) > 1:
                work, _ = relax(work, calc, fmax=fmax)
            work.calc = calc
            stresses.append(np.asarray(work.get_stress(voigt=True)))
        c[:, j] = (stresses[0] - stresses[1]) / (2.0 * delta)
    c *= EV_PER_A3_IN_GPA
    scale = max(np.abs(c).max(), 1e-12)
    asym = float(np.abs(c - c.T).max() / scale)
    return ElasticResult(0.5 * (c + c.T), asym, float(residual), delta)
