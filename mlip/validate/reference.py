"""Reference files of ``mlip validate``: DFT (or experimental) values to compare a model with.

A reference file is YAML::

    format: 1                       # optional; the only version so far
    source: "where the numbers come from (paper, table, functional)"
    systems:
      si_diamond:                   # a name of your choosing
        structure:                  # exactly one of bulk / molecule / file
          bulk: {name: Si, crystalstructure: diamond, a: 5.469}   # ase.build.bulk keywords
          # molecule: H2O           # ase.build.molecule name
          # file: si.cif            # any ASE-readable file, relative to this YAML; index: 0
        kind: crystal               # crystal | molecule (default: crystal when periodic in 3D)
        stable: true                # crystals: imaginary phonon modes are a failure (default true)
        phonons: {supercell: [4, 4, 4], mesh: 16}   # or false (crystals only); also delta (A),
                                                    # imaginary_tolerance (THz, default 0.1)
        md: {temperatures: [300, 1000], time_ps: 1.0, timestep_fs: 1.0, supercell: [3, 3, 3]}
        source: "optional, per system"
        properties:
          lattice_constant: {value: 5.469, unit: Angstrom, tolerance: 0.01, source: "..."}
          bulk_modulus:     {value: 89, unit: GPa}
          C11:              {value: 153, unit: GPa}
          vacancy_formation_energy: {value: 3.6, unit: eV, supercell: [2, 2, 2]}
          surface_energy_100: {value: 2.1, unit: J/m^2, miller: [1, 0, 0], layers: 8, vacuum: 10}
          bond_OH:          {value: 0.97, unit: Angstrom, atoms: [0, 1]}     # molecules
          angle_HOH:        {value: 104.0, unit: deg, atoms: [1, 0, 2]}      # atoms[1] is the vertex
          frequencies:      {value: [1595, 3657, 3756], unit: cm^-1}       # highest 3N-6 (5) modes

Property names and what they compare (values are converted to the unit of the second column;
any unit of :mod:`mlip.validate.units` of the same dimension is accepted):

=============================  ==========  ==================================================
name                           unit        model value
=============================  ==========  ==================================================
lattice_constant, lattice_a    Angstrom    conventional a of the relaxed cell (from the EOS V0)
lattice_b, lattice_c           Angstrom    conventional b, c (shape from the cell relaxation)
volume_per_atom                Angstrom^3  V0 / N of the Birch-Murnaghan fit
bulk_modulus                   GPa         B0 of the Birch-Murnaghan fit
bulk_modulus_derivative        1           B0' of the fit
C11 ... C66 (any Cij)          GPa         Voigt elastic constant, ions relaxed, Cartesian axes
vacancy_formation_energy       eV          E(N-1) - (N-1)/N E(N), both relaxed at fixed cell
surface_energy*                J/m^2       (E_slab - N e_bulk) / 2A, ``miller`` of the
                                           conventional cell; ``layers`` (default 8), ``vacuum``
bond*                          Angstrom    distance of ``atoms: [i, j]`` after relaxation
angle*                         deg         angle i-j-k of ``atoms: [i, j, k]`` after relaxation
frequencies                    THz         the highest harmonic frequencies, as many as given
=============================  ==========  ==================================================

``tolerance`` is relative (0.05 = 5 %); without it, :data:`DEFAULT_TOLERANCE` applies. ``source``
and ``note`` are free text shown in the report. Any error in a file is a one-line
:class:`~mlip.errors.InputError` naming the file and the key (``systems.si.properties.C11.unit``).
"""
from __future__ import annotations

import inspect
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from mlip.errors import InputError
from mlip.validate.units import CANONICAL, to_canonical

FORMAT_VERSION = 1

#: relative tolerance of each kind of property when the reference file gives none
DEFAULT_TOLERANCE: Dict[str, float] = {
    "lattice": 0.01, "volume": 0.03, "bulk_modulus": 0.10, "bulk_modulus_derivative": 0.25,
    "elastic": 0.15, "vacancy": 0.10, "surface": 0.15, "bond": 0.02, "angle": 0.02, "frequencies": 0.05,
}

# kind -> dimension of its value (for the unit check)
_DIMENSION = {"lattice": "length", "volume": "volume", "bulk_modulus": "pressure",
              "bulk_modulus_derivative": "dimensionless", "elastic": "pressure", "vacancy": "energy",
              "surface": "surface_energy", "bond": "length", "angle": "angle", "frequencies": "frequency"}

# kind -> extra keys a property entry may have, beyond value/unit/tolerance/source/note
_PARAMS = {"vacancy": {"supercell", "relax"}, "surface": {"miller", "layers", "vacuum", "relax"},
           "bond": {"atoms"}, "angle": {"atoms"}}
_COMMON = {"value", "unit", "tolerance", "source", "note"}
_CRYSTAL_KINDS = {"lattice", "volume", "bulk_modulus", "bulk_modulus_derivative", "elastic", "vacancy", "surface"}
_MOLECULE_KINDS = {"bond", "angle", "frequencies"}

SHIPPED = {"Si": "si_pbe.yaml"}


def shipped_reference(species: Sequence[str]) -> Optional[str]:
    """Path of the reference shipped with mlip for a model of exactly these species, else None."""
    key = ",".join(sorted(set(species)))
    name = SHIPPED.get(key)
    return str(resources.files("mlip.validate").joinpath("references", name)) if name else None


def property_kind(name: str) -> Optional[str]:
    """The kind of a property name (``C12`` -> ``elastic``), or None for an unknown name."""
    if name in ("lattice_constant", "lattice_a", "lattice_b", "lattice_c"):
        return "lattice"
    if re.fullmatch(r"C[1-6][1-6]", name):
        return "elastic"
    fixed = {"volume_per_atom": "volume", "bulk_modulus": "bulk_modulus",
             "bulk_modulus_derivative": "bulk_modulus_derivative", "vacancy_formation_energy": "vacancy",
             "frequencies": "frequencies"}
    if name in fixed:
        return fixed[name]
    for prefix, kind in (("surface_energy", "surface"), ("bond", "bond"), ("angle", "angle")):
        if name.startswith(prefix):
            return kind
    return None


@dataclass
class Property:
    """One reference value, in the canonical unit of its kind (``unit``)."""

    name: str
    kind: str
    value: Any            # float, or a list of floats for ``frequencies``
    unit: str
    tolerance: float      # relative
    source: str = ""
    note: str = ""
    params: Dict[str, Any] = field(default_factory=dict)
    shown_unit: str = ""      # the unit the file used, for the report
    shown_scale: float = 1.0  # value in shown_unit = value in ``unit`` * shown_scale

    def shown(self, value):
        """``value`` (canonical unit, a number or a list) in the unit the reference file used."""
        if value is None:
            return None
        if isinstance(value, (list, tuple, np.ndarray)):
            return [float(v) * self.shown_scale for v in value]
        return float(value) * self.shown_scale


@dataclass
class System:
    """A structure and the reference values that belong to it."""

    name: str
    structure: Dict[str, Any]
    kind: str                                   # "crystal" or "molecule"
    properties: Dict[str, Property]
    base_dir: str = "."
    stable: bool = True
    phonons: Optional[Dict[str, Any]] = None    # None: no phonon calculation
    md: Dict[str, Any] = field(default_factory=dict)
    source: str = ""
    origin: str = ""                            # "file, systems.NAME" for messages

    def build(self):
        """The starting structure as ``ase.Atoms`` (a fresh copy on each call)."""
        return build_structure(self.structure, self.base_dir, self.origin)

    def conventional_matrix(self) -> np.ndarray:
        """Integer matrix P with ``make_supercell(build(), P)`` = the conventional cell, the cell
        that Miller indices and vacancy supercells refer to: for a ``bulk`` spec the one of
        ``ase.build.bulk(..., cubic=True)`` (or ``orthorhombic=True`` where cubic is impossible,
        e.g. hcp); the identity for files, molecules and specs that are already conventional."""
        spec = self.structure.get("bulk")
        if not isinstance(spec, dict) or spec.get("cubic") or spec.get("orthorhombic"):
            return np.eye(3, dtype=int)
        from ase.build import bulk

        prim = build_structure(self.structure, self.base_dir, self.origin)
        kw = _bulk_kwargs(spec)
        for flag in ("cubic", "orthorhombic"):
            try:
                conv = bulk(**{**kw, flag: True})
            except Exception:  # ase raises for impossible cells (a cubic hcp): try the next one
                continue
            p = conv.cell.array @ np.linalg.inv(prim.cell.array)
            if np.allclose(p, np.round(p), atol=1e-6) and round(abs(np.linalg.det(p))) == len(conv) // len(prim):
                return np.round(p).astype(int)
        return np.eye(3, dtype=int)

    @property
    def species(self) -> List[str]:
        return sorted(set(self.build().get_chemical_symbols()))


@dataclass
class Reference:
    path: str
    systems: List[System]
    source: str = ""
    description: str = ""


def _err(path: str, key: str, message: str) -> InputError:
    return InputError(message, path, key=key)


def _mapping(value, path: str, key: str) -> dict:
    if not isinstance(value, dict):
        raise _err(path, key, f"expected a mapping (key: value lines), got {type(value).__name__}")
    return value


def _unknown(d: dict, allowed: set, path: str, key: str) -> None:
    extra = sorted(set(map(str, d)) - allowed)
    if extra:
        raise _err(path, f"{key}.{extra[0]}" if key else extra[0],
                   f"unknown key; allowed here: {', '.join(sorted(allowed))}")


def _number(value, path: str, key: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise _err(path, key, f"expected a number, got {value!r}")
    if positive and value <= 0:
        raise _err(path, key, f"must be positive, got {value!r}")
    return float(value)


def _int_list(value, n: int, path: str, key: str) -> List[int]:
    if (not isinstance(value, (list, tuple)) or len(value) != n
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise _err(path, key, f"expected a list of {n} integers, got {value!r}")
    return [int(v) for v in value]


def _supercell(value, path: str, key: str) -> List:
    """Three repeats ``[2, 2, 2]`` or a 3x3 integer matrix."""
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, (list, tuple)) for v in value):
        rows = [_int_list(v, 3, path, key) for v in value]
        if round(abs(np.linalg.det(np.array(rows, dtype=float)))) < 1:
            raise _err(path, key, "the supercell matrix is singular")
        return rows
    reps = _int_list(value, 3, path, key)
    if min(reps) < 1:
        raise _err(path, key, f"repeats must be >= 1, got {reps}")
    return reps


def _bulk_kwargs(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Keywords for ``ase.build.bulk``; ``symbol``, the natural word for an element, is its ``name``."""
    kw = dict(spec)
    if "symbol" in kw:
        kw["name"] = kw.pop("symbol")
    return kw


def build_structure(spec: Dict[str, Any], base_dir: str = ".", origin: str = ""):
    """``ase.Atoms`` from a structure spec (``bulk``, ``molecule`` or ``file``; see the module doc)."""
    import ase.io
    from ase.build import bulk, molecule

    path, _, key = origin.partition(", ")
    key = f"{key}.structure" if key else "structure"
    if "bulk" in spec:
        kw = _bulk_kwargs(_mapping(spec["bulk"], path, f"{key}.bulk"))
        _unknown(kw, set(inspect.signature(bulk).parameters) - {"basis"}, path, f"{key}.bulk")
        try:
            return bulk(**kw)
        except Exception as exc:
            raise _err(path, f"{key}.bulk", f"ase.build.bulk failed ({type(exc).__name__}: {exc})") from None
    if "molecule" in spec:
        name = spec["molecule"]
        if isinstance(name, dict):
            _unknown(name, {"name", "vacuum"}, path, f"{key}.molecule")
            kw = dict(name)
            name = kw.pop("name", None)
        else:
            kw = {}
        try:
            return molecule(str(name), **kw)
        except Exception as exc:
            raise _err(path, f"{key}.molecule", f"unknown molecule {name!r} ({type(exc).__name__}: {exc})") from None
    if "file" in spec:
        file = os.path.join(base_dir, str(spec["file"]))
        if not os.path.exists(file):
            raise _err(path, f"{key}.file", f"file not found: {file}")
        try:
            atoms = ase.io.read(file, index=spec.get("index", 0))
        except Exception as exc:
            raise _err(path, f"{key}.file", f"cannot read {file} ({type(exc).__name__}: {exc})") from None
        atoms.calc = None
        return atoms
    raise _err(path, key, "give one of bulk, molecule or file")


def _parse_property(name: str, entry, path: str, key: str) -> Property:
    kind = property_kind(name)
    if kind is None:
        raise _err(path, key, "unknown property; known: lattice_constant, lattice_a/b/c, volume_per_atom, "
                              "bulk_modulus, bulk_modulus_derivative, C11..C66, vacancy_formation_energy, "
                              "surface_energy*, bond*, angle*, frequencies")
    entry = _mapping(entry, path, key)
    _unknown(entry, _COMMON | _PARAMS.get(kind, set()), path, key)
    if "value" not in entry:
        raise _err(path, f"{key}.value", "missing (the reference value)")
    dimension = _DIMENSION[kind]
    unit = entry.get("unit", CANONICAL[dimension])
    if unit is None:
        unit = ""
    try:
        if kind == "frequencies":
            raw = entry["value"]
            if not isinstance(raw, (list, tuple)) or not raw:
                raise _err(path, f"{key}.value", "expected a list of frequencies")
            value: Any = sorted(to_canonical(_number(v, path, f"{key}.value", positive=True), unit, dimension)
                                for v in raw)
        else:
            value = to_canonical(_number(entry["value"], path, f"{key}.value"), unit, dimension)
    except KeyError as exc:
        raise _err(path, f"{key}.unit", exc.args[0]) from None
    tolerance = DEFAULT_TOLERANCE[kind]
    if "tolerance" in entry:
        tolerance = _number(entry["tolerance"], path, f"{key}.tolerance", positive=True)
    params: Dict[str, Any] = {}
    if kind == "vacancy":
        if "supercell" in entry:
            params["supercell"] = _supercell(entry["supercell"], path, f"{key}.supercell")
        params["relax"] = bool(entry.get("relax", True))
    elif kind == "surface":
        if "miller" not in entry:
            raise _err(path, f"{key}.miller", "missing (Miller indices of the surface, e.g. [1, 0, 0])")
        params["miller"] = _int_list(entry["miller"], 3, path, f"{key}.miller")
        if not any(params["miller"]):
            raise _err(path, f"{key}.miller", "Miller indices [0, 0, 0] name no surface")
        params["layers"] = int(_number(entry.get("layers", 8), path, f"{key}.layers", positive=True))
        params["vacuum"] = _number(entry.get("vacuum", 10.0), path, f"{key}.vacuum", positive=True)
        params["relax"] = bool(entry.get("relax", True))
    elif kind in ("bond", "angle"):
        n = 2 if kind == "bond" else 3
        if "atoms" not in entry:
            raise _err(path, f"{key}.atoms", f"missing (the {n} atom indices, counted from 0)")
        params["atoms"] = _int_list(entry["atoms"], n, path, f"{key}.atoms")
    scale = 1.0 / to_canonical(1.0, unit, dimension)
    return Property(name, kind, value, CANONICAL[dimension], tolerance, str(entry.get("source", "") or ""),
                    str(entry.get("note", "") or ""), params, str(unit), scale)


def _parse_system(name: str, entry, path: str, base_dir: str) -> System:
    key = f"systems.{name}"
    entry = _mapping(entry, path, key)
    _unknown(entry, {"structure", "kind", "stable", "phonons", "md", "source", "note", "description", "properties"},
             path, key)
    if "structure" not in entry:
        raise _err(path, f"{key}.structure", "missing (bulk, molecule or file)")
    spec = _mapping(entry["structure"], path, f"{key}.structure")
    _unknown(spec, {"bulk", "molecule", "file", "index"}, path, f"{key}.structure")
    if sum(k in spec for k in ("bulk", "molecule", "file")) != 1:
        raise _err(path, f"{key}.structure", "give exactly one of bulk, molecule or file")
    origin = f"{path}, {key}"
    atoms = build_structure(spec, base_dir, origin)
    kind = entry.get("kind", "crystal" if atoms.pbc.all() else "molecule")
    if kind not in ("crystal", "molecule"):
        raise _err(path, f"{key}.kind", f"must be 'crystal' or 'molecule', got {kind!r}")
    if kind == "crystal" and not atoms.pbc.all():
        raise _err(path, f"{key}.kind", "a crystal needs a cell periodic in all three directions")
    props_raw = _mapping(entry.get("properties", {}) or {}, path, f"{key}.properties")
    properties = {}
    for pname, pentry in props_raw.items():
        prop = _parse_property(str(pname), pentry, path, f"{key}.properties.{pname}")
        allowed = _CRYSTAL_KINDS if kind == "crystal" else _MOLECULE_KINDS
        if prop.kind not in allowed:
            raise _err(path, f"{key}.properties.{pname}", f"not a property of a {kind}")
        for i in prop.params.get("atoms", []):
            if not 0 <= i < len(atoms):
                raise _err(path, f"{key}.properties.{pname}.atoms",
                           f"atom index {i} out of range (the structure has {len(atoms)} atoms)")
        properties[str(pname)] = prop
    phonons = None
    if kind == "crystal":
        raw = entry.get("phonons", {})
        if raw is not False:
            raw = _mapping(raw if raw is not True else {}, path, f"{key}.phonons")
            _unknown(raw, {"supercell", "mesh", "imaginary_tolerance", "delta"}, path, f"{key}.phonons")
            phonons = {}
            if "supercell" in raw:
                phonons["supercell"] = _supercell(raw["supercell"], path, f"{key}.phonons.supercell")
            if "mesh" in raw:
                phonons["mesh"] = int(_number(raw["mesh"], path, f"{key}.phonons.mesh", positive=True))
            if "imaginary_tolerance" in raw:
                phonons["imaginary_tolerance"] = _number(raw["imaginary_tolerance"], path,
                                                         f"{key}.phonons.imaginary_tolerance", positive=True)
            if "delta" in raw:
                phonons["delta"] = _number(raw["delta"], path, f"{key}.phonons.delta", positive=True)
    elif "phonons" in entry:
        raise _err(path, f"{key}.phonons", "phonons are computed for crystals only")
    md_raw = _mapping(entry.get("md", {}) or {}, path, f"{key}.md")
    _unknown(md_raw, {"temperatures", "time_ps", "timestep_fs", "supercell"}, path, f"{key}.md")
    md: Dict[str, Any] = {}
    if "temperatures" in md_raw:
        temps = md_raw["temperatures"]
        temps = temps if isinstance(temps, (list, tuple)) else [temps]
        md["temperatures"] = [_number(t, path, f"{key}.md.temperatures", positive=True) for t in temps]
    for k in ("time_ps", "timestep_fs"):
        if k in md_raw:
            md[k] = _number(md_raw[k], path, f"{key}.md.{k}", positive=True)
    if "supercell" in md_raw:
        md["supercell"] = _supercell(md_raw["supercell"], path, f"{key}.md.supercell")
    stable = entry.get("stable", True)
    if not isinstance(stable, bool):
        raise _err(path, f"{key}.stable", f"expected true or false, got {stable!r}")
    return System(str(name), dict(spec), kind, properties, base_dir, stable, phonons, md,
                  str(entry.get("source", "") or ""), origin)


def load_reference(path: str) -> Reference:
    """Parse a reference file; every mistake is an :class:`InputError` naming ``path`` and the key."""
    import yaml

    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError("reference file not found", path)
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"not valid YAML{where} ({getattr(exc, 'problem', None) or exc})", path) from None
    except UnicodeDecodeError:
        raise InputError("not a text file (expected YAML)", path) from None
    if not isinstance(raw, dict):
        raise InputError("expected a YAML mapping with a 'systems' key", path)
    _unknown(raw, {"format", "source", "description", "systems", "note"}, path, "")
    if raw.get("format", FORMAT_VERSION) != FORMAT_VERSION:
        raise _err(path, "format", f"unsupported version {raw.get('format')!r}; this mlip reads {FORMAT_VERSION}")
    if "systems" not in raw:
        raise _err(path, "systems", "missing (the structures and their reference values)")
    systems_raw = _mapping(raw["systems"], path, "systems")
    if not systems_raw:
        raise _err(path, "systems", "no systems")
    base_dir = os.path.dirname(os.path.abspath(path))
    systems = [_parse_system(str(n), e, path, base_dir) for n, e in systems_raw.items()]
    return Reference(path, systems, str(raw.get("source", "") or ""), str(raw.get("description", "") or ""))
