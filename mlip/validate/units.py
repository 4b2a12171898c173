"""Unit conversions of ``mlip validate``.

Inside the package every quantity is kept in one canonical unit per dimension; reference files
may use any alias listed in :data:`UNITS`, which the parser converts on reading:

==================  ===============  =============================================
dimension           canonical unit   aliases accepted in a reference file
==================  ===============  =============================================
length              Angstrom         A, Ang, Angstrom, Å, nm, pm, bohr
volume              Angstrom^3       A^3, Angstrom^3, Å^3
pressure            GPa              GPa, kbar, eV/A^3, Mbar
energy              eV               eV, meV, kJ/mol, kcal/mol
surface energy      J/m^2            J/m^2, eV/A^2, meV/A^2, mJ/m^2
angle               degree           deg, degree, degrees, °, rad
frequency           THz              THz, cm^-1 (also cm-1, 1/cm), meV
dimensionless       1                1, "" (e.g. the pressure derivative B0')
==================  ===============  =============================================
"""
from __future__ import annotations

import math
from typing import Dict

from ase import units as _ase

#: 1 eV/Angstrom^3 in GPa (= 160.2176634)
EV_PER_A3_IN_GPA = _ase._e * 1e30 / 1e9
#: 1 eV/Angstrom^2 in J/m^2 (= 16.02176634)
EV_PER_A2_IN_J_PER_M2 = _ase._e * 1e20
#: 1 THz in cm^-1 (= 33.35641)
THZ_IN_CM1 = 1e12 / (_ase._c * 100.0)
#: 1 THz in meV (h * 1 THz = 4.135668 meV)
THZ_IN_MEV = _ase._hplanck * 1e12 / _ase._e * 1e3
#: sqrt(eigenvalue in eV / (Angstrom^2 amu)) -> frequency nu in THz (omega / 2 pi; = 15.633302)
SQRT_EV_A2_AMU_IN_THZ = math.sqrt(_ase._e / _ase._amu) / 1e-10 / (2.0 * math.pi) / 1e12

# dimension -> alias -> factor that converts a value in that unit to the canonical unit
UNITS: Dict[str, Dict[str, float]] = {
    "length": {"a": 1.0, "ang": 1.0, "angstrom": 1.0, "å": 1.0, "nm": 10.0, "pm": 0.01,
               "bohr": _ase.Bohr},
    "volume": {"a^3": 1.0, "angstrom^3": 1.0, "å^3": 1.0, "a3": 1.0},
    "pressure": {"gpa": 1.0, "kbar": 0.1, "mbar": 100.0, "ev/a^3": EV_PER_A3_IN_GPA, "ev/angstrom^3": EV_PER_A3_IN_GPA},
    "energy": {"ev": 1.0, "mev": 1e-3, "kj/mol": _ase.kJ / _ase.mol, "kcal/mol": _ase.kcal / _ase.mol},
    "surface_energy": {"j/m^2": 1.0, "j/m2": 1.0, "mj/m^2": 1e-3, "ev/a^2": EV_PER_A2_IN_J_PER_M2,
                       "ev/angstrom^2": EV_PER_A2_IN_J_PER_M2, "mev/a^2": 1e-3 * EV_PER_A2_IN_J_PER_M2},
    "angle": {"deg": 1.0, "degree": 1.0, "degrees": 1.0, "°": 1.0, "rad": 180.0 / math.pi},
    "frequency": {"thz": 1.0, "cm^-1": 1.0 / THZ_IN_CM1, "cm-1": 1.0 / THZ_IN_CM1, "1/cm": 1.0 / THZ_IN_CM1,
                  "mev": 1.0 / THZ_IN_MEV},
    "dimensionless": {"1": 1.0, "": 1.0, "none": 1.0},
}

#: the canonical unit of each dimension, as printed in tables
CANONICAL = {"length": "Angstrom", "volume": "Angstrom^3", "pressure": "GPa", "energy": "eV",
             "surface_energy": "J/m^2", "angle": "deg", "frequency": "THz", "dimensionless": ""}


def to_canonical(value: float, unit: str, dimension: str) -> float:
    """``value`` given in ``unit`` expressed in the canonical unit of ``dimension``.

    Raises ``KeyError`` (with the accepted units in its message) for a unit that does not belong
    to the dimension; the reference parser turns that into a one-line :class:`InputError`."""
    table = UNITS[dimension]
    key = str(unit).strip().lower().replace(" ", "").replace("**", "^")
    if key not in table:
        raise KeyError(f"unit '{unit}' is not a {dimension.replace('_', ' ')} unit; use one of "
                       f"{', '.join(sorted(a for a in table if a))}")
    return float(value) * table[key]
