#!/usr/bin/env python
"""Peak memory of training from sharded HDF5 as the data set grows.

    python scripts/hdf5_memory.py --sizes 20000 200000 --minutes 1.5

For each size: generate that many labelled structures (jittered 8-atom CHNO cubes, labels from
a toy pair potential, radius graphs stored) with `mlip preprocess`'s writer, then, in a fresh
process, run `mlip train` on the folder (batch 16, 2 DataLoader workers, a fixed 500-structure
validation folder) for --minutes of training, and report the peak resident memory (ru_maxrss)
of the training process and of its largest worker.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np


def generate(n: int, out: str, seed: int = 0) -> None:
    from mlip.data.frames import Frame
    from mlip.data.hdf5 import write_shards

    rng = np.random.default_rng(seed)
    GRID = 1.5 * np.array([[i, j, k] for i in range(2) for j in range(2) for k in range(2)], dtype=float)

    def frames():
        for i in range(n):
            # a jittered 2x2x2 cube (1.5 A edges): no near-overlaps, so the labels stay moderate
            pos = GRID + rng.normal(scale=0.15, size=(8, 3))
            d = pos[:, None] - pos[None]
            r = np.linalg.norm(d, axis=-1) + np.eye(8)
            energy = float(np.sum(np.triu(1.0 / r ** 6 - 1.0 / r ** 3, 1)))
            forces = np.sum((6 / r ** 8 - 3 / r ** 5)[..., None] * d * (1 - np.eye(8))[..., None], axis=1)
            yield Frame(positions=pos, numbers=rng.choice([1, 6, 7, 8], size=8), cell=np.zeros((3, 3)),
                        pbc=np.zeros(3, bool), energy=energy, forces=forces, source=f"gen:{i}")

    write_shards(frames(), out, frames_per_shard=20000, graph_r_max=4.0, source=f"generated {n}")


def train(config_path: str) -> dict:
    """`mlip train CONFIG` in this process; its peak memory and that of its DataLoader workers."""
    import torch

    from mlip.cli import main as mlip_main

    torch.set_num_threads(1)
    t0 = time.time()
    code = mlip_main(["train", config_path])
    if code:
        sys.exit(code)
    return {"seconds": round(time.time() - t0, 1),
            "peak_rss_mb_main": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_rss_mb_workers": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def write_config(folder: str, valid: str, minutes: float, out: str) -> str:
    import yaml

    cfg = {"seed": 1, "dtype": "float32", "device": "cpu", "output_dir": out,
           "data": {"train_file": folder, "valid_file": valid, "batch_size": 16, "valid_batch_size": 64,
                    "num_workers": 2},
           "model": {"architecture": "nequip", "num_layers": 2, "channels": 16, "l_max": 1, "r_max": 4.0},
           "optim": {"lr": 0.005, "max_epochs": 1000},
           "train": {"max_time_minutes": minutes},
           "logging": {"progress_bar": False}}
    path = os.path.join(out + ".yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(cfg, fh)
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[20000, 200000])
    p.add_argument("--minutes", type=float, default=1.5, help="training budget of each run")
    p.add_argument("--workdir", default="/tmp/mlip-hdf5-memory")
    p.add_argument("--train-only", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.train_only:
        print(json.dumps(train(args.train_only)))
        return
    valid = os.path.join(args.workdir, "valid500")
    if not os.path.exists(os.path.join(valid, "manifest.json")):
        generate(500, valid, seed=99)
    for n in args.sizes:
        folder = os.path.join(args.workdir, f"n{n}")
        if not os.path.exists(os.path.join(folder, "manifest.json")):
            t = time.time()
            generate(n, folder)
            print(f"generated {n} structures in {time.time() - t:.0f} s", file=sys.stderr)
        size_mb = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 2 ** 20
        run = os.path.join(args.workdir, f"run{n}")
        shutil.rmtree(run, ignore_errors=True)
        config = write_config(folder, valid, args.minutes, run)
        res = subprocess.run([sys.executable, __file__, "--train-only", config],
                             capture_output=True, text=True)
        if res.returncode:
            sys.exit(res.stdout[-2000:] + res.stderr[-2000:])
        result = json.loads(res.stdout.strip().splitlines()[-1])
        import glob

        import torch

        ckpt = torch.load(sorted(glob.glob(os.path.join(run, "checkpoints", "ckpt-*.pt")))[-1], weights_only=True)
        result.update(frames=n, dataset_mb=round(size_mb, 1), steps=int(ckpt["global_step"]))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
