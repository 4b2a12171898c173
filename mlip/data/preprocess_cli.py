"""``mlip preprocess``: ASE-readable files / npz -> sharded HDF5 with streaming statistics."""
import argparse
import json

from mlip.data.frames import LabelKeys, NpzKeys, Units
from mlip.data.hdf5 import iter_frames, write_shards
from mlip.data.neighbors import MIN_DISTANCE


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="structure files (any ASE format, or rMD17-style .npz)")
    p.add_argument("-o", "--output", required=True, help="output folder (manifest.json + shard_*.h5)")
    p.add_argument("--frames-per-shard", type=int, default=10000)
    p.add_argument("--r-max", type=float, default=None,
                   help="also store radius graphs for this cutoff (Angstrom); training with the same r_max reuses them")
    p.add_argument("--energy-key", default="energy")
    p.add_argument("--forces-key", default="forces")
    p.add_argument("--stress-key", default="stress")
    p.add_argument("--energy-unit", default=None, help="eV (default for ASE files), kcal/mol (default for .npz), ...")
    p.add_argument("--index", default=":", help="ASE index of the frames to take from each file")
    p.add_argument("--min-distance", type=float, default=MIN_DISTANCE,
                   help=f"two atoms closer than this (Angstrom) are an error (default {MIN_DISTANCE}; 0: no check)")


def run(args) -> int:
    keys = LabelKeys(energy=args.energy_key, forces=args.forces_key, stress=args.stress_key)
    units = Units(energy=args.energy_unit) if args.energy_unit else None
    frames = iter_frames(args.inputs, keys=keys, units=units, index=args.index, npz_keys=NpzKeys())
    manifest = write_shards(_progress(frames), args.output, args.frames_per_shard, args.r_max,
                            source=" ".join(args.inputs), min_distance=args.min_distance)
    print(f"wrote {len(manifest['shards'])} shard(s) to {args.output}")
    print(json.dumps(manifest["statistics"], indent=1))
    return 0


def _progress(frames):
    from tqdm import tqdm
    yield from tqdm(frames, desc="preprocess", unit=" frames", mininterval=1.0)
