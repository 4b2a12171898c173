"""Point and planar defects: vacancy formation energy and surface energy.

* Vacancy (eV): E_f = E(N-1) - (N-1)/N * E(N), with E(N) the perfect supercell and E(N-1) the
  supercell with one atom removed and its positions relaxed at fixed cell (the usual constant-
  volume definition; the mlearn and most DFT tables use it). Finite-size effects are those of the
  supercell: compare with a reference computed in a cell of the same size.
* Surface (J/m^2): gamma = (E_slab - N_slab * e_bulk) / (2 A), a slab of ``layers`` layers cut
  from the conventional cell with ``vacuum`` A of vacuum on each side, positions relaxed (both
  faces are free), e_bulk the energy per atom of the relaxed bulk. Unreconstructed surfaces only:
  a model's reconstruction would need a different starting slab.

Both take a bulk cell relaxed by the same calculator, so that the reference state is the model's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mlip.validate.common import Supercell, relax, supercell, with_calc
from mlip.validate.units import EV_PER_A2_IN_J_PER_M2


@dataclass
class VacancyResult:
    energy: float             # formation energy, eV
    natoms: int               # atoms of the perfect supercell
    relaxation: float         # energy gained by relaxing the defect cell, eV (>= 0 when relaxed)
    converged: bool


def vacancy_formation_energy(bulk, calc, repeat: Supercell = (2, 2, 2), index: int = 0, relax_ions: bool = True,
                             fmax: float = 5e-3, steps: int = 300) -> VacancyResult:
    """Formation energy (eV) of a vacancy at ``index`` in ``bulk`` repeated by ``repeat``.

    ``bulk``: the relaxed cell the supercell is built from (for cubic crystals, the conventional
    cell). ``fmax`` (eV/A): relaxation threshold of the defect cell."""
    perfect = with_calc(supercell(bulk, repeat), calc)
    n = len(perfect)
    e_perfect = float(perfect.get_potential_energy())
    defect = perfect.copy()
    del defect[index]
    defect.calc = calc
    e_unrelaxed = float(defect.get_potential_energy())
    converged = True
    if relax_ions:
        defect, converged = relax(defect, calc, fmax=fmax, steps=steps)
    e_defect = float(defect.get_potential_energy())
    return VacancyResult(e_defect - (n - 1) / n * e_perfect, n, e_unrelaxed - e_defect, converged)


@dataclass
class SurfaceResult:
    energy: float             # J/m^2
    energy_ev_per_a2: float   # eV/A^2
    area: float               # A^2, of one face
    natoms: int
    converged: bool


def surface_energy(bulk, calc, miller: Sequence[int], layers: int = 8, vacuum: float = 10.0,
                   relax_ions: bool = True, fmax: float = 1e-2, steps: int = 300) -> SurfaceResult:
    """Energy (J/m^2) of the unreconstructed ``miller`` surface of ``bulk`` (relaxed conventional cell)."""
    from ase.build import surface

    ref = with_calc(bulk, calc)
    e_bulk = float(ref.get_potential_energy()) / len(ref)
    slab = surface(bulk, tuple(int(i) for i in miller), layers, vacuum=vacuum)
    # periodic in all three directions with `vacuum` A on each side: calculators that want a 3D
    # cell get one, and for any model whose range is below 2 * vacuum the faces do not interact
    slab.pbc = True
    slab.calc = calc
    converged = True
    if relax_ions:
        slab, converged = relax(slab, calc, fmax=fmax, steps=steps)
    e_slab = float(slab.get_potential_energy())
    area = float(np.linalg.norm(np.cross(slab.cell[0], slab.cell[1])))
    gamma = (e_slab - len(slab) * e_bulk) / (2.0 * area)
    return SurfaceResult(gamma * EV_PER_A2_IN_J_PER_M2, gamma, area, len(slab), converged)
