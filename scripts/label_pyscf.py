#!/usr/bin/env python
"""Label small-molecule structures with PySCF: energy, forces, dipole and polarizability.

    pip install pyscf          # not an mlip dependency; only this script needs it
    python scripts/label_pyscf.py --molecule water   --n 200 --temperature 500 --seed 0 \\
        --out data/molecules/water_pyscf.extxyz
    python scripts/label_pyscf.py --molecule chfclbr --n 150 --temperature 500 --seed 0 \\
        --out data/molecules/chfclbr_pyscf.extxyz

What it does, per molecule:

1. optimizes a starting geometry (ASE BFGS on the PySCF energy and analytic gradient, fmax
   1e-3 eV/A); ``--no-optimize`` keeps the built-in geometry instead;
2. computes the analytic Hessian there (``pyscf.hessian``) and its harmonic frequencies (cm^-1,
   translations and rotations projected out), and double-harmonic IR intensities (km/mol) and
   Raman activities (A^4/amu) from central differences of the dipole and polarizability along
   each normal mode;
3. samples ``--n`` structures by normal-mode displacements: each mode's mass-weighted amplitude
   is drawn from the classical harmonic (Boltzmann) distribution at ``--temperature``,
   q_k ~ N(0, kT / omega_k^2), then the whole molecule gets a uniformly random rotation about
   its centre of mass (``--no-rotate`` leaves it in the reference orientation); fixed ``--seed``;
4. labels each structure: SCF energy, analytic forces, dipole (electronic + nuclear, from the
   SCF density) and the static polarizability by finite field: alpha_ij = d mu_i / d F_j by
   central differences with a uniform field of ``--field`` a.u. (default 0.002) added to the
   core Hamiltonian as h1 + F . r (dipole integrals about the centre of nuclear charge), six
   extra SCFs started from the zero-field density; alpha is symmetrized.

Levels of theory (``--method``/``--basis`` override them):

    water     RHF/aug-cc-pVDZ   3 atoms, 41 basis functions (diffuse functions for the polarizability)
    chfclbr   RHF/3-21G         (R)-bromochlorofluoromethane, 5 atoms, 55 basis functions

Outputs: ``OUT`` (extended XYZ, one frame per structure, non-periodic, no cell) and
``OUT`` with ``.extxyz`` replaced by ``.frequencies.json`` (reference geometry, its energy,
dipole and polarizability, harmonic frequencies, normal modes, IR intensities, Raman
activities, level of theory, the command line and the timings).

Labels and units (what ``mlip.data.frames.read_frames`` reads with the default keys):

    atoms.info["energy"]           total SCF energy, eV (not referenced to free atoms)
    atoms.arrays["forces"]         -dE/dR, eV/A
    atoms.info["dipole"]           3 floats, e*A (1 e*A = 4.80320 D)
    atoms.info["polarizability"]   9 floats, the symmetric 3x3 tensor row by row, A^3
                                   (polarizability volume: 1 bohr^3 = 0.148184711 A^3)
    atoms.info["charge"]           total charge, e (0)

Conversions: 1 Hartree = 27.211386 eV, 1 bohr = 0.529177211 A (PySCF's CODATA constants).

Runtime with one thread (``--threads``, default 1) on a busy 2-core machine: water about 0.4 s
per structure, CHFClBr about 1.5 s, plus seconds (water) to a minute (CHFClBr) for the
optimization, Hessian and IR/Raman; see data/molecules/README.md for the measured times of
the shipped files. Every structure costs 7 SCFs (zero field and +-F along x, y, z) and one
gradient.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _threads_from_argv(argv) -> str:
    """--threads N (default 1), read before numpy and PySCF start their thread pools: these molecules
    are tiny, and threaded BLAS on a busy machine is several times slower than one thread."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "1"


if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads_from_argv(sys.argv[1:])

import numpy as np  # noqa: E402

try:
    import pyscf
    from pyscf import data as _pyscf_data, dft, gto, lib, scf
except ImportError:
    sys.exit("label_pyscf: PySCF is not installed (pip install pyscf)")

HARTREE_EV = _pyscf_data.nist.HARTREE2EV    # 27.211386...
BOHR_A = _pyscf_data.nist.BOHR              # 0.529177210903
BOHR3_A3 = BOHR_A ** 3                       # 0.148184711...
DEBYE_PER_EA = 4.80320471                    # 1 e*A in Debye
KB_HARTREE = _pyscf_data.nist.BOLTZMANN / _pyscf_data.nist.HARTREE2J  # Hartree / K
# double-harmonic IR intensity: N_A / (12 eps0 c^2) * (d mu / d Q)^2, (d mu / d Q) in e/sqrt(amu)
IR_KM_MOL = 974.8801  # km/mol per e^2/amu

# starting geometries (A); chfclbr is the (R) enantiomer (CIP: Br > Cl > F > H)
_TETRA = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float) / np.sqrt(3.0)
MOLECULES = {
    "water": {
        "symbols": ["O", "H", "H"],
        "positions": [[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]],
        "method": "hf", "basis": "aug-cc-pvdz",
    },
    "chfclbr": {
        "symbols": ["C", "H", "F", "Cl", "Br"],
        # H, Br, Cl, F on tetrahedral directions 0, 1, 2, 3 gives det[Br, Cl, F] < 0: (R)
        "positions": [[0.0, 0.0, 0.0]] + [list(d * r) for d, r in
                                          zip(_TETRA[[0, 3, 2, 1]], (1.09, 1.35, 1.77, 1.94))],
        "method": "hf", "basis": "3-21g",
    },
}


def cip_chirality(symbols, positions) -> str:
    """R or S for a carbon with four different substituents ordered by atomic number."""
    from ase.data import atomic_numbers

    if "C" not in symbols:
        return "achiral"
    c = symbols.index("C")
    others = sorted((i for i in range(len(symbols)) if i != c), key=lambda i: -atomic_numbers[symbols[i]])
    if len(others) != 4:
        return "achiral"
    v = np.asarray(positions)[others[:3]] - np.asarray(positions)[c]
    return "R" if np.linalg.det(v) < 0 else "S"


class Labeller:
    """PySCF energy, gradient, dipole and finite-field polarizability of one molecule's geometries."""

    def __init__(self, symbols, method: str, basis: str, charge: int = 0, spin: int = 0, field: float = 0.002,
                 conv_tol: float = 1e-11, conv_tol_grad: float = 1e-7):
        self.symbols = list(symbols)
        self.method, self.basis, self.charge, self.spin, self.field = method.lower(), basis, charge, spin, field
        self.conv_tol, self.conv_tol_grad = conv_tol, conv_tol_grad
        self.n_scf = 0

    def mole(self, positions_a):
        mol = gto.M(atom=[(s, tuple(p)) for s, p in zip(self.symbols, positions_a)], unit="Angstrom",
                    basis=self.basis, charge=self.charge, spin=self.spin, verbose=0)
        return mol

    def _mf(self, mol):
        if self.method in ("hf", "rhf", "uhf"):
            mf = scf.RHF(mol) if self.spin == 0 else scf.UHF(mol)
        else:
            mf = dft.RKS(mol) if self.spin == 0 else dft.UKS(mol)
            mf.xc = self.method
        mf.conv_tol, mf.conv_tol_grad, mf.max_cycle = self.conv_tol, self.conv_tol_grad, 200
        return mf

    def _scf(self, mf, dm0=None):
        mf.kernel(dm0=dm0)
        self.n_scf += 1
        if not mf.converged:
            raise RuntimeError("SCF did not converge")
        return mf

    @staticmethod
    def _dipole(mol, dm, r_ints, origin):
        """Electronic + nuclear dipole (e*bohr) of density dm, about origin (bohr)."""
        dm = dm if dm.ndim == 2 else dm[0] + dm[1]
        elec = -np.einsum("xij,ji->x", r_ints, dm)
        nuc = np.einsum("a,ax->x", mol.atom_charges(), mol.atom_coords() - origin)
        return elec + nuc

    def label(self, positions_a, gradient: bool = True, polarizability: bool = True) -> dict:
        """Energy (Hartree), gradient (Hartree/bohr), dipole (e*bohr), alpha (bohr^3) in atomic units,
        plus the zero-field SCF object (``mf``) for checks."""
        mol = self.mole(positions_a)
        mf = self._scf(self._mf(mol))
        out = {"energy": float(mf.e_tot), "mf": mf}
        if gradient:
            out["gradient"] = np.asarray(mf.nuc_grad_method().kernel())
        charges = mol.atom_charges()
        origin = np.einsum("a,ax->x", charges, mol.atom_coords()) / charges.sum()
        with mol.with_common_orig(origin):
            r_ints = mol.intor_symmetric("int1e_r", comp=3)
        dm0 = mf.make_rdm1()
        out["dipole"] = self._dipole(mol, dm0, r_ints, origin)
        if polarizability:
            h0 = mf.get_hcore()
            alpha = np.zeros((3, 3))
            for j in range(3):
                mus = []
                for sign in (1.0, -1.0):
                    mff = self._mf(mol)
                    if getattr(mf, "_eri", None) is not None:
                        mff._eri = mf._eri  # the two-electron integrals do not depend on the field
                    # electron in a uniform field F: V = +F . r (H = H0 - mu . F, mu_el = -r)
                    h1 = h0 + sign * self.field * r_ints[j]
                    mff.get_hcore = lambda *args, _h=h1: _h
                    self._scf(mff, dm0)
                    mus.append(self._dipole(mol, mff.make_rdm1(), r_ints, origin))
                alpha[:, j] = (mus[0] - mus[1]) / (2 * self.field)
            out["alpha_raw"] = alpha
            out["alpha"] = 0.5 * (alpha + alpha.T)
        return out


def optimize(labeller: Labeller, positions_a, fmax: float = 1e-3, log=print):
    """BFGS (ASE) on the PySCF energy surface; positions in A, fmax in eV/A."""
    from ase import Atoms
    from ase.calculators.calculator import Calculator, all_changes
    from ase.optimize import BFGS

    class _PySCF(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            res = labeller.label(self.atoms.positions, gradient=True, polarizability=False)
            self.results = {"energy": res["energy"] * HARTREE_EV,
                            "forces": -res["gradient"] * HARTREE_EV / BOHR_A}

    atoms = Atoms(labeller.symbols, positions=positions_a)
    atoms.calc = _PySCF()
    opt = BFGS(atoms, logfile=None, maxstep=0.1)
    converged = opt.run(fmax=fmax, steps=200)
    fm = np.abs(atoms.get_forces()).max()
    log(f"  optimized in {opt.nsteps} steps (max |F| {fm:.1e} eV/A{'' if converged else ', NOT converged'})")
    return atoms.positions.copy()


def harmonic(labeller: Labeller, positions_a, mf, ir_raman: bool = True, step: float = 0.01):
    """Harmonic analysis at positions_a: frequencies (cm^-1), modes, and (optionally) double-harmonic
    IR intensities (km/mol) and Raman activities (A^4/amu) by central differences along each
    normal mode (step in bohr*sqrt(amu))."""
    from pyscf.hessian import thermo

    hess = mf.Hessian().kernel()
    ha = thermo.harmonic_analysis(mf.mol, hess, imaginary_freq=False)
    freq = np.asarray(ha["freq_wavenumber"], dtype=float)
    modes = np.asarray(ha["norm_mode"], dtype=float)  # [mode, atom, xyz], 1/sqrt(amu): dx(bohr) = mode * q
    result = {"frequencies_cm-1": freq, "force_const_au": np.asarray(ha["force_const_au"], dtype=float),
              "norm_mode": modes, "reduced_mass_amu": np.asarray(ha["reduced_mass"], dtype=float)}
    if ir_raman:
        ir, raman, depol = [], [], []
        for mode in modes:
            res = [labeller.label(positions_a + s * step * mode * BOHR_A, gradient=False) for s in (1, -1)]
            dmu = (res[0]["dipole"] - res[1]["dipole"]) / (2 * step)          # e/sqrt(amu)
            dal = (res[0]["alpha"] - res[1]["alpha"]) / (2 * step) * BOHR_A ** 2  # A^2/sqrt(amu)
            ir.append(IR_KM_MOL * float(dmu @ dmu))
            a = np.trace(dal) / 3
            g2 = 0.5 * ((dal[0, 0] - dal[1, 1]) ** 2 + (dal[1, 1] - dal[2, 2]) ** 2 + (dal[2, 2] - dal[0, 0]) ** 2
                        + 6 * (dal[0, 1] ** 2 + dal[1, 2] ** 2 + dal[0, 2] ** 2))
            raman.append(45 * a * a + 7 * g2)
            depol.append(3 * g2 / (45 * a * a + 4 * g2) if (45 * a * a + 4 * g2) > 0 else 0.0)
        result.update({"ir_intensity_km_mol": np.array(ir), "raman_activity_A4_amu": np.array(raman),
                       "raman_depolarization": np.array(depol)})
    return result


def random_rotation(rng) -> np.ndarray:
    """Uniform random rotation matrix (proper, det +1) from a random unit quaternion."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def sample(ref_a, masses, harm, n: int, temperature: float, rng, rotate: bool = True):
    """n structures (A) displaced along the normal modes with classical harmonic amplitudes."""
    omega2 = harm["force_const_au"]             # Hartree / (bohr^2 amu)
    modes = harm["norm_mode"]                    # [k, atom, xyz] 1/sqrt(amu)
    if np.any(omega2 <= 0):
        raise RuntimeError("imaginary frequency at the reference geometry: optimize it first")
    sigma = np.sqrt(KB_HARTREE * temperature / omega2)  # bohr sqrt(amu)
    com = masses @ ref_a / masses.sum()
    out = []
    for _ in range(n):
        q = rng.normal(size=len(sigma)) * sigma
        pos = ref_a + np.einsum("k,kax->ax", q, modes) * BOHR_A
        if rotate:
            pos = (pos - com) @ random_rotation(rng).T + com
        out.append(pos)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--molecule", choices=sorted(MOLECULES), required=True)
    p.add_argument("--n", type=int, default=200, help="number of structures (default 200)")
    p.add_argument("--temperature", type=float, default=500.0, help="sampling temperature, K (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output .extxyz file")
    p.add_argument("--method", help="hf or a DFT functional (b3lyp, pbe, ...); default per molecule")
    p.add_argument("--basis", help="basis set; default per molecule")
    p.add_argument("--field", type=float, default=0.002, help="finite-field step, a.u. (default 0.002)")
    p.add_argument("--no-optimize", action="store_true", help="use the built-in geometry as the reference")
    p.add_argument("--no-rotate", action="store_true", help="keep the reference orientation")
    p.add_argument("--no-ir-raman", action="store_true", help="skip IR intensities and Raman activities")
    p.add_argument("--every", type=int, default=20, help="progress line every N structures (default 20)")
    p.add_argument("--threads", type=int, default=1, help="OpenMP/BLAS threads (default 1: fastest for "
                   "molecules this small)")
    args = p.parse_args(argv)
    if args.n < 0 or args.field <= 0 or args.temperature <= 0:
        p.error("--n >= 0, --field > 0 and --temperature > 0")
    if not args.out.endswith(".extxyz"):
        p.error("--out must end in .extxyz")
    if args.threads > 0:
        lib.num_threads(args.threads)
    import ase.io
    from ase import Atoms

    spec = MOLECULES[args.molecule]
    method, basis = (args.method or spec["method"]).lower(), args.basis or spec["basis"]
    lab = Labeller(spec["symbols"], method, basis, field=args.field)
    level = f"{'HF' if method in ('hf', 'rhf') else method.upper()}/{basis}"
    t0 = time.perf_counter()
    print(f"label_pyscf: {args.molecule} {level}, pyscf {pyscf.__version__}, {lib.num_threads()} threads, "
          f"n={args.n} T={args.temperature:g} K seed={args.seed} field={args.field:g} a.u.", flush=True)

    ref = np.asarray(spec["positions"], dtype=float)
    if not args.no_optimize:
        ref = optimize(lab, ref, log=lambda s: print(s, flush=True))
    masses = lab.mole(ref).atom_mass_list(isotope_avg=True)  # amu
    ref -= masses @ ref / masses.sum()
    t_opt = time.perf_counter() - t0
    ref_res = lab.label(ref, gradient=True)
    harm = harmonic(lab, ref, ref_res["mf"], ir_raman=not args.no_ir_raman)
    t_harm = time.perf_counter() - t0 - t_opt
    freq = harm["frequencies_cm-1"]
    mu_debye = np.linalg.norm(ref_res["dipole"]) * BOHR_A * DEBYE_PER_EA
    print(f"  reference E = {ref_res['energy']:.8f} Ha, |mu| = {mu_debye:.4f} D, "
          f"alpha_iso = {np.trace(ref_res['alpha']) / 3:.4f} bohr^3; frequencies (cm^-1): "
          + " ".join(f"{f:.1f}" for f in freq) + f"  [{time.perf_counter() - t0:.1f} s]", flush=True)

    rng = np.random.default_rng(args.seed)
    geoms = sample(ref, masses, harm, args.n, args.temperature, rng, rotate=not args.no_rotate)
    frames = []
    t1 = time.perf_counter()
    for i, pos in enumerate(geoms):
        res = lab.label(pos, gradient=True)
        atoms = Atoms(spec["symbols"], positions=pos, pbc=False)
        atoms.info["energy"] = res["energy"] * HARTREE_EV
        atoms.info["dipole"] = res["dipole"] * BOHR_A
        atoms.info["polarizability"] = (res["alpha"] * BOHR3_A3).reshape(9)
        atoms.info["charge"] = lab.charge
        atoms.arrays["forces"] = -res["gradient"] * HARTREE_EV / BOHR_A
        frames.append(atoms)
        if (i + 1) % max(args.every, 1) == 0 or i + 1 == len(geoms):
            el = time.perf_counter() - t1
            print(f"  {i + 1}/{len(geoms)} structures, {el:.1f} s ({el / (i + 1):.2f} s each)", flush=True)
    t_label = time.perf_counter() - t1

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    ase.io.write(args.out, frames, format="extxyz")
    json_path = args.out[: -len(".extxyz")] + ".frequencies.json"
    chir = cip_chirality(spec["symbols"], ref)
    info = {
        "molecule": args.molecule,
        "chirality": chir,
        "level_of_theory": level,
        "method": method, "basis": basis, "charge": lab.charge, "spin": lab.spin,
        "pyscf_version": pyscf.__version__,
        "command": "python scripts/label_pyscf.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "sampling": {"n": args.n, "temperature_K": args.temperature, "seed": args.seed,
                     "distribution": "classical harmonic, q_k ~ N(0, kT/omega_k^2) per normal mode",
                     "random_rotation": not args.no_rotate},
        "finite_field_au": args.field,
        "reference_geometry": {"symbols": spec["symbols"], "positions_A": ref.round(8).tolist(),
                               "energy_eV": ref_res["energy"] * HARTREE_EV,
                               "dipole_eA": (ref_res["dipole"] * BOHR_A).tolist(),
                               "polarizability_A3": (ref_res["alpha"] * BOHR3_A3).tolist(),
                               "optimized": not args.no_optimize},
        "frequencies_cm-1": [round(float(f), 3) for f in freq],
        "reduced_mass_amu": [round(float(m), 5) for m in harm["reduced_mass_amu"]],
        "normal_modes": {"units": "cartesian displacement per unit mass-weighted coordinate, 1/sqrt(amu) "
                                  "(pyscf.hessian.thermo norm_mode), [mode][atom][xyz]",
                         "modes": harm["norm_mode"].round(6).tolist()},
        "timings_s": {"optimize": round(t_opt, 2), "hessian_ir_raman": round(t_harm, 2),
                      "labelling": round(t_label, 2), "per_structure": round(t_label / max(len(geoms), 1), 3),
                      "total": round(time.perf_counter() - t0, 2), "threads": lib.num_threads()},
        "units": {"energy": "eV", "forces": "eV/A", "dipole": "e*A", "polarizability": "A^3 (9 values, row-major)",
                  "charge": "e", "positions": "A"},
    }
    if "ir_intensity_km_mol" in harm:
        info["ir_intensity_km_mol"] = [round(float(x), 4) for x in harm["ir_intensity_km_mol"]]
        info["raman_activity_A4_amu"] = [round(float(x), 4) for x in harm["raman_activity_A4_amu"]]
        info["raman_depolarization"] = [round(float(x), 4) for x in harm["raman_depolarization"]]
        info["ir_raman_note"] = ("double-harmonic: central differences of the dipole and polarizability along "
                                 "each normal mode, step 0.01 bohr*sqrt(amu)")
    with open(json_path, "w") as fh:
        json.dump(info, fh, indent=1)
        fh.write("\n")
    print(f"wrote {args.out} ({len(frames)} structures) and {json_path}; total {time.perf_counter() - t0:.1f} s "
          f"({lab.n_scf} SCFs)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
