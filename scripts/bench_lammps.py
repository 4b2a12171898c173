#!/usr/bin/env python
"""MD steps per second of exported models in a real LAMMPS, side by side in one run.

    .venv/bin/python scripts/bench_lammps.py --model runs/example/si.nequip.pth --repeat 6 \\
        --ranks 1 2 4 --threads 1 --steps 50

For each (model, pair style, ranks, threads) it writes a crystal (diamond, ``--repeat``^3 cubic
cells of ``--element``), runs ``--warmup`` MD steps and then ``--steps`` timed NVE steps at 300 K,
and reads from LAMMPS' own output: the loop time (steps/s, atom-steps/s), the share of the
pair style in it, and the average local and ghost atoms per rank. ``pair_style nequip`` runs on
one rank only (the plugin's rule); ``pair_style allegro`` on every entry of ``--ranks``
(``mpirun --oversubscribe``). A file exported with ``mlip export --single-rank`` runs under
pair_style nequip only.

Prints a table and writes ``--json``. LAMMPS: ``--lmp`` or ``MLIP_LMP`` (``bash
scripts/build_lammps.sh`` builds one); nothing is timed in tests.
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

DEFAULT_LMP = os.path.expanduser("~/.cache/mlip-lammps/lmp")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", default=[],
                   help="exported model (.nequip.pth or .nequip.pt2); repeat to compare several. "
                        "NAME=PATH gives it a name in the table")
    p.add_argument("--make-mlip-models", metavar="SIZE", choices=["S"], default=None,
                   help="also build mlip's NequIP-style model of ../shared/bench size S for --element (random "
                        "weights: the speed does not depend on them) and time its exports: TorchScript (both pair "
                        "styles), TorchScript --single-rank, AOT with the fused kernel, AOT plain")
    p.add_argument("--element", default="Si")
    p.add_argument("--molecule", default=None, metavar="FILE[@INDEX]",
                   help="time one molecule of an extxyz file (default frame 0) in vacuum (boundary f f f, "
                        "pair_style nequip) instead of a crystal, as force calls on the fixed geometry (no "
                        "integrator: a barely trained or random model would tear a molecule apart); its species, "
                        "in the order of --species or sorted, are the LAMMPS types")
    p.add_argument("--species", nargs="+", default=None, help="LAMMPS type order for --molecule")
    p.add_argument("--crystal", choices=["diamond", "fcc"], default="diamond")
    p.add_argument("--lattice", type=float, default=5.43, help="cubic lattice constant (Angstrom)")
    p.add_argument("--repeat", type=int, default=6, help="cubic cells per direction (8 atoms each for diamond, 4 fcc)")
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="OMP_NUM_THREADS per rank")
    p.add_argument("--pair-styles", nargs="+", default=["nequip", "allegro"], choices=["nequip", "allegro"])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--timestep", type=float, default=0.001, help="ps")
    p.add_argument("--lmp", default=os.environ.get("MLIP_LMP") or DEFAULT_LMP)
    p.add_argument("--mpirun", default=os.environ.get("MLIP_MPIRUN") or shutil.which("mpirun") or "mpirun")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--work", default=None, help="keep the LAMMPS folders here (default: a temporary folder)")
    return p


def write_crystal(path, element, crystal, lattice, repeat, seed=0):
    from ase.build import bulk
    from ase.io import write

    atoms = bulk(element, crystal, a=lattice, cubic=True).repeat((repeat,) * 3)
    atoms.positions += np.random.default_rng(seed).normal(scale=0.02, size=atoms.positions.shape)
    write(path, atoms, format="lammps-data", specorder=[element], masses=True, atom_style="atomic", units="metal")
    return len(atoms)


def write_molecule(path, spec, species=None):
    """One molecule of an extxyz file, centred in a 40 A box: (atoms, species in type order)."""
    from ase.io import read, write

    file, _, index = spec.partition("@")
    atoms = read(file, index=int(index or 0))
    atoms.calc = None
    species = species or sorted(set(atoms.get_chemical_symbols()))
    atoms.cell = [40.0, 40.0, 40.0]
    atoms.center()
    atoms.pbc = False
    write(path, atoms, format="lammps-data", specorder=species, masses=True, atom_style="atomic", units="metal")
    return len(atoms), species


def script(model, species, pair_style, warmup, steps, timestep, boundary="p p p", dynamics=True):
    """The LAMMPS input; without ``dynamics`` the atoms stay put (every step one force call)."""
    newton = "off" if pair_style == "nequip" else "on"
    element = " ".join(species)
    md = ("velocity        all create 300.0 4928459 mom yes rot no dist gaussian loop geom\n"
          "fix             nve all nve\n") if dynamics else ""
    return f"""units           metal
atom_style      atomic
boundary        {boundary}
newton          {newton}
atom_modify     map array
read_data       structure.data
pair_style      {pair_style}
pair_coeff      * * {model} {element}
neighbor        1.0 bin
neigh_modify    every 1 delay 5 check yes
timestep        {timestep}
{md}thermo          {max(1, steps)}
run             {warmup}
run             {steps}
"""


def parse(out, steps):
    """Loop time, pair share and atoms per rank of the last run in LAMMPS' screen output."""
    loops = re.findall(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms", out)
    if not loops:
        raise RuntimeError("no 'Loop time' line in LAMMPS' output:\n" + out[-3000:])
    seconds, procs, nsteps, natoms = loops[-1]
    seconds, nsteps = float(seconds), int(nsteps)
    assert nsteps == steps
    last = out[out.rfind("Loop time of"):]
    pair = re.search(r"^Pair\s*\|.*\|\s*([0-9.]+)\s*$", last, re.M)
    neigh = re.search(r"^Neigh\s*\|.*\|\s*([0-9.]+)\s*$", last, re.M)
    nlocal = re.search(r"Nlocal:\s+([0-9.]+) ave", last)
    nghost = re.search(r"Nghost:\s+([0-9.]+) ave", last)
    return {"seconds": seconds, "procs": int(procs), "atoms": int(natoms), "steps_per_s": nsteps / seconds,
            "atom_steps_per_s": nsteps * int(natoms) / seconds,
            "pair_pct": float(pair.group(1)) if pair else None, "neigh_pct": float(neigh.group(1)) if neigh else None,
            "local_per_rank": float(nlocal.group(1)) if nlocal else None,
            "ghost_per_rank": float(nghost.group(1)) if nghost else None}


def single_rank_only(path):
    """True unless the file is an mlip TorchScript export for both pair styles (AOT files, files
    exported with --single-rank and other programs' models run under pair_style nequip only)."""
    import torch

    if path.endswith(".pt2"):
        return True
    extra = {"r_max": "", "model_r_max": "", "num_message_layers": ""}
    torch.jit.load(path, _extra_files=extra)
    extra = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in extra.items()}
    if not extra["model_r_max"]:
        return True
    return int(extra["num_message_layers"] or 1) > 1 and float(extra["r_max"]) == float(extra["model_r_max"])


def make_mlip_models(size, species, folder):
    """mlip's NequIP-style model of the yardstick's size (random weights, float32, parity off as the
    peers' runner builds NequIP) and its four exports; [(name, path)]."""
    import torch

    from mlip.checkpoint import model_record, save_model_file
    from mlip.cli import main as mlip
    from mlip.nn import build_model

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "bench"))
    from workloads import MODEL_S

    config = dict(architecture="nequip", num_layers=MODEL_S["num_layers"], channels=MODEL_S["channels"],
                  l_max=MODEL_S["l_max"], parity=False, r_max=MODEL_S["r_max"], num_bessel=MODEL_S["num_bessel"],
                  avg_num_neighbors=20.0)
    torch.manual_seed(0)
    model = build_model(config, list(species), MODEL_S["dtype"])
    ckpt = os.path.join(folder, f"mlip_{size}.pth")
    save_model_file(ckpt, model_record(config, list(species), MODEL_S["dtype"], model.state_dict()))
    out = []
    for name, file, extra in (("mlip TorchScript", "mlip.nequip.pth", []),
                              ("mlip TorchScript --single-rank", "mlip_single.nequip.pth", ["--single-rank"]),
                              ("mlip AOT fused", "mlip_fused.nequip.pt2", []),
                              ("mlip AOT plain", "mlip_plain.nequip.pt2", ["--no-kernels"])):
        path = os.path.join(folder, file)
        if mlip(["export", ckpt, "-o", path, *extra]) != 0:
            raise RuntimeError(f"mlip export {extra} failed")
        out.append((name, path))
    return out


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not (os.path.isfile(args.lmp) and os.access(args.lmp, os.X_OK)):
        sys.exit(f"bench_lammps: no LAMMPS at {args.lmp} (bash scripts/build_lammps.sh, or --lmp / MLIP_LMP)")
    work = args.work or tempfile.mkdtemp(prefix="bench_lammps_")
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "structure.data")
    if args.molecule:
        natoms, species = write_molecule(data, args.molecule, args.species)
        boundary, styles, what = "f f f", ["nequip"], f"one molecule of {natoms} atoms ({' '.join(species)})"
    else:
        species = [args.element]
        natoms = write_crystal(data, args.element, args.crystal, args.lattice, args.repeat)
        boundary, styles, what = "p p p", args.pair_styles, f"{natoms} {args.element} atoms"
    models = []
    if args.make_mlip_models:
        models += make_mlip_models(args.make_mlip_models, species, work)
    for spec in args.model:
        name, _, path = spec.rpartition("=")
        path = os.path.abspath(path)
        models.append((name or os.path.basename(path), path))
    if not models:
        sys.exit("bench_lammps: no model (--model PATH and/or --make-mlip-models S)")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    rows = []
    print(f"{what}, {args.steps} NVE steps after {args.warmup}; LAMMPS {args.lmp}", flush=True)
    header = f"{'model':<32} {'pair_style':<8} {'ranks':>5} {'thr':>3} {'steps/s':>9} {'atom-steps/s':>13} " \
             f"{'pair %':>6} {'local/rank':>10} {'ghost/rank':>10}"
    print(header)
    for name, path in models:
        for style in styles:
            for ranks in ([1] if style == "nequip" else args.ranks):
                if style == "allegro" and single_rank_only(path):
                    continue  # a model for pair_style nequip only
                for threads in args.threads:
                    run_dir = os.path.join(work, f"{len(rows):02d}")
                    os.makedirs(run_dir, exist_ok=True)
                    shutil.copy(data, os.path.join(run_dir, "structure.data"))
                    with open(os.path.join(run_dir, "in.lammps"), "w") as f:
                        f.write(script(path, species, style, args.warmup, args.steps, args.timestep, boundary,
                                       dynamics=not args.molecule))
                    cmd = [args.lmp, "-in", "in.lammps", "-log", "log.lammps", "-screen", "screen.txt"]
                    if style == "allegro":
                        cmd = [args.mpirun, "-np", str(ranks), "--oversubscribe", "--bind-to", "none", *cmd]
                    t0 = time.time()
                    proc = subprocess.run(cmd, cwd=run_dir, env=dict(env, OMP_NUM_THREADS=str(threads)),
                                          capture_output=True, text=True)
                    with open(os.path.join(run_dir, "screen.txt")) as f:
                        out = f.read()
                    if proc.returncode != 0:
                        print(f"{name} {style} {ranks} ranks failed:\n{(proc.stdout + proc.stderr + out)[-3000:]}")
                        return 1
                    row = dict(parse(out, args.steps), model=name, path=path, pair_style=style, ranks=ranks,
                               threads=threads, wall_s=time.time() - t0)
                    rows.append(row)
                    print(f"{name:<32} {style:<8} {ranks:>5} {threads:>3} {row['steps_per_s']:>9.3f} "
                          f"{row['atom_steps_per_s']:>13.0f} {row['pair_pct'] or float('nan'):>6.1f} "
                          f"{row['local_per_rank']:>10.0f} {row['ghost_per_rank']:>10.0f}", flush=True)
    if args.json:
        import torch

        meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} {platform.processor()} "
                f"{os.cpu_count()} CPUs", "torch": torch.__version__, "atoms": natoms, "species": species, "system": what,
                "steps": args.steps, "lmp": args.lmp, "command": " ".join(sys.argv)}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
