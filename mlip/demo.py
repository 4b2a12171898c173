"""``mlip demo``: build a model (or load one) and predict energy, forces and stress for structures.

Useful as a smoke test of an installation and of a data file: it reads the file with the same
reader as training, builds radius graphs and prints one line per structure.
"""
import argparse
import os

import numpy as np
import torch

from mlip.data import GraphDataset, collate, read_frames
from mlip.data import keys as K

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "si_test.extxyz")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("structures", nargs="?", default=DEFAULT_DATA, help="any ASE-readable file or rMD17 .npz")
    p.add_argument("--model", help="checkpoint or model file; default: a freshly initialised NequIP model")
    p.add_argument("--r-max", type=float, default=5.0, help="cutoff radius in Angstrom (new model only)")
    p.add_argument("--limit", type=int, default=5, help="structures to show")


def run(args) -> int:
    frames = read_frames(args.structures, index=f":{args.limit}")
    if args.model:
        from mlip.checkpoint import load_model
        model = load_model(args.model)
    else:
        from mlip.nn import build_model
        symbols = sorted({s for f in frames for s in _symbols(f.numbers)}, key=_z)
        torch.manual_seed(0)
        model = build_model(dict(architecture="nequip", r_max=args.r_max, num_layers=2, channels=16, l_max=1),
                            symbols, "float64")
    dtype = next(model.parameters()).dtype
    ds = GraphDataset(frames, model.type_names, model.r_max, dtype)
    out = {k: v.detach() for k, v in model(collate(ds.graphs), compute_forces=True, compute_stress=True).items()}
    print(f"{'structure':<40} {'atoms':>5} {'energy/eV':>14} {'max|F| eV/A':>12} {'pressure eV/A^3':>16}")
    offset = 0
    for b, frame in enumerate(frames):
        n = len(frame)
        forces = out[K.FORCES][offset:offset + n].numpy()
        pressure = -float(torch.trace(out[K.STRESS][b])) / 3.0
        print(f"{os.path.basename(frame.source):<40} {n:>5} {float(out[K.TOTAL_ENERGY][b]):>14.6f} "
              f"{np.abs(forces).max():>12.6f} {pressure:>16.3e}")
        offset += n
    return 0


def _symbols(numbers):
    from ase.data import chemical_symbols
    return [chemical_symbols[int(z)] for z in numbers]


def _z(symbol):
    from ase.data import atomic_numbers
    return atomic_numbers[symbol]
