"""Molecular dynamics with an mlip model in ASE: NVT (Langevin) or NVE (velocity Verlet).

    python -m mlip.deploy.md model.nequip.pth                        # Si example structure, NVT 300 K
    python -m mlip.deploy.md model.nequip.pth structure.xyz --ensemble nve --steps 2000 -o md.traj
    python -m mlip.deploy.md best.pth molecule.xyz --compile --steps 100000   # checkpoint, compiled

Writes an ASE trajectory (``.traj``, or any format ``ase.io.write`` knows by extension at the end)
and prints step, time, potential / kinetic / total energy and temperature. The model is loaded
once; each step builds the neighbour list and calls the model (exported file or checkpoint).
"""
import argparse
import os
import sys
from importlib import resources
from typing import List, Optional

# the Si example is package data (mlip/examples/data), so the default works after `pip install`
# too; found with importlib.resources (a data file: no code of mlip.examples is needed)
DEFAULT_STRUCTURE = str(resources.files("mlip").joinpath("examples", "data", "si_test.extxyz"))


def run_md(model: str, structure: Optional[str] = None, index: int = 0, ensemble: str = "nvt",
           temperature_K: float = 300.0, timestep_fs: float = 1.0, steps: int = 200, friction_per_fs: float = 0.01,
           trajectory: str = "md.traj", interval: int = 10, device: str = "cpu", seed: int = 0,
           log=print, compile: bool = False):
    """Run MD and return the final ``Atoms``; energies in eV, temperature in K. ``compile``: trace
    and compile a checkpoint's model (:class:`mlip.deploy.calculator.MLIPCalculator`); the first
    step takes tens of seconds, every later one is faster (most for small systems on a CPU)."""
    import ase.io
    import numpy as np
    from ase import units
    from ase.io.trajectory import Trajectory
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    from mlip.deploy.calculator import MLIPCalculator
    from mlip.errors import InputError

    path = structure or DEFAULT_STRUCTURE
    if not os.path.exists(path):
        raise InputError("file not found", path)
    atoms = ase.io.read(path, index=index)
    atoms.calc = MLIPCalculator(model, device=device, compile=compile)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    if ensemble == "nvt":
        from ase.constraints import FixCom

        atoms.set_constraint(FixCom())  # keep the centre of mass at rest (ASE's recommended way)
        dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                       friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    elif ensemble == "nve":
        dyn = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    else:
        raise InputError(f"ensemble must be 'nvt' or 'nve', got '{ensemble}'")
    traj = Trajectory(trajectory, "w", atoms) if trajectory.endswith(".traj") else None
    frames: List = []

    def report():
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        log(f"{dyn.nsteps:>7d} {dyn.nsteps * timestep_fs / 1000:>9.4f} {epot:>14.6f} {ekin:>12.6f} "
            f"{epot + ekin:>14.6f} {atoms.get_temperature():>9.1f}")
        if traj is not None:
            traj.write()
        else:
            frames.append(atoms.copy())
    log(f"{'step':>7} {'time/ps':>9} {'Epot/eV':>14} {'Ekin/eV':>12} {'Etot/eV':>14} {'T/K':>9}")
    dyn.attach(report, interval=interval)   # ASE calls observers at step 0 too
    dyn.run(steps)
    if traj is not None:
        traj.close()
    else:
        ase.io.write(trajectory, frames)
    return atoms


def main(argv: Optional[List[str]] = None) -> int:
    from mlip.errors import InputError

    p = argparse.ArgumentParser(prog="python -m mlip.deploy.md", description=__doc__.splitlines()[0])
    p.add_argument("model", help="exported .nequip.pth or checkpoint")
    p.add_argument("structure", nargs="?", default=None, help=f"ASE-readable file (default {DEFAULT_STRUCTURE})")
    p.add_argument("--index", type=int, default=0, help="frame of the structure file")
    p.add_argument("--ensemble", choices=["nvt", "nve"], default="nvt")
    p.add_argument("--temperature", type=float, default=300.0, help="K (initial velocities; NVT target)")
    p.add_argument("--timestep", type=float, default=1.0, help="fs")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction in 1/fs")
    p.add_argument("--interval", type=int, default=10, help="write/print every N steps")
    p.add_argument("-o", "--output", default="md.traj", help="trajectory file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true",
                   help="trace and compile the model (checkpoints, not exported files): the first step takes "
                        "tens of seconds, later ones are faster, most for small molecules on a CPU")
    args = p.parse_args(argv)
    try:
        run_md(args.model, args.structure, args.index, args.ensemble, args.temperature, args.timestep, args.steps,
               args.friction, args.output, args.interval, args.device, args.seed, compile=args.compile)
    except InputError as exc:
        print(f"mlip md: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
