#!/usr/bin/env python
"""Peak memory of training from sharded HDF5 as the data set grows.

    python scripts/hdf5_memory.py --sizes 20000 200000 --steps 300

For each size: generate that many labelled structures (random 8-atom CHNO molecules, labels from
a toy pair potential, radius graphs stored), then, in a fresh process, train a small model for
--steps optimiser steps on batches drawn uniformly from the whole set (shuffled DataLoader
with 2 workers), and report the peak resident memory (ru_maxrss) of the process and its workers.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def generate(n: int, out: str, seed: int = 0) -> None:
    from mlip.data.frames import Frame
    from mlip.data.hdf5 import write_shards

    rng = np.random.default_rng(seed)

    def frames():
        for i in range(n):
            pos = rng.normal(size=(8, 3)) * 1.4
            d = pos[:, None] - pos[None]
            r = np.linalg.norm(d, axis=-1) + np.eye(8)
            energy = float(np.sum(np.triu(1.0 / r ** 6 - 1.0 / r ** 3, 1)))
            forces = np.sum((6 / r ** 8 - 3 / r ** 5)[..., None] * d * (1 - np.eye(8))[..., None], axis=1)
            yield Frame(positions=pos, numbers=rng.choice([1, 6, 7, 8], size=8), cell=np.zeros((3, 3)),
                        pbc=np.zeros(3, bool), energy=energy, forces=forces, source=f"gen:{i}")

    write_shards(frames(), out, frames_per_shard=20000, graph_r_max=4.0, source=f"generated {n}")


def train(folder: str, steps: int) -> dict:
    import torch

    from mlip.data import make_loader
    from mlip.data import keys as K
    from mlip.data.hdf5 import HDF5Dataset
    from mlip.nn import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    ds = HDF5Dataset([folder], ["H", "C", "N", "O"], 4.0, torch.float32)
    model = build_model(dict(num_layers=2, channels=16, l_max=1, r_max=4.0, avg_num_neighbors=6.0),
                        ["H", "C", "N", "O"], "float32")
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loader = make_loader(ds, batch_size=16, shuffle=True, num_workers=2, persistent_workers=True)
    t0, step = time.time(), 0
    while step < steps:
        for batch in loader:
            out = model(batch, compute_forces=True, training=True)
            loss = (out[K.TOTAL_ENERGY].float() - batch[K.REF_ENERGY]).pow(2).mean() + \
                (out[K.FORCES] - batch[K.REF_FORCES]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    return {"frames": len(ds), "steps": steps, "seconds": time.time() - t0,
            "peak_rss_mb_main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_mb_workers": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[20000, 200000])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--workdir", default="/tmp/mlip-hdf5-memory")
    p.add_argument("--train-only", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.train_only:
        print(json.dumps(train(args.train_only, args.steps)))
        return
    for n in args.sizes:
        folder = os.path.join(args.workdir, f"n{n}")
        if not os.path.exists(os.path.join(folder, "manifest.json")):
            t = time.time()
            generate(n, folder)
            print(f"generated {n} structures in {time.time() - t:.0f} s", file=sys.stderr)
        size_mb = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 2 ** 20
        res = subprocess.run([sys.executable, __file__, "--train-only", folder, "--steps", str(args.steps)],
                             capture_output=True, text=True, check=True)
        result = json.loads(res.stdout.strip().splitlines()[-1])
        result["dataset_mb"] = round(size_mb, 1)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
