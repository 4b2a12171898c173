#!/usr/bin/env python
"""Check that an exported model gives the same answers in LAMMPS on 1, 2, 4 ... MPI ranks.

    .venv/bin/python scripts/lammps_ranks_agree.py si.nequip.pth --element Si --repeat 8 --ranks 1 2 4

Writes a rattled diamond (``--crystal fcc`` for fcc) crystal of ``--element``, runs ``run 0``
under ``pair_style nequip`` (one rank) and ``pair_style allegro`` on each entry of ``--ranks``
(``mpirun --oversubscribe``), dumps per-atom energies and forces, and prints the largest
differences of energy, per-atom energy, forces and pressure from the one-rank pair_style
nequip run and from ``MLIPCalculator`` on the same structure (LAMMPS' rotated frame). Exits 1 if
any difference exceeds ``--rtol`` relative to the largest value of its quantity (default 1e-10
for a float64 export; use ~1e-5 for float32).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

NKTV2P_METAL = 1.6021765e6  # bar per eV/A^3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="exported model (.nequip.pth)")
    p.add_argument("--element", default="Si")
    p.add_argument("--crystal", choices=["diamond", "fcc"], default="diamond")
    p.add_argument("--lattice", type=float, default=5.43)
    p.add_argument("--repeat", type=int, default=8)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--rtol", type=float, default=1e-10)
    p.add_argument("--lmp", default=os.environ.get("MLIP_LMP") or os.path.expanduser("~/.cache/mlip-lammps/lmp"))
    p.add_argument("--mpirun", default=os.environ.get("MLIP_MPIRUN") or shutil.which("mpirun") or "mpirun")
    args = p.parse_args(argv)
    from ase import Atoms
    from ase.build import bulk
    from ase.io import write

    from mlip import MLIPCalculator

    work = tempfile.mkdtemp(prefix="lammps_ranks_")
    atoms = bulk(args.element, args.crystal, a=args.lattice, cubic=True).repeat((args.repeat,) * 3)
    atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=atoms.positions.shape)
    write(os.path.join(work, "structure.data"), atoms, format="lammps-data", specorder=[args.element], masses=True,
          atom_style="atomic", units="metal")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    runs = {}
    for style, ranks in [("nequip", 1)] + [("allegro", r) for r in args.ranks]:
        run_dir = os.path.join(work, f"{style}{ranks}")
        os.makedirs(run_dir)
        shutil.copy(os.path.join(work, "structure.data"), run_dir)
        with open(os.path.join(run_dir, "in.lammps"), "w") as f:
            f.write(f"""units metal
atom_style atomic
boundary p p p
newton {'off' if style == 'nequip' else 'on'}
atom_modify map array
read_data structure.data
pair_style {style}
pair_coeff * * {os.path.abspath(args.model)} {args.element}
compute pe all pe/atom
compute pvir all pressure NULL virial
thermo_style custom step pe c_pvir[1] c_pvir[2] c_pvir[3] c_pvir[4] c_pvir[5] c_pvir[6]
thermo_modify format float %.17g
dump d all custom 1 atoms.dump id fx fy fz c_pe
dump_modify d format float %.17g sort id
run 0
""")
        cmd = [args.lmp, "-in", "in.lammps", "-log", "log.lammps", "-screen", "none"]
        if style == "allegro":
            cmd = [args.mpirun, "-np", str(ranks), "--oversubscribe", *cmd]
        proc = subprocess.run(cmd, cwd=run_dir, env=env, capture_output=True, text=True)
        log = open(os.path.join(run_dir, "log.lammps")).read()
        if proc.returncode != 0:
            print(f"{style} on {ranks} rank(s) failed:\n{(proc.stdout + proc.stderr + log)[-2000:]}")
            return 1
        thermo = re.findall(r"^\s*0\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", log, re.M)[-1]
        dump = np.loadtxt(os.path.join(run_dir, "atoms.dump"), skiprows=9)
        runs[(style, ranks)] = {"energy": float(thermo[0]), "pressure": np.array(thermo[1:], dtype=float),
                                "forces": dump[:, 1:4], "energies": dump[:, 4]}
    lmp_cell = np.loadtxt(os.path.join(work, "nequip1", "atoms.dump"), skiprows=5, max_rows=3)
    frame = Atoms(atoms.get_chemical_symbols(), positions=atoms.positions, cell=np.diag(lmp_cell[:, 1] - lmp_cell[:, 0]),
                  pbc=True)
    frame.calc = MLIPCalculator(args.model)
    s = frame.get_stress(voigt=False)
    ref = {"energy": frame.get_potential_energy(), "forces": frame.get_forces(), "energies": frame.get_potential_energies(),
           "pressure": -np.array([s[0, 0], s[1, 1], s[2, 2], s[0, 1], s[0, 2], s[1, 2]]) * NKTV2P_METAL}
    worst = 0.0
    print(f"{len(atoms)} {args.element} atoms, {args.model}; largest difference / largest value of each quantity")
    print(f"{'run':<18} {'vs':<22} {'energy':>10} {'per-atom E':>10} {'forces':>10} {'pressure':>10}")
    base = runs[("nequip", 1)]
    for (style, ranks), r in runs.items():
        for label, other in (("pair_style nequip, 1", base), ("MLIPCalculator", ref)):
            if r is base and other is base:
                continue
            rel = [abs(r["energy"] - other["energy"]) / abs(other["energy"]),
                   np.abs(r["energies"] - other["energies"]).max() / np.abs(other["energies"]).max(),
                   np.abs(r["forces"] - other["forces"]).max() / np.abs(other["forces"]).max(),
                   np.abs(r["pressure"] - other["pressure"]).max() / np.abs(other["pressure"]).max()]
            worst = max(worst, *rel)
            print(f"{style + ' x' + str(ranks):<18} {label:<22} " + " ".join(f"{x:>10.1e}" for x in rel))
    print(f"worst {worst:.1e} (tolerance {args.rtol:g})")
    return 0 if worst <= args.rtol else 1


if __name__ == "__main__":
    sys.exit(main())
