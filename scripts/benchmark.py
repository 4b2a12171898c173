#!/usr/bin/env python
"""Time mlip on the shared yardstick workloads (../shared/bench/workloads.py), model size S.

    python scripts/benchmark.py                      # every workload, one JSON line each
    python scripts/benchmark.py cu256-infer --repeats 5
    python scripts/benchmark.py --compare            # MACE, NequIP, mlip and mlip+compile alternately,
                                                     # with ratios
    python scripts/benchmark.py --compare --peers nequip --rounds 3   # 3 alternations; median ratios
    python scripts/benchmark.py --compare --no-compiled --peer-malloc-tuning   # eager mlip only;
                                                     # peers under mlip's allocator setting too

Fields match peers.py: workload, program, seconds (median of --repeats after 3 warm-up calls),
atoms, structures, threads, params; plus peak_rss_mb (resident memory high-water mark of the
process that ran the workload). "infer" = energy + forces of one batch; "train" = one optimiser
step of an energy + force MSE loss. Graph construction is outside the timing, as for the peers.
Peers need ../shared/bench/setup_peers.sh first. The mlip process applies mlip.perf.tune_malloc()
(glibc allocator setting, as `mlip train` and the ASE calculator do; the peers keep glibc's
defaults); MLIP_MALLOC_TUNING=0 times mlip without it.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BENCH = os.path.join(REPO, "..", "shared", "bench")
PEERS_ROOT = os.environ.get("MLIP_PEERS", os.path.expanduser("~/.cache/mlip-peers"))


def time_mlip(workload: str, threads: int, repeats: int, compiled: bool = False) -> dict:
    import numpy as np
    import torch

    sys.path.insert(0, BENCH)
    from workloads import MODEL_S, WORKLOADS

    from mlip.data import GraphDataset, collate, frames_from_atoms_list
    from mlip.data import keys as K
    from mlip.nn import build_model

    from mlip.perf import tune_malloc

    torch.set_num_threads(threads)
    tune_malloc()  # as `mlip train` and the ASE calculator do (MLIP_MALLOC_TUNING=0: off)
    kind, build = WORKLOADS[workload]
    frames = frames_from_atoms_list(build())
    S = MODEL_S
    dtype = getattr(torch, S["dtype"])
    from ase.data import chemical_symbols
    species = sorted({int(z) for f in frames for z in f.numbers})
    type_names = [chemical_symbols[z] for z in species]
    torch.manual_seed(0)
    model = build_model(dict(architecture="nequip", num_layers=S["num_layers"], channels=S["channels"],
                             l_max=S["l_max"], parity=False, r_max=S["r_max"], num_bessel=S["num_bessel"],
                             radial_hidden=128, radial_depth=1,  # the radial MLP NequIP 0.7 builds at size S
                             self_connection="embedding",  # NequIP's self-connection: parameter counts match
                             avg_num_neighbors=20.0), type_names, dtype)
    batch = collate(GraphDataset(frames, type_names, S["r_max"], dtype).graphs)
    e_ref, f_ref = batch[K.REF_ENERGY].to(dtype), batch[K.REF_FORCES]
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    potential = model
    if compiled:  # energy + forces traced into one graph and compiled (mlip.nn.compiled; train.compile)
        from mlip.nn.compiled import CompiledPotential

        potential = CompiledPotential(model)

    def call():
        if kind == "infer":
            out = potential(batch, compute_forces=True)
            return float(out[K.TOTAL_ENERGY].detach().sum())
        opt.zero_grad(set_to_none=True)
        out = potential(batch, compute_forces=True, training=True)
        loss = ((out[K.TOTAL_ENERGY].to(dtype) - e_ref) ** 2).mean() + ((out[K.FORCES] - f_ref) ** 2).mean()
        loss.backward()
        opt.step()
        return float(loss)

    for _ in range(3):  # with --compiled the first call traces and compiles (not timed)
        call()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return {"workload": workload, "program": "mlip+compile" if compiled else "mlip",
            "seconds": statistics.median(times),
            "atoms": sum(len(f) for f in frames), "structures": len(frames), "threads": threads,
            "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# glibc tunables equal to mlip.perf.tune_malloc(), for running the peers under the same allocator
# setting (--peer-malloc-tuning): no mmap blocks, 1 GiB trim threshold, 64 MiB top pad
PEER_MALLOC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824:glibc.malloc.top_pad=67108864"


def run_child(program: str, workload: str, threads: int, repeats: int, peer_malloc_tuning: bool = False) -> dict:
    """Each measurement in a fresh process, so peak memory and thread pools are its own."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    if program.startswith("mlip"):
        cmd = [sys.executable, os.path.abspath(__file__), workload, "--threads", str(threads), "--repeats", str(repeats)]
        if program == "mlip+compile":
            cmd.append("--compiled")
    else:
        py = os.path.join(PEERS_ROOT, program, "bin", "python")
        if not os.path.exists(py):
            return {"workload": workload, "program": program, "error": f"{py} missing: run setup_peers.sh"}
        # peak memory of the peer process, measured from outside
        cmd = [py, "-c", "import resource,runpy,sys,json,io,contextlib;sys.argv=sys.argv[1:];"
               "buf=io.StringIO()\nwith contextlib.redirect_stdout(buf): runpy.run_path(sys.argv[0], run_name='__main__')\n"
               "d=json.loads(buf.getvalue().strip().splitlines()[-1]);"
               "d['peak_rss_mb']=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024;print(json.dumps(d))",
               os.path.join(BENCH, "peers.py"), program, workload, "--threads", str(threads), "--repeats", str(repeats)]
        if peer_malloc_tuning:
            env["GLIBC_TUNABLES"] = PEER_MALLOC_TUNABLES
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in res.stdout.strip().splitlines() if l.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"workload": workload, "program": program, "error": (res.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def _w(program: str, width: int) -> int:
    """Column width: at least `width`, wide enough for the program's longest header."""
    return max(width, len(program) + 9)


def compare(workloads, threads: int, repeats: int, peers, ours=("mlip",), peer_malloc_tuning: bool = False,
            rounds: int = 1) -> None:
    """Peers and mlip variants alternately per workload, `rounds` times; a table of median seconds,
    peak MB, parameters and peer / mlip ratios for every mlip variant. With several rounds each
    ratio is the median of the per-round ratios (peer and mlip timed back to back, so a machine
    that changes speed between minutes moves both), with the lowest and highest round beside it."""
    programs = list(peers) + list(ours)
    rows = []
    for w in workloads:
        results = {p: [] for p in programs}
        for _ in range(rounds):
            for program in programs:  # alternate programs within a workload: same machine state
                r = run_child(program, w, threads, repeats, peer_malloc_tuning)
                results[program].append(r)
                print(json.dumps(r), flush=True)
        rows.append((w, results))
    print()
    if peer_malloc_tuning:
        print(f"peers ran with GLIBC_TUNABLES={PEER_MALLOC_TUNABLES} (the allocator setting mlip applies)")
    if rounds > 1:
        print(f"{rounds} rounds: seconds are medians over rounds; "
              "ratios are medians of per-round ratios [lowest-highest]")
    ratio_width = 20 if rounds == 1 else 32
    head = f"{'workload':<13}" + "".join(f"{p + ' s':>{_w(p, 14)}}{p + ' MB':>{_w(p, 10)}}{p + ' params':>{_w(p, 14)}}"
                                         for p in programs)
    head += "".join(f"{p + '/' + o:>{ratio_width}}" for o in ours for p in peers)
    print(head)
    for w, res in rows:
        ok = {p: [r for r in res[p] if "seconds" in r] for p in programs}
        line = f"{w:<13}"
        for p in programs:
            if ok[p]:
                line += (f"{_median([r['seconds'] for r in ok[p]]):>{_w(p, 14)}.4f}"
                         f"{max(r.get('peak_rss_mb', float('nan')) for r in ok[p]):>{_w(p, 10)}.0f}"
                         f"{ok[p][0].get('params', 0):>{_w(p, 14)}d}")
            else:
                line += f"{'error':>{_w(p, 14)}}{'':>{_w(p, 10)}}{'':>{_w(p, 14)}}"
        for o in ours:
            for p in peers:
                ratios = [a["seconds"] / b["seconds"] for a, b in zip(res[p], res[o])
                          if "seconds" in a and "seconds" in b]
                if not ratios:
                    line += f"{'n/a':>{ratio_width}}"
                elif rounds == 1:
                    line += f"{ratios[0]:>19.2f}x"
                else:
                    line += f"{f'{_median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]':>{ratio_width}}"
        print(line)
    for w, res in rows:
        for p, rs in res.items():
            for r in rs:
                if "error" in r:
                    print(f"{w} {p}: {r['error']}")


def main():
    sys.path.insert(0, BENCH)
    from workloads import WORKLOADS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workloads", nargs="*", help=f"default: all of {sorted(WORKLOADS)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compare", action="store_true", help="run the peers and mlip alternately, print ratios")
    p.add_argument("--peers", nargs="+", default=["mace", "nequip"], choices=["mace", "nequip"])
    p.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=None,
                   help="time mlip with energy + forces traced and compiled (mlip.nn.compiled: calculator "
                        "compile=True, train.compile); with --compare (default there: on) an extra program "
                        "'mlip+compile' next to the eager mlip, compile time not timed")
    p.add_argument("--rounds", type=int, default=1,
                   help="with --compare: alternate the programs this many times per workload; medians and the "
                        "range of the per-round ratios are printed (the machine's speed drifts)")
    p.add_argument("--peer-malloc-tuning", action="store_true",
                   help="with --compare: run the peers under the glibc allocator setting mlip applies to itself")
    args = p.parse_args()
    workloads = args.workloads or sorted(WORKLOADS)
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workloads {sorted(unknown)}; choose from {sorted(WORKLOADS)}")
    compiled = args.compiled if args.compiled is not None else args.compare
    ours = ("mlip", "mlip+compile") if compiled else ("mlip",)
    if args.compare:
        compare(workloads, args.threads, args.repeats, args.peers, ours, args.peer_malloc_tuning, max(1, args.rounds))
    elif len(workloads) == 1:
        print(json.dumps(time_mlip(workloads[0], args.threads, args.repeats, compiled)), flush=True)
    else:
        for w in workloads:
            print(json.dumps(run_child(ours[-1], w, args.threads, args.repeats)), flush=True)


if __name__ == "__main__":
    main()
