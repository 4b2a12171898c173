"""``mlip check``: a certificate that an exported model is a physically sane potential.

For each structure (the user's, or built-in ones made of the model's own species: a small
molecule and a small triclinic periodic cell, smaller than twice r_max so atoms see their own
images) it checks

* symmetry: energy invariance and force / stress equivariance under a random rotation, a
  reflection (skipped for SO(3)-only models, ``parity: false``), a translation (periodic
  structures are wrapped back into the cell), a permutation of the atoms and, for periodic
  cells, an equivalent choice of lattice vectors;
* derivatives: forces and stress against central finite differences of the energy (a
  4-point stencil, O(h^4));
* energy conservation: drift of the total energy over a short NVE run (ASE VelocityVerlet);

and, for each pair of species, smoothness as a neighbour crosses r_max (energy and force
continuity of a dimer at r_max -/+ eta), plus a probe atom crossing r_max of the outermost atom
of each molecule.

Tolerances depend on the model's precision (``model_dtype`` in the exported metadata). Each
check reports its error and tolerance; :func:`run_checks` returns the rows and the CLI exits
non-zero when one fails.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
from ase.calculators.calculator import all_changes

TOLERANCES = {
    # eps_e: energy, per atom (eV); eps_f: forces relative to max(1, max|F|); eps_s likewise for stress
    "float64": dict(eps_e=1e-8, eps_f=1e-8, eps_s=1e-8, fd_h=1e-3, fd_f=1e-6, fd_s=1e-6,
                    smooth_e=1e-6, smooth_f=1e-4, drift_floor=1e-5),
    "float32": dict(eps_e=2e-5, eps_f=2e-4, eps_s=2e-4, fd_h=1e-2, fd_f=2e-3, fd_s=2e-3,
                    smooth_e=1e-4, smooth_f=1e-3, drift_floor=2e-4),
}
# the total-energy drift allowed over the NVE run, as a fraction of the potential energy's range
DRIFT_FRACTION = 0.05


@dataclass
class CheckResult:
    check: str
    structure: str
    error: float
    tolerance: float
    passed: bool
    note: str = ""

    @property
    def status(self) -> str:
        if self.note.startswith("skipped"):
            return "SKIP"
        return "PASS" if self.passed else "FAIL"


class Evaluator:
    """Energy, per-atom energies, forces and stress of ``atoms`` through an MLIPCalculator."""

    def __init__(self, calc):
        self.calc = calc

    def __call__(self, atoms, stress: bool = False) -> Dict[str, np.ndarray]:
        props = ["energy", "energies", "forces"] + (["stress"] if stress else [])
        self.calc.reset()
        self.calc.calculate(atoms, props, all_changes)
        res = self.calc.results
        out = {"energy": float(res["energy"]), "energies": np.array(res["energies"]),
               "forces": np.array(res["forces"])}
        if stress:
            out["stress"] = _voigt_to_matrix(np.asarray(res["stress"]))
        return out


def _voigt_to_matrix(s: np.ndarray) -> np.ndarray:
    xx, yy, zz, yz, xz, xy = s
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# ----------------------------------------------------------------------------------------------
# built-in structures


def builtin_structures(type_names: Sequence[str], r_max: float, seed: int = 0) -> list:
    """A 6-atom molecule and a 4-atom triclinic periodic cell made of the model's species."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    species = [type_names[i % len(type_names)] for i in range(6)]
    d_min, d_max = 0.45 * r_max, 0.7 * r_max
    pos = [np.zeros(3)]
    while len(pos) < 6:
        anchor = pos[rng.integers(len(pos))]
        v = rng.normal(size=3)
        cand = anchor + v / np.linalg.norm(v) * rng.uniform(d_min, d_max)
        if min(np.linalg.norm(cand - p) for p in pos) >= d_min:
            pos.append(cand)
    molecule = Atoms(species, positions=np.array(pos))
    molecule.info["name"] = "builtin-molecule"

    a = 0.9 * r_max
    cell = a * np.array([[1.0, 0.0, 0.0], [0.22, 0.97, 0.0], [0.12, 0.18, 0.93]])
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], dtype=float)
    crystal = Atoms([type_names[i % len(type_names)] for i in range(4)], scaled_positions=frac, cell=cell, pbc=True)
    crystal.positions += rng.normal(scale=0.04 * r_max, size=(4, 3))
    crystal.info["name"] = "builtin-triclinic"
    return [molecule, crystal]


def _name(atoms, index: int) -> str:
    return str(atoms.info.get("name", f"structure-{index}"))


# ----------------------------------------------------------------------------------------------
# individual checks


def _scales(ref: Dict[str, np.ndarray], n: int):
    f_scale = max(1.0, float(np.abs(ref["forces"]).max()) if n else 1.0)
    s_scale = max(1.0, float(np.abs(ref["stress"]).max())) if "stress" in ref else 1.0
    return f_scale, s_scale


def symmetry_checks(ev: Evaluator, atoms, name: str, tol: dict, rng: np.random.Generator,
                    parity: bool = True) -> List[CheckResult]:
    periodic = bool(atoms.pbc.all())
    n = len(atoms)
    ref = ev(atoms, stress=periodic)
    f_scale, s_scale = _scales(ref, n)
    tol_e = tol["eps_e"] * max(1, n)
    tol_f = tol["eps_f"] * f_scale
    tol_s = tol["eps_s"] * s_scale
    rows: List[CheckResult] = []

    def compare(label: str, other: Dict[str, np.ndarray], forces: np.ndarray, stress: Optional[np.ndarray],
                energies: Optional[np.ndarray] = None):
        rows.append(CheckResult(f"{label}: energy", name, abs(other["energy"] - ref["energy"]), tol_e,
                                abs(other["energy"] - ref["energy"]) <= tol_e))
        err_f = float(np.abs(other["forces"] - forces).max()) if n else 0.0
        rows.append(CheckResult(f"{label}: forces", name, err_f, tol_f, err_f <= tol_f))
        if stress is not None:
            err_s = float(np.abs(other["stress"] - stress).max())
            rows.append(CheckResult(f"{label}: stress", name, err_s, tol_s, err_s <= tol_s))
        if energies is not None:
            err_a = float(np.abs(other["energies"] - energies).max()) if n else 0.0
            rows.append(CheckResult(f"{label}: atomic energies", name, err_a, tol["eps_e"] * 10,
                                    err_a <= tol["eps_e"] * 10))

    def transformed(matrix: np.ndarray):
        a = atoms.copy()
        a.positions = atoms.positions @ matrix.T
        if periodic or atoms.pbc.any():
            a.set_cell(atoms.cell.array @ matrix.T, scale_atoms=False)
        return a

    rot = random_rotation(rng)
    out = ev(transformed(rot), stress=periodic)
    compare("rotation", out, ref["forces"] @ rot.T, rot @ ref["stress"] @ rot.T if periodic else None)

    mirror = rot @ np.diag([1.0, 1.0, -1.0])
    if parity:
        out = ev(transformed(mirror), stress=periodic)
        compare("reflection", out, ref["forces"] @ mirror.T, mirror @ ref["stress"] @ mirror.T if periodic else None)
    else:
        rows.append(CheckResult("reflection", name, 0.0, 0.0, True, "skipped: SO(3)-only model (parity: false)"))

    a = atoms.copy()
    a.positions = a.positions + rng.uniform(-3.0, 3.0, size=3)
    if periodic:
        a.wrap()
    out = ev(a, stress=periodic)
    compare("translation", out, ref["forces"], ref["stress"] if periodic else None, ref["energies"])

    perm = rng.permutation(n)
    out = ev(atoms[perm], stress=periodic)
    compare("permutation", out, ref["forces"][perm], ref["stress"] if periodic else None, ref["energies"][perm])

    if periodic:
        # an equivalent lattice basis (unimodular change: a, b + a, c - b) describes the same crystal
        a = atoms.copy()
        c = atoms.cell.array
        a.set_cell(np.array([c[0], c[1] + c[0], c[2] - c[1]]), scale_atoms=False)
        out = ev(a, stress=True)
        compare("cell basis", out, ref["forces"], ref["stress"], ref["energies"])
    return rows


def _fd_derivative(f, h: float) -> float:
    """4-point central difference of a scalar function at 0."""
    return (8.0 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12.0 * h)


def finite_difference_checks(ev: Evaluator, atoms, name: str, tol: dict, rng: np.random.Generator,
                             max_components: int = 12) -> List[CheckResult]:
    periodic = bool(atoms.pbc.all())
    n = len(atoms)
    ref = ev(atoms, stress=periodic)
    f_scale, s_scale = _scales(ref, n)
    h = tol["fd_h"]
    rows = []
    comps = [(i, d) for i in range(n) for d in range(3)]
    if len(comps) > max_components:
        comps = [comps[k] for k in rng.choice(len(comps), max_components, replace=False)]
    err = 0.0
    for i, d in comps:
        def energy(delta, i=i, d=d):
            a = atoms.copy()
            a.positions[i, d] += delta
            return ev(a)["energy"]
        fd = -_fd_derivative(energy, h)
        err = max(err, abs(fd - ref["forces"][i, d]))
    tol_f = tol["fd_f"] * f_scale
    rows.append(CheckResult("forces = -dE/dr (finite diff.)", name, err, tol_f, err <= tol_f,
                            f"{len(comps)} components"))
    if periodic:
        volume = abs(np.linalg.det(atoms.cell.array))
        err = 0.0
        for i, j in [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]:
            def energy(eps, i=i, j=j):
                # symmetric strain with component (i, j) = eps: eps/2 on both sides off the diagonal
                strain = np.eye(3)
                if i == j:
                    strain[i, i] += eps
                else:
                    strain[i, j] += eps / 2.0
                    strain[j, i] += eps / 2.0
                a = atoms.copy()
                a.set_cell(atoms.cell.array @ strain, scale_atoms=False)
                a.positions = atoms.positions @ strain
                return ev(a)["energy"]
            fd = _fd_derivative(energy, h) / volume
            err = max(err, abs(fd - ref["stress"][i, j]))
        tol_s = tol["fd_s"] * s_scale
        rows.append(CheckResult("stress = dE/de / V (finite diff.)", name, err, tol_s, err <= tol_s))
    return rows


def nve_check(calc, atoms, name: str, tol: dict, steps: int = 100, timestep_fs: float = 0.5,
              temperature_K: float = 300.0, seed: int = 0) -> CheckResult:
    """Total-energy drift of a VelocityVerlet run, relative to the potential energy's range."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    a = atoms.copy()
    a.calc = calc
    MaxwellBoltzmannDistribution(a, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    Stationary(a)
    dyn = VelocityVerlet(a, timestep=timestep_fs * units.fs)
    epot, etot = [], []

    def record():
        e = a.get_potential_energy()
        epot.append(e)
        etot.append(e + a.get_kinetic_energy())
    record()
    dyn.attach(record, interval=1)
    dyn.run(steps)
    etot_arr = np.array(etot)
    n = len(a)
    drift = float(np.abs(etot_arr - etot_arr[0]).max())
    pe_range = float(np.ptp(epot))
    allowed = max(DRIFT_FRACTION * pe_range, tol["drift_floor"] * n)
    ok = drift <= allowed and bool(np.all(np.isfinite(etot_arr)))
    return CheckResult("NVE energy drift", name, drift, allowed, ok,
                       f"{steps} steps x {timestep_fs} fs; PE range {pe_range:.3g} eV")


def smoothness_checks(ev: Evaluator, type_names: Sequence[str], r_max: float, tol: dict,
                      molecules: Sequence = (), eta: float = 1e-6, max_pairs: int = 6) -> List[CheckResult]:
    """Energy and forces just inside and just outside r_max must agree (the model is smooth
    where a neighbour enters or leaves the cutoff sphere)."""
    from ase import Atoms

    rows = []
    pairs = list(itertools.combinations_with_replacement(type_names, 2))[:max_pairs]
    for s1, s2 in pairs:
        def probe(r, s1=s1, s2=s2):
            return ev(Atoms([s1, s2], positions=[[0.0, 0.0, 0.0], [r, 0.0, 0.0]]))
        rows.append(_compare_across(probe, r_max, eta, f"{s1}-{s2} dimer", tol))
    for k, mol in enumerate(molecules):
        if mol.pbc.any() or len(mol) == 0:
            continue
        centre = mol.positions.mean(axis=0)
        outer = int(np.argmax(np.linalg.norm(mol.positions - centre, axis=1)))
        direction = mol.positions[outer] - centre
        norm = np.linalg.norm(direction)
        direction = direction / norm if norm > 0 else np.array([1.0, 0.0, 0.0])

        def probe(r, mol=mol, outer=outer, direction=direction):
            a = mol.copy()
            a.append(mol[outer].symbol)
            a.positions[-1] = mol.positions[outer] + r * direction
            return ev(a)
        rows.append(_compare_across(probe, r_max, eta, f"probe leaving {_name(mol, k)}", tol))
    return rows


def _compare_across(probe, r_max: float, eta: float, name: str, tol: dict) -> CheckResult:
    inside, outside = probe(r_max - eta), probe(r_max + eta)
    de = abs(inside["energy"] - outside["energy"])
    df = float(np.abs(inside["forces"] - outside["forces"]).max())
    # also a jump in the energy's slope just inside r_max shows up as |F| not vanishing
    err = max(de / tol["smooth_e"], df / tol["smooth_f"])
    return CheckResult("smooth at r_max", name, err, 1.0, err <= 1.0,
                       f"|dE|={de:.2e} eV, |dF|={df:.2e} eV/A across r_max+-{eta:g}")


# ----------------------------------------------------------------------------------------------


def run_checks(model_path: str, structures: Optional[Sequence] = None, device: str = "cpu",
               seed: int = 0, md_steps: int = 100, timestep_fs: float = 0.5,
               temperature_K: float = 300.0, verbose_callback=None) -> List[CheckResult]:
    """Run every check on every structure; returns the result rows (see :class:`CheckResult`)."""
    from mlip.deploy.calculator import MLIPCalculator

    calc = MLIPCalculator(model_path, device=device)
    loaded = calc.models[0]
    dtype = loaded.dtype if loaded.dtype in TOLERANCES else "float32"
    tol = TOLERANCES[dtype]
    parity = bool(loaded.metadata.get("config", {}).get("parity", True)) if loaded.metadata else True
    ev = Evaluator(calc)
    rng = np.random.default_rng(seed)
    if structures is None:
        structures = builtin_structures(loaded.type_names, loaded.r_max, seed)
    rows: List[CheckResult] = []

    def emit(new):
        rows.extend(new)
        if verbose_callback is not None:
            for r in new:
                verbose_callback(r)

    for k, atoms in enumerate(structures):
        atoms = atoms.copy()
        atoms.calc = None
        name = _name(atoms, k)
        atoms.info["name"] = name
        emit(symmetry_checks(ev, atoms, name, tol, rng, parity))
        emit(finite_difference_checks(ev, atoms, name, tol, rng))
        emit([nve_check(calc, atoms, name, tol, md_steps, timestep_fs, temperature_K, seed)])
    molecules = [a for a in structures if not a.pbc.any()]
    emit(smoothness_checks(ev, loaded.type_names, loaded.r_max, tol, molecules))
    return rows


def format_table(rows: Sequence[CheckResult]) -> str:
    head = f"{'check':<34} {'structure':<22} {'error':>10} {'tolerance':>10}  result  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        err = "-" if r.status == "SKIP" else f"{r.error:10.2e}"
        tol = "-" if r.status == "SKIP" else f"{r.tolerance:10.2e}"
        lines.append(f"{r.check:<34} {r.structure[:22]:<22} {err:>10} {tol:>10}  {r.status:<6}  {r.note}")
    failed = sum(1 for r in rows if r.status == "FAIL")
    lines.append("-" * len(head))
    lines.append(f"{len(rows) - failed} passed, {failed} failed" + ("" if failed else ": model certified"))
    return "\n".join(lines)


def all_passed(rows: Sequence[CheckResult]) -> bool:
    return all(r.status != "FAIL" for r in rows)


__all__ = ["CheckResult", "run_checks", "format_table", "all_passed", "builtin_structures", "TOLERANCES"]
