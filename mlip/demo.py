"""``mlip demo``: build a model (or load one) and predict energy, forces and stress for structures.

Useful as a smoke test of an installation and of a data file: it reads the file with the same
reader as training, builds radius graphs and prints one line per structure. Without a file it
uses the Si example shipped in the package (:mod:`mlip.examples`).

``mlip demo --copy-examples DIR`` instead copies the shipped example configs and data into
``DIR`` (``DIR/configs``, ``DIR/data``), so an installed mlip can run the README's commands
there: ``cd DIR && mlip train configs/example.yaml``.
"""
import argparse
import filecmp
import os
import shutil
from typing import List

import numpy as np
import torch

from mlip.data import GraphDataset, collate, read_frames
from mlip.data import keys as K
from mlip.errors import InputError
from mlip.examples import example_files, example_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("structures", nargs="?", default=None,
                   help="any ASE-readable file or rMD17 .npz (default: the shipped Si example, 12 structures)")
    p.add_argument("--copy-examples", metavar="DIR", default=None,
                   help="copy the example configs and data into DIR (DIR/configs, DIR/data) and exit; "
                        "then `cd DIR && mlip train configs/example.yaml`")
    p.add_argument("--model", help="checkpoint or model file; default: a freshly initialised NequIP model")
    p.add_argument("--r-max", type=float, default=5.0, help="cutoff radius in Angstrom (new model only)")
    p.add_argument("--limit", type=int, default=5, help="structures to show")


def run(args) -> int:
    if args.copy_examples:
        written = copy_examples(args.copy_examples)
        print(f"{len(written)} file(s) written to {args.copy_examples} (configs/, data/; existing identical files "
              f"kept). Next: cd {args.copy_examples} && mlip train configs/example.yaml")
        return 0
    # the default is package data (mlip/examples/data), so it works after `pip install` too
    structures = args.structures or example_path("data", "si_test.extxyz")
    frames = read_frames(structures, index=f":{args.limit}")
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


def copy_examples(dest: str) -> List[str]:
    """Copy the shipped ``configs/`` and ``data/`` (:mod:`mlip.examples`) into the folder ``dest``
    (created if needed) and return the paths written. Files already there with the same content
    are left alone; a file with other content is never overwritten (:class:`InputError` naming
    it, before anything is written), so a user's edited config survives a second call."""
    if os.path.exists(dest) and not os.path.isdir(dest):
        raise InputError("not a folder", dest)
    root = example_path()
    pairs = [(os.path.join(root, rel), os.path.join(dest, rel)) for rel in example_files()]
    if not pairs:
        raise InputError("no example files found (is mlip installed with its package data?)", root)
    clash = [dst for src, dst in pairs if os.path.exists(dst) and not filecmp.cmp(src, dst, shallow=False)]
    if clash:
        raise InputError(f"exists with other content, not overwritten ({len(clash)} file(s) in all); "
                         "choose another folder or remove them", clash[0])
    written = []
    for src, dst in pairs:
        if not os.path.exists(dst):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)
            written.append(dst)
    return written


def _symbols(numbers):
    from ase.data import chemical_symbols
    return [chemical_symbols[int(z)] for z in numbers]


def _z(symbol):
    from ase.data import atomic_numbers
    return atomic_numbers[symbol]
