"""Helpers shared by the property modules: relaxation and supercells.

Every property function takes an ASE calculator (any ``ase.calculators.calculator.Calculator``:
an :class:`mlip.MLIPCalculator`, or an analytic potential in the tests) and works on a copy of
the structure it is given, so the caller's ``Atoms`` never change.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Union

import numpy as np

Supercell = Union[Sequence[int], Sequence[Sequence[int]], np.ndarray]


def with_calc(atoms, calc):
    """A copy of ``atoms`` (constraints and calculator results dropped) using ``calc``."""
    new = atoms.copy()
    new.set_constraint()
    new.calc = calc
    return new


def relax(atoms, calc, fmax: float = 1e-3, cell: bool = False, steps: int = 500,
          hydrostatic: bool = False):
    """Relax positions (and the cell when ``cell``) with BFGS; returns ``(relaxed copy, converged)``.

    ``fmax`` in eV/A; with ``cell``, stress is relaxed too (ASE's FrechetCellFilter, whose
    cell "forces" are stress times volume, converge to the same ``fmax``). ``hydrostatic``
    keeps the cell shape (only the volume changes)."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS

    work = with_calc(atoms, calc)
    target = FrechetCellFilter(work, hydrostatic_strain=hydrostatic) if cell else work
    # no log file: progress is reported by the caller, one line per property
    opt = BFGS(target, logfile=None, maxstep=0.1)
    with warnings.catch_warnings():
        # the filter's matrix logarithm warns about errors of 1e-13 near the identity: noise
        warnings.filterwarnings("ignore", message="logm result may be inaccurate")
        converged = bool(opt.run(fmax=fmax, steps=steps))
    return work, converged


def supercell(atoms, repeat: Supercell):
    """``atoms`` repeated by three integers, or transformed by a 3x3 integer matrix."""
    from ase.build import make_supercell

    p = np.asarray(repeat, dtype=int)
    if p.ndim == 1:
        return atoms.repeat(tuple(int(v) for v in p))
    return make_supercell(atoms, p)


def auto_repeat(atoms, min_width: float) -> Sequence[int]:
    """The smallest repeats with every perpendicular width of the supercell >= ``min_width`` (A)."""
    widths = perpendicular_widths(atoms.cell.array)
    return [max(1, int(np.ceil(min_width / w - 1e-9))) for w in widths]


def perpendicular_widths(cell: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of the cell (Angstrom)."""
    volume = abs(np.linalg.det(cell))
    return np.array([volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)])


def progress(log, message: str) -> None:
    """One progress line (``log`` is ``print``-like, or None for silence)."""
    if log is not None:
        log(message)


def finite(x) -> bool:
    return bool(np.all(np.isfinite(np.asarray(x, dtype=float))))


def as_float(x) -> Optional[float]:
    return None if x is None else float(x)
