"""CPU cost of one training step of mlip's MACE variants, relative to the default (issue 21).

One step = energy and forces of one batch, a force + energy loss, backward to the parameters.
The variants (default, mace_compat, product_paths: mace, first_layer_species_map: true) are
timed alternately, one thread, so that load from other processes hits all alike; prints the
median of the repeats in ms and relative to the default.

    .venv/bin/python scripts/mace_step_cost.py runs/compare_peers_3bpa_s2/data/train.xyz H,C,N,O
"""
import argparse
import statistics
import time

import ase.io
import torch

from mlip.data import collate, frame_to_graph, frames_from_atoms_list, TypeMapper
from mlip.data import keys as K
from mlip.nn import build_model

VARIANTS = {"default": {}, "mace_compat": {"mace_compat": True}, "product_paths=mace": {"product_paths": "mace"},
            "first_layer_species_map": {"first_layer_species_map": True}}
# compare_peers.py's MACE settings
BASE = dict(architecture="mace", r_max=5.0, num_interactions=2, num_channels=64, max_L=1, max_ell=3, correlation=3,
            num_radial_basis=8, num_cutoff_basis=5, radial_MLP=[64, 64, 64], readout_hidden=16,
            avg_num_neighbors=16.7)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("structures", help="an extxyz file; its first --batch structures form the batch")
    p.add_argument("species", help="comma-separated type names, e.g. H,C,N,O")
    p.add_argument("--batch", type=int, default=5)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(1)
    types = args.species.split(",")
    frames = frames_from_atoms_list(ase.io.read(args.structures, f":{args.batch}"))
    graph = collate([frame_to_graph(f, TypeMapper(types), BASE["r_max"], torch.float64) for f in frames])
    torch.manual_seed(0)
    models = {name: build_model({**BASE, **extra}, types, torch.float64) for name, extra in VARIANTS.items()}

    def step(model):
        out = model(dict(graph), compute_forces=True, training=True)  # forces kept differentiable
        (out[K.FORCES].pow(2).mean() + out[K.TOTAL_ENERGY].pow(2).mean()).backward()

    for model in models.values():  # warm-up
        for _ in range(3):
            step(model)
    times = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            t0 = time.perf_counter()
            step(model)
            times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times["default"])
    for name, ts in times.items():
        params = sum(p.numel() for p in models[name].parameters())
        print(f"{name:24s} {params:8d} params {statistics.median(ts) * 1e3:8.1f} ms  x{statistics.median(ts) / ref:.2f}")


if __name__ == "__main__":
    main()
