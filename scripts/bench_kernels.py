#!/usr/bin/env python
"""Benchmark the message step: fused Triton kernels vs the torch reference vs e3nn's TensorProduct.

For model sizes S (64 channels, l_max 1) and M (128 channels, l_max 2), both parities (a middle
interaction layer: hidden irreps in, hidden irreps out), over a range of edge counts, it times

    fwd   forward only (no autograd graph)                        -- inference / MD without forces
    bwd   forward + backward w.r.t. h, Y and W                     -- energy-only training
    dbwd  forward + first derivatives with create_graph + backward
          of a functional of them                                  -- force training (double backward)

and prints edges/s and peak memory (CUDA only: peak allocated during the step minus what was
allocated before it). Each (size, edges) runs on a random graph with ``--neighbors`` edges per
receiver, edges sorted by receiver as the neighbour list produces them.

    python scripts/bench_kernels.py                       # CUDA: everything, default edge counts
    python scripts/bench_kernels.py --sizes M --edges 65536,262144 --modes dbwd --dtype float32
    python scripts/bench_kernels.py --device cpu          # reference and e3nn only (no Triton on CPU)
    python scripts/bench_kernels.py --interpret --edges 64 --channels 4 --repeat 1
          # smoke run of every path through the Triton interpreter; its timings mean nothing

The fused kernels need CUDA (or ``--interpret``); on a CPU-only machine they are skipped, and
no GPU figure is implied by anything this script prints there.
"""
import argparse
import os
import sys
import time
from typing import Callable, Dict, List, Optional

if "--interpret" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton (e3nn does)

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlip.irreps import hidden_irreps, sh_irreps  # noqa: E402
from mlip.ops.message import message_reference  # noqa: E402
from mlip.ops.tensor_product import TensorProductSpec, reachable_irreps  # noqa: E402

SIZES = {"S": (64, 1), "M": (128, 2)}
DEFAULT_EDGES_GPU = [2 ** 14, 2 ** 16, 2 ** 18, 2 ** 20]
DEFAULT_EDGES_CPU = [2 ** 10, 2 ** 12, 2 ** 14]


def make_spec(l_max: int, parity: bool) -> TensorProductSpec:
    hidden, sh = hidden_irreps(l_max, parity), sh_irreps(l_max, parity)
    return TensorProductSpec(hidden, sh, reachable_irreps(hidden, sh, hidden))


def make_graph(num_edges: int, neighbors: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    num_nodes = max(2, num_edges // neighbors)
    receiver = torch.sort(torch.randint(0, num_nodes, (num_edges,), generator=g)).values
    sender = torch.randint(0, num_nodes, (num_edges,), generator=g)
    return torch.stack([receiver, sender]).to(device), num_nodes


def e3nn_message(spec: TensorProductSpec, channels: int, device, dtype):
    """gather + e3nn o3.TensorProduct ('uvu', external per-edge weights) + index_add scatter.
    Works in e3nn's flat [*, C*D] layout (conversion is outside the timed region)."""
    from e3nn import o3

    from mlip.irreps import e3nn_irreps

    irreps_in = e3nn_irreps(spec.irreps_in, channels)
    irreps_sh = e3nn_irreps(spec.irreps_sh, 1)
    irreps_out = e3nn_irreps(spec.irreps_out, channels)
    instructions = [(p.i_in, p.i_sh, k, "uvu", True) for k, p in enumerate(spec.paths)]
    tp = o3.TensorProduct(irreps_in, irreps_sh, irreps_out, instructions, shared_weights=False,
                          internal_weights=False).to(device=device, dtype=dtype)

    def run(x_flat, y, w_flat, edge_index, num_nodes):
        msg = tp(x_flat.index_select(0, edge_index[1]), y, w_flat)
        out = torch.zeros(num_nodes, msg.shape[1], dtype=msg.dtype, device=msg.device)
        return out.index_add_(0, edge_index[0], msg)

    return run, tp.weight_numel


def make_runner(backend: str, spec: TensorProductSpec, channels: int, device, dtype, scatter: str):
    """-> (fn(x, y, w, edge_index, num_nodes), input-shape adapter)."""
    if backend == "reference":
        cg, po = spec.cg_tensor(dtype).to(device), spec.path_of_output().to(device)
        return (lambda x, y, w, ei, n: message_reference(x, y, w, ei, cg, po, n)), None
    if backend == "fused":
        from mlip.ops.triton_message import fused_message
        return (lambda x, y, w, ei, n: fused_message(x, y, w, ei, spec, n, scatter=scatter)), None
    if backend == "e3nn":
        fn, weight_numel = e3nn_message(spec, channels, device, dtype)
        assert weight_numel == spec.num_paths * channels

        def adapt(x, y, w):
            from mlip.irreps import to_e3nn
            return to_e3nn(x.detach(), spec.irreps_in), y.detach(), w.detach().reshape(w.shape[0], -1)

        return fn, adapt
    raise ValueError(backend)


def step(mode: str, fn: Callable, x, y, w, edge_index, num_nodes):
    if mode == "fwd":
        with torch.no_grad():
            return fn(x, y, w, edge_index, num_nodes)
    xs = [t.detach().requires_grad_(True) for t in (x, y, w)]
    out = fn(*xs, edge_index, num_nodes)
    if mode == "bwd":
        return torch.autograd.grad(out, xs, torch.ones_like(out))
    first = torch.autograd.grad(out, xs, torch.ones_like(out), create_graph=True)
    functional = sum((g * g).sum() for g in first)
    return torch.autograd.grad(functional, xs)


def measure(mode, fn, args, device, warmup: int, repeat: int) -> Dict[str, Optional[float]]:
    cuda = device.type == "cuda"
    for _ in range(warmup):
        step(mode, fn, *args)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(repeat):
        res = step(mode, fn, *args)
        del res
    if cuda:
        torch.cuda.synchronize()
    elapsed = (time.perf_counter() - t0) / repeat
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20 if cuda else None
    return {"seconds": elapsed, "peak_mib": peak}


def run(argv: Optional[List[str]] = None) -> List[Dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="S,M", help="comma list of S, M")
    ap.add_argument("--edges", default=None, help="comma list of edge counts")
    ap.add_argument("--modes", default="fwd,bwd,dbwd")
    ap.add_argument("--backends", default="fused,reference,e3nn")
    ap.add_argument("--scatter", default="deterministic", choices=["deterministic", "atomic", "both"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    ap.add_argument("--no-parity", action="store_true", help="SO(3) irreps (even only) instead of O(3)")
    ap.add_argument("--channels", type=int, default=None, help="override the channels of every size")
    ap.add_argument("--neighbors", type=int, default=24, help="average edges per receiver")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--interpret", action="store_true",
                    help="run the fused kernels in the Triton interpreter on CPU (smoke test; timings meaningless)")
    args = ap.parse_args(argv)

    interpret = args.interpret or os.environ.get("TRITON_INTERPRET") == "1"
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    edges = [int(e) for e in args.edges.split(",")] if args.edges else \
        (DEFAULT_EDGES_GPU if device.type == "cuda" else DEFAULT_EDGES_CPU)
    backends = args.backends.split(",")
    scatters = ["deterministic", "atomic"] if args.scatter == "both" else [args.scatter]
    notes = []
    if "fused" in backends and device.type != "cuda" and not interpret:
        backends.remove("fused")
        notes.append("fused: skipped (needs CUDA, or --interpret for a meaningless-speed smoke run)")

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"# device: {device} ({gpu}); dtype {args.dtype}; torch {torch.__version__}"
          + ("; TRITON INTERPRETER: timings are not kernel speed" if interpret and "fused" in backends else ""))
    for note in notes:
        print(f"# {note}")
    header = f"{'size':<4} {'C':>4} {'lmax':>4} {'edges':>9} {'mode':<5} {'backend':<18} {'edges/s':>12} " \
             f"{'ms':>10} {'peak MiB':>9} {'vs ref':>7}"
    print(header)
    print("-" * len(header))
    rows = []
    for size in args.sizes.split(","):
        channels, l_max = SIZES[size]
        channels = args.channels or channels
        spec = make_spec(l_max, not args.no_parity)
        for num_edges in edges:
            edge_index, num_nodes = make_graph(num_edges, args.neighbors, device)
            g = torch.Generator().manual_seed(1)
            x = torch.randn(num_nodes, spec.dim_in, channels, generator=g).to(device, dtype)
            y = torch.randn(num_edges, spec.dim_sh, generator=g).to(device, dtype)
            w = torch.randn(num_edges, spec.num_paths, channels, generator=g).to(device, dtype)
            for mode in args.modes.split(","):
                ref_time = None
                variants = []
                for backend in backends:
                    for sc in (scatters if backend == "fused" else [None]):
                        variants.append((backend, sc))
                # reference first so "vs ref" can be filled in
                variants.sort(key=lambda v: v[0] != "reference")
                for backend, sc in variants:
                    label = backend if sc is None else ("fused-det" if sc == "deterministic" else "fused-atomic")
                    fn, adapt = make_runner(backend, spec, channels, device, dtype, sc or "deterministic")
                    inputs = adapt(x, y, w) if adapt else (x, y, w)
                    try:
                        r = measure(mode, fn, (*inputs, edge_index, num_nodes), device, args.warmup, args.repeat)
                    except torch.cuda.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        print(f"{size:<4} {channels:>4} {l_max:>4} {num_edges:>9} {mode:<5} {label:<18} "
                              f"{'OOM':>12}")
                        continue
                    eps = num_edges / r["seconds"]
                    if backend == "reference":
                        ref_time = r["seconds"]
                    speedup = f"{ref_time / r['seconds']:.2f}x" if ref_time else "-"
                    peak = f"{r['peak_mib']:.1f}" if r["peak_mib"] is not None else "n/a"
                    print(f"{size:<4} {channels:>4} {l_max:>4} {num_edges:>9} {mode:<5} {label:<18} {eps:>12.3e} "
                          f"{1e3 * r['seconds']:>10.3f} {peak:>9} {speedup:>7}", flush=True)
                    rows.append(dict(size=size, channels=channels, l_max=l_max, edges=num_edges, mode=mode,
                                     backend=label, edges_per_s=eps, seconds=r["seconds"], peak_mib=r["peak_mib"],
                                     device=gpu, interpreted=interpret and backend == "fused"))
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
