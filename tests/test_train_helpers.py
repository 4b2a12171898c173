"""Shared helpers for the training tests (this module holds no tests itself).

Synthetic data: small periodic cells of two species on a perturbed simple-cubic lattice,
labelled by a Lennard-Jones pair potential (energy, forces, stress) plus known per-species
reference energies, so a tiny model can learn it within a few epochs.
"""
import copy
import os
from typing import Any, Dict, Optional

import numpy as np
import yaml

E0_TRUE = {"Si": -3.0, "C": -7.5}


def lj_frames(n: int, seed: int = 0, e0: Optional[Dict[str, float]] = None, reps: int = 2):
    """``n`` labelled ase.Atoms: reps^3 atoms of Si and C on a jittered cubic lattice, LJ labels."""
    import ase
    from ase.calculators.lj import LennardJones
    from ase.calculators.singlepoint import SinglePointCalculator

    e0 = E0_TRUE if e0 is None else e0
    rng = np.random.default_rng(seed)
    a = 2.3
    grid = np.array([[i, j, k] for i in range(reps) for j in range(reps) for k in range(reps)], dtype=float) * a
    out = []
    for _ in range(n):
        scale = rng.uniform(1.0, 1.05)
        pos = (grid + rng.normal(0.0, 0.08, grid.shape)) * scale
        symbols = rng.choice(["Si", "C"], size=len(grid))
        atoms = ase.Atoms(symbols=list(symbols), positions=pos, cell=np.eye(3) * a * reps * scale, pbc=True)
        atoms.calc = LennardJones(sigma=2.05, epsilon=0.1, rc=4.0, smooth=True)
        energy = atoms.get_potential_energy() + sum(e0[s] for s in symbols)
        forces, stress = atoms.get_forces(), atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        out.append(atoms)
    return out


def write_frames(path: str, n: int, seed: int = 0, **kw) -> str:
    import ase.io

    ase.io.write(path, lj_frames(n, seed, **kw), format="extxyz")
    return path


TINY_MODEL = {"architecture": "nequip", "r_max": 3.5, "num_layers": 1, "channels": 4, "l_max": 1,
              "num_bessel": 4, "radial_hidden": 8, "radial_depth": 1, "readout_hidden": 4}


def tiny_config(tmp_path, train_file: str, **sections) -> Dict[str, Any]:
    """A raw config for a tiny, fast run; ``sections`` are merged one level deep."""
    cfg = {
        "seed": 7,
        "dtype": "float64",
        "device": "cpu",
        "output_dir": os.path.join(str(tmp_path), "run"),
        "data": {"train_file": train_file, "valid_fraction": 0.125, "batch_size": 2, "valid_batch_size": 4},
        "model": copy.deepcopy(TINY_MODEL),
        "loss": {"energy_weight": 1.0, "forces_weight": 10.0, "stress_weight": 1.0},
        "optim": {"lr": 0.01, "max_epochs": 3},
        "schedule": {"type": "constant"},
        "ema": {"enabled": True, "decay": 0.9},
        "logging": {"progress_bar": False},
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(cfg.get(name), dict):
            cfg[name].update(values)
        else:
            cfg[name] = values
    return cfg


def write_config(path: str, cfg: Dict[str, Any]) -> str:
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    return path
