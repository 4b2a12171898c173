"""``mlip evaluate MODEL DATA [DATA ...]``: errors of a model on labelled structures.

Prints a table of MAE and RMSE (energy per atom in meV/atom, total energy in meV, forces in
meV/A, stress in meV/A^3), and writes, per data file, ``<name>_per_structure.csv``,
``<name>_metrics.json`` (base units: eV/atom, eV, eV/A, eV/A^3) and parity plots
``<name>_parity_{energy,forces,stress}.png``. MODEL is a model file (``best_model.pt``) or a
training checkpoint (its EMA weights are used unless ``--no-ema``).
"""
from __future__ import annotations

import argparse
import os

from mlip.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model file (best_model.pt, last_model.pt) or training checkpoint")
    parser.add_argument("data", nargs="+", help="labelled structures: extxyz/ASE formats, rMD17 .npz, "
                        "or folders written by `mlip preprocess`")
    parser.add_argument("-o", "--output-dir", default=None,
                        help="where CSV, metrics and plots go (default: evaluate/ next to the model)")
    parser.add_argument("--batch-size", type=int, default=8, help="structures per batch (default 8)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default=None, choices=["float32", "float64"],
                        help="evaluate in this dtype (default: the model's)")
    parser.add_argument("--index", default=":", help="ASE index string selecting frames, e.g. '0:100'")
    parser.add_argument("--energy-key", default="energy", help="name of the energy label")
    parser.add_argument("--forces-key", default="forces", help="name of the forces label")
    parser.add_argument("--stress-key", default="stress", help="name of the stress label")
    parser.add_argument("--dipole-key", default="dipole", help="name of the dipole label (e*A; atoms.info)")
    parser.add_argument("--polarizability-key", default="polarizability",
                        help="name of the polarizability label (A^3, 3x3 or Voigt; atoms.info)")
    parser.add_argument("--charge-key", default="charge", help="name of the total charge in atoms.info (default 0)")
    parser.add_argument("--energy-unit", default=None,
                        help="energy unit of the labels (default eV; kcal/mol for .npz)")
    parser.add_argument("--length-unit", default="A", help="length unit of the positions (default A)")
    parser.add_argument("--min-distance", type=float, default=0.1,
                        help="two atoms closer than this (Angstrom) are an error naming them (default 0.1; 0: off)")
    parser.add_argument("--no-ema", action="store_true", help="use a checkpoint's raw weights, not its EMA")
    parser.add_argument("--no-plots", action="store_true", help="skip the parity plots")


def run(args: argparse.Namespace) -> int:
    from mlip.checkpoint import build_from_record, ensure_writable_dir, load_record
    from mlip.data.frames import LabelKeys, Units, read_frames
    from mlip.data.hdf5 import HDF5Dataset
    from mlip.train.data import GraphSet, HDF5GraphSet, file_stem, is_hdf5_folder
    from mlip.train.evaluation import predict, write_outputs
    from mlip.train.labels import format_coverage
    from mlip.train.metrics import format_table
    from mlip.train.distributed import resolve_device

    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    record = load_record(args.model, ema=not args.no_ema)
    model = build_from_record(record, dtype=args.dtype, device=str(device))
    model.eval()
    type_names, r_max = list(record["type_names"]), float(model.r_max)
    out_dir = args.output_dir or os.path.join(os.path.dirname(os.path.abspath(args.model)), "evaluate")
    ensure_writable_dir(out_dir, key="--output-dir")  # before any structure is read or scored
    keys = LabelKeys(energy=args.energy_key, forces=args.forces_key, stress=args.stress_key, dipole=args.dipole_key,
                     polarizability=args.polarizability_key, total_charge=args.charge_key)
    rows = {}
    written = []
    names = [file_stem(p) for p in args.data]
    for i, (path, name) in enumerate(zip(args.data, names)):
        if names.count(name) > 1:
            name = f"{name}_{i}"
        units = Units(energy=args.energy_unit or ("kcal/mol" if path.endswith(".npz") else "eV"),
                      length=args.length_unit)
        if is_hdf5_folder(path):  # `mlip preprocess` output: read lazily, labels already in eV, A
            if args.index != ":":
                raise InputError("--index selects frames of an ASE file; an HDF5 folder is evaluated whole", path)
            gs = HDF5GraphSet(name, HDF5Dataset(path, type_names, r_max, min_distance=args.min_distance))
        else:
            frames = read_frames(path, keys=keys, units=units, index=args.index)
            gs = GraphSet(name, frames)
        coverage = gs.coverage()
        print(f"{path}: {len(gs)} structures; labels {format_coverage(coverage)}")
        if not any(c.labelled for c in coverage.values()):
            raise InputError(f"no energy or forces labels, nor stress, dipole or polarizability, to compare with "
                             f"(looked for '{keys.energy}', '{keys.forces}', '{keys.stress}', '{keys.dipole}', "
                             f"'{keys.polarizability}'; see --energy-key, --forces-key, ...)", path)
        if isinstance(gs, GraphSet):
            gs.build(type_names, r_max, args.min_distance)
        pred = predict(model, gs.graphs, args.batch_size, device, gs.has_stress(), sources=gs.sources, keep=True)
        if args.no_plots:
            pred.energy = pred.forces = pred.stress = [[], []]  # nothing to plot
            pred.heads = {}
        files = write_outputs(pred, out_dir, name)
        rows[name] = pred.metrics
        written += list(files.values())
    print(format_table(rows))
    print(f"written to {out_dir}: " + ", ".join(os.path.basename(p) for p in written))
    return 0
