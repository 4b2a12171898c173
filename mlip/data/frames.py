"""Read labelled structures from ASE-readable files and rMD17-style ``.npz`` archives.

A :class:`Frame` is one structure with optional labels, already converted to mlip's units
(eV, Angstrom, eV/A, eV/A^3 with ASE's sign). Readers check every frame and raise
:class:`~mlip.errors.InputError` naming the file, the frame and the key.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from mlip.errors import InputError

KCAL_PER_MOL_IN_EV = 0.0433641043  # 1 kcal/mol in eV
UNIT_FACTORS = {"eV": 1.0, "kcal/mol": KCAL_PER_MOL_IN_EV, "meV": 1e-3,
                "Hartree": 27.211386245988, "kJ/mol": 0.0103642688}
LENGTH_FACTORS = {"A": 1.0, "Angstrom": 1.0, "Bohr": 0.529177210903, "nm": 10.0}


@dataclass
class Frame:
    """One structure in mlip units. Labels are ``None`` when the file does not carry them."""

    positions: np.ndarray            # [N, 3] Angstrom
    numbers: np.ndarray              # [N] atomic numbers
    cell: np.ndarray                 # [3, 3] Angstrom, rows a, b, c; zeros if no cell
    pbc: np.ndarray                  # [3] bool
    energy: Optional[float] = None   # eV
    forces: Optional[np.ndarray] = None  # [N, 3] eV/A
    stress: Optional[np.ndarray] = None  # [3, 3] eV/A^3, ASE sign (positive = tensile)
    info: Dict[str, object] = field(default_factory=dict)
    source: str = ""                 # "file:frame", for error messages
    total_charge: Optional[float] = None  # e; None: not given (neutral, 0)
    dipole: Optional[np.ndarray] = None   # [3] e*A
    polarizability: Optional[np.ndarray] = None  # [3, 3] A^3 (polarizability volume), symmetric
    structure_output: Optional[np.ndarray] = None  # [D] generic per-structure target (e3nn order)
    atom_output: Optional[np.ndarray] = None       # [N, D] generic per-atom target (e3nn order)

    def __len__(self) -> int:
        return len(self.numbers)


@dataclass
class LabelKeys:
    """Where labels live: ``atoms.info``/``atoms.arrays`` key names, or the attached calculator."""

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"
    total_charge: str = "charge"        # atoms.info; absent = neutral
    dipole: str = "dipole"              # atoms.info or calculator, 3 components, e * length unit
    polarizability: str = "polarizability"  # atoms.info, 9 (3x3) or 6 (Voigt) components, length unit^3
    structure_output: str = "structure_output"  # atoms.info, the generic output's components
    atom_output: str = "atom_output"    # atoms.arrays, [N, D] (or [N] for D = 1)


@dataclass
class Units:
    """Units of the labels in the file; everything is converted to eV and Angstrom on reading."""

    energy: str = "eV"
    length: str = "A"

    def factors(self) -> tuple:
        if self.energy not in UNIT_FACTORS:
            raise InputError(f"unknown energy unit '{self.energy}'; allowed: {sorted(UNIT_FACTORS)}",
                             key="units.energy")
        if self.length not in LENGTH_FACTORS:
            raise InputError(f"unknown length unit '{self.length}'; allowed: {sorted(LENGTH_FACTORS)}",
                             key="units.length")
        return UNIT_FACTORS[self.energy], LENGTH_FACTORS[self.length]


def _voigt_to_matrix(s: np.ndarray) -> np.ndarray:
    """ASE Voigt order xx, yy, zz, yz, xz, xy -> symmetric 3x3."""
    xx, yy, zz, yz, xz, xy = s
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def _as_stress(value, path: str, index: int, key: str) -> np.ndarray:
    s = np.asarray(value, dtype=np.float64).reshape(-1)
    if s.size == 6:
        return _voigt_to_matrix(s)
    if s.size == 9:
        return s.reshape(3, 3)
    raise InputError(f"stress must have 6 (Voigt) or 9 components, got {s.size}", path, index, key)


def _as_polarizability(value, path: str, index: int, key: str) -> np.ndarray:
    """9 components (3x3) or 6 (Voigt xx yy zz yz xz xy) -> symmetric 3x3; an asymmetric one
    beyond rounding (1e-6 relative) is an error (a wrong layout, not a polarizability)."""
    a = _as_stress(value, path, index, key)
    if np.all(np.isfinite(a)) and np.abs(a - a.T).max(initial=0.0) > 1e-6 * max(np.abs(a).max(initial=0.0), 1e-12):
        raise InputError("polarizability is not symmetric; give the 3x3 tensor row by row or its 6 Voigt "
                         "components (xx yy zz yz xz xy)", path, index, key)
    return 0.5 * (a + a.T)


def _as_vector(value, size: int, what: str, path: str, index: int, key: str) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if size and v.size != size:
        raise InputError(f"{what} must have {size} components, got {v.size}", path, index, key)
    return v


def frame_from_atoms(atoms, keys: LabelKeys = LabelKeys(), units: Units = Units(), path: str = "<atoms>",
                     index: int = 0) -> Frame:
    """Convert one ``ase.Atoms`` to a :class:`Frame`, looking for labels in ``info``/``arrays``
    first and then in an attached SinglePointCalculator (where ASE >= 3.23 puts them)."""
    e_fac, l_fac = units.factors()
    calc_results = dict(getattr(atoms.calc, "results", {}) or {}) if atoms.calc is not None else {}

    def lookup(key: str, per_atom: bool):
        if per_atom and key in atoms.arrays:
            return atoms.arrays[key]
        if not per_atom and key in atoms.info:
            return atoms.info[key]
        # ASE's extxyz reader renames the standard properties to the calculator's names
        return calc_results.get(key)

    positions = np.asarray(atoms.positions, dtype=np.float64) * l_fac
    cell = np.asarray(atoms.cell.array, dtype=np.float64) * l_fac
    pbc = np.asarray(atoms.pbc, dtype=bool).copy()
    energy = lookup(keys.energy, per_atom=False)
    forces = lookup(keys.forces, per_atom=True)
    stress = lookup(keys.stress, per_atom=False)
    frame = Frame(
        positions=positions,
        numbers=np.asarray(atoms.numbers, dtype=np.int64),
        cell=cell,
        pbc=pbc,
        energy=None if energy is None else float(np.asarray(energy).reshape(())) * e_fac,
        forces=None if forces is None else np.asarray(forces, dtype=np.float64) * (e_fac / l_fac),
        stress=None if stress is None else _as_stress(stress, path, index, keys.stress) * (e_fac / l_fac ** 3),
        info={k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float))},
        source=f"{path}:{index}",
    )
    charge = atoms.info.get(keys.total_charge)
    if charge is not None:
        try:
            frame.total_charge = float(np.asarray(charge, dtype=np.float64).reshape(()))
        except (TypeError, ValueError):
            raise InputError(f"total charge must be one number, got {charge!r}", path, index,
                             keys.total_charge) from None
    dipole = lookup(keys.dipole, per_atom=False)
    if dipole is not None:  # e * length
        frame.dipole = _as_vector(dipole, 3, "dipole", path, index, keys.dipole) * l_fac
    pol = lookup(keys.polarizability, per_atom=False)
    if pol is not None:  # polarizability volume, length^3
        frame.polarizability = _as_polarizability(pol, path, index, keys.polarizability) * l_fac ** 3
    generic = lookup(keys.structure_output, per_atom=False)
    if generic is not None:  # label units, no conversion
        frame.structure_output = _as_vector(generic, 0, "structure_output", path, index, keys.structure_output)
    generic = lookup(keys.atom_output, per_atom=True)
    if generic is not None:
        generic = np.asarray(generic, dtype=np.float64)
        frame.atom_output = generic.reshape(len(atoms), -1) if generic.size else generic.reshape(len(atoms), 0)
    validate_frame(frame, path, index, keys)
    return frame


def validate_frame(frame: Frame, path: str, index: int, keys: LabelKeys = LabelKeys()) -> None:
    """Reject frames that would silently poison training: NaN/inf, wrong shapes, flat cells."""
    n = len(frame.numbers)
    if n == 0:
        raise InputError("structure has no atoms; remove it from the file", path, index, "numbers")
    if frame.positions.shape != (n, 3):
        raise InputError(f"positions have shape {frame.positions.shape}, expected ({n}, 3)", path, index, "positions")
    if not np.all(np.isfinite(frame.positions)):
        raise InputError("positions contain NaN or inf", path, index, "positions")
    if frame.pbc.any():
        periodic = frame.cell[frame.pbc]
        # the periodic lattice vectors must span a non-degenerate space
        if np.linalg.matrix_rank(periodic, tol=1e-8) < periodic.shape[0]:
            raise InputError("cell has zero volume along its periodic directions (pbc="
                             f"{frame.pbc.tolist()})", path, index, "cell")
    if frame.energy is not None and not math.isfinite(frame.energy):
        raise InputError("energy is NaN or inf", path, index, keys.energy)
    if frame.forces is not None:
        if frame.forces.shape != (n, 3):
            raise InputError(f"forces have shape {frame.forces.shape}, expected ({n}, 3)", path, index, keys.forces)
        if not np.all(np.isfinite(frame.forces)):
            raise InputError("forces contain NaN or inf", path, index, keys.forces)
    if frame.stress is not None and not np.all(np.isfinite(frame.stress)):
        raise InputError("stress contains NaN or inf", path, index, keys.stress)
    if frame.total_charge is not None and not math.isfinite(frame.total_charge):
        raise InputError("total charge is NaN or inf", path, index, keys.total_charge)
    for name in ("dipole", "polarizability", "structure_output", "atom_output"):
        value = getattr(frame, name)
        if value is not None and not np.all(np.isfinite(value)):
            raise InputError(f"{name} contains NaN or inf", path, index, getattr(keys, name))
    if frame.atom_output is not None and frame.atom_output.shape[0] != n:
        raise InputError(f"atom_output has {frame.atom_output.shape[0]} rows, expected {n} (one per atom)",
                         path, index, keys.atom_output)


@dataclass
class NpzKeys:
    """Array names in an rMD17-style ``.npz``: one array per quantity, frames along axis 0."""

    positions: str = "coords"
    energy: str = "energies"
    forces: str = "forces"
    numbers: str = "nuclear_charges"


def read_npz(path: str, keys: NpzKeys = NpzKeys(), units: Units = Units(energy="kcal/mol"),
             index: Optional[slice] = None) -> List[Frame]:
    """Read an rMD17-style archive (molecules, no cell). Default units are rMD17's kcal/mol."""
    e_fac, l_fac = units.factors()
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except Exception as exc:  # zip or header corruption
        raise InputError(f"cannot read as .npz ({exc})", path) from None
    with archive:
        for name in (keys.positions, keys.numbers):
            if name not in archive:
                raise InputError(f"array not found; the file has {sorted(archive.files)}", path, key=name)
        coords = np.asarray(archive[keys.positions], dtype=np.float64)
        numbers = np.asarray(archive[keys.numbers], dtype=np.int64)
        energies = archive[keys.energy] if keys.energy in archive else None
        forces = archive[keys.forces] if keys.forces in archive else None
    if coords.ndim != 3 or coords.shape[2] != 3:
        raise InputError(f"expected [frames, atoms, 3], got {coords.shape}", path, key=keys.positions)
    _check_npz_shapes(path, keys, coords, numbers, energies, forces)
    frames = []
    rng = range(len(coords))
    chosen = rng[index] if index is not None else rng
    for i in chosen:
        numbers_i = numbers[i] if numbers.ndim == 2 else numbers
        frame = Frame(
            positions=coords[i] * l_fac,
            numbers=numbers_i,
            cell=np.zeros((3, 3)),
            pbc=np.zeros(3, dtype=bool),
            energy=None if energies is None else float(np.asarray(energies[i]).reshape(())) * e_fac,
            forces=None if forces is None else np.asarray(forces[i], dtype=np.float64) * (e_fac / l_fac),
            source=f"{path}:{i}",
        )
        validate_frame(frame, path, i, LabelKeys(energy=keys.energy, forces=keys.forces))
        frames.append(frame)
    return frames


def _check_npz_shapes(path: str, keys: NpzKeys, coords: np.ndarray, numbers: np.ndarray,
                      energies: Optional[np.ndarray], forces: Optional[np.ndarray]) -> None:
    """Every per-frame array of an rMD17-style archive must match ``coords`` [frames, atoms, 3]."""
    n_frames, n_atoms = coords.shape[:2]
    what = f"{keys.positions} has {n_frames} frames of {n_atoms} atoms"
    if numbers.shape not in ((n_atoms,), (n_frames, n_atoms)):
        raise InputError(f"shape {numbers.shape}, expected ({n_atoms},) or ({n_frames}, {n_atoms}): {what}",
                         path, key=keys.numbers)
    if energies is not None and (np.shape(energies)[:1] != (n_frames,) or np.size(energies) != n_frames):
        raise InputError(f"shape {np.shape(energies)}, expected ({n_frames},) (one energy per frame): {what}",
                         path, key=keys.energy)
    if forces is not None and np.shape(forces) != coords.shape:
        raise InputError(f"shape {np.shape(forces)}, expected {coords.shape}: {what}", path, key=keys.forces)


def read_frames(path: str, keys: Optional[LabelKeys] = None, units: Optional[Units] = None,
                index: str = ":", npz_keys: Optional[NpzKeys] = None, fmt: Optional[str] = None,
                required: Sequence[str] = ()) -> List[Frame]:
    """Read every frame of ``path`` (any format ``ase.io.read`` knows, or ``.npz``).

    ``index`` is an ASE index string such as ``":"`` or ``"0:100"``. ``required`` lists labels
    ("energy", "forces", "stress") that every frame must carry; a frame without one is an error
    naming the file, the frame and the key the config told us to look for.
    """
    if not os.path.exists(path):
        raise InputError("file not found", path)
    if os.path.isdir(path) and not _is_ase_bundle(path):
        raise InputError("is a folder without manifest.json: a folder of HDF5 shards needs the manifest.json "
                         "that `mlip preprocess FILE -o FOLDER` writes; otherwise give a data file", path)
    if path.endswith(".npz"):
        sl = _parse_slice(index)
        npz_keys = npz_keys or NpzKeys()
        frames = read_npz(path, npz_keys, units or Units(energy="kcal/mol"), sl)
        check_required(frames, required, path, LabelKeys(energy=npz_keys.energy, forces=npz_keys.forces))
        return frames
    import ase.io

    keys = keys or LabelKeys()
    units = units or Units()
    try:
        atoms_list = ase.io.read(path, index=index, format=fmt)
    except Exception as exc:
        import re

        frame = _first_bad_frame(path, index, fmt)
        item = re.search(r"info item (\w+)", _first_line(exc))  # ASE names a malformed key this way
        raise InputError(f"cannot parse ({type(exc).__name__}: {_first_line(exc)})" +
                         ("" if frame is None else "; frames count from 0"), path, frame,
                         item.group(1) if item else None) from None
    if not isinstance(atoms_list, list):
        atoms_list = [atoms_list]
    if not atoms_list:
        raise InputError("no structures in file", path)
    start = _parse_slice(index).start or 0
    frames = [frame_from_atoms(a, keys, units, path, start + i) for i, a in enumerate(atoms_list)]
    check_required(frames, required, path, keys)
    return frames


# the labels a Frame may carry (its attributes; None when absent)
LABEL_NAMES = ("energy", "forces", "stress", "dipole", "polarizability", "structure_output", "atom_output")


def check_required(frames: Sequence[Frame], required: Sequence[str], path: str, keys: LabelKeys) -> None:
    """Raise for the first frame that lacks a label the caller needs."""
    for name in required:
        if name not in LABEL_NAMES:
            raise ValueError(f"unknown label '{name}'")
        for i, frame in enumerate(frames):
            if getattr(frame, name) is None:
                where = frame.source.rpartition(":")[2]
                raise InputError(f"{name} label missing (looked in atoms.info/atoms.arrays and the attached "
                                 f"calculator)", path, int(where) if where.isdigit() else i, getattr(keys, name))


def _is_ase_bundle(path: str) -> bool:
    """An ASE BundleTrajectory (a folder ASE reads as a trajectory)."""
    from ase.io.bundletrajectory import BundleTrajectory

    try:
        return bool(BundleTrajectory.is_bundle(path))
    except Exception:
        return False


def _first_bad_frame(path: str, index: str, fmt: Optional[str]) -> Optional[int]:
    """The number of the first frame that ASE cannot read, found by reading frame by frame
    (only after a failed read, so that a good file is parsed once); None if that finds none."""
    import ase.io

    sl = _parse_slice(index)
    start, step = sl.start or 0, sl.step or 1
    if start < 0 or step < 1:
        return None  # counted from the end: no cheap way to number the frame
    count = 0
    try:
        for _ in ase.io.iread(path, index=index, format=fmt):
            count += 1
    except Exception:
        return start + count * step
    return None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def _parse_slice(index: str) -> slice:
    if isinstance(index, slice):
        return index
    if index.strip() == ":":
        return slice(None)
    parts = [int(p) if p.strip() else None for p in index.split(":")]
    if len(parts) == 1:
        return slice(parts[0], parts[0] + 1)
    return slice(*parts)


def frames_from_atoms_list(atoms_list: Sequence, keys: Optional[LabelKeys] = None,
                           units: Optional[Units] = None) -> List[Frame]:
    """Convert in-memory ``ase.Atoms`` (e.g. from a script) to frames."""
    return [frame_from_atoms(a, keys or LabelKeys(), units or Units(), "<atoms>", i) for i, a in enumerate(atoms_list)]


def chemical_symbols_to_types(type_names: Sequence[str]) -> Dict[int, int]:
    """Map atomic number -> type index, in the order of the declared chemical symbols."""
    from ase.data import atomic_numbers

    mapping = {}
    for i, name in enumerate(type_names):
        if name not in atomic_numbers:
            raise InputError(f"'{name}' is not a chemical symbol", key="type_names")
        mapping[atomic_numbers[name]] = i
    return mapping
