#!/usr/bin/env python
"""Time one training step and one inference call of mlip and its peers on a GPU, side by side.

Workloads are ../shared/bench/workloads.py's four (cu256-infer, cu-train, 3bpa-infer,
3bpa-train) plus cu3456-train (32 strained Cu cells, 3456 atoms: a batch of a few thousand atoms),
at model size S (workloads.MODEL_S: 2 layers, 64 channels, l_max 1, r 5 A, float32) and size L
(3 layers, 128 channels, l_max 2). Programs:

    mlip-triton     mlip's NequIP-style model, eager, message step in the fused Triton kernels
    mlip-torch      the same model with message_backend torch (plain torch ops)
    mlip-compiled   energy + forces traced and compiled (mlip.nn.compiled; torch ops inside)
    nequip          NequIP 0.19, eager                nequip-compile   NequIP's compile_mode "compile"
    mace            mace-torch 0.3.16 (max_ell 3, correlation 3, as peers.py)
    mace-cueq       mace-torch with cuEquivariance (optimize_all, ir_mul layout)

"infer" = energy + forces of one batch, "train" = one Adam step on an energy + force MSE loss;
graph construction is outside the timing. Each figure is the median of --repeats calls after 3
warm-up calls (compilation happens there), the device synchronised around each call; peak_mb is
torch.cuda.max_memory_allocated over the timed calls.

One process per program family (mlip / nequip / mace) times all its cases, so imports and kernel
compilation are paid once; each family runs with its own site folder on PYTHONPATH (the peers pin
other e3nn versions). The driver gives every family a share of --budget-s, kills a family that
overruns it, and rewrites --out (JSON) after every figure, so a run cut short keeps what it measured.

    python scripts/gpu_bench.py --out gpu_bench.json                  # on the GPU machine
    python scripts/gpu_bench.py --device cpu --dry-run --out x.json   # rehearsal: tiny sizes, timings meaningless
"""
import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

SIZES = {
    "S": dict(num_layers=2, channels=64, l_max=1, r_max=5.0, num_bessel=8, dtype="float32"),
    "L": dict(num_layers=3, channels=128, l_max=2, r_max=5.0, num_bessel=8, dtype="float32"),
    # rehearsal size: every code path, seconds on a CPU
    "tiny": dict(num_layers=2, channels=8, l_max=1, r_max=4.0, num_bessel=4, dtype="float32"),
}
WORKLOADS = ("cu-train", "3bpa-train", "cu256-infer", "3bpa-infer", "cu3456-train")
FAMILIES = {"mlip": ("mlip-triton", "mlip-torch", "mlip-compiled"), "nequip": ("nequip", "nequip-compile"),
            "mace": ("mace", "mace-cueq")}
# the order in which the driver runs the families' programs: plain first, compiled last (slow to build)
PHASES = (("mlip", ("mlip-triton", "mlip-torch")), ("nequip", ("nequip",)), ("mace", ("mace",)),
          ("mace", ("mace-cueq",)), ("mlip", ("mlip-compiled",)), ("nequip", ("nequip-compile",)))


# ---- the workloads ----------------------------------------------------------------------------

def load_frames(workload: str, bench_dir: str, dry_run: bool):
    """ASE Atoms with info['energy'] and arrays['forces'] (EMT or DFT labels)."""
    sys.path.insert(0, bench_dir)
    import workloads as W

    if workload == "cu3456-train":
        frames = W.cu_frames(32, 3)
    else:
        frames = W.WORKLOADS[workload][1]()
    if dry_run:  # a few small structures: every code path, not the sizes
        frames = [a[:12] if len(a) > 12 else a for a in frames[:2]]
    return frames


def kind_of(workload: str) -> str:
    return "train" if workload.endswith("train") else "infer"


def time_calls(call, repeats: int, device: str) -> dict:
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        call()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t)
    out = {"seconds": statistics.median(times), "min_seconds": min(times)}
    if device == "cuda":
        out["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def step_fn(kind, forward, params, e_ref, f_ref):
    """One inference call or one optimiser step; forward() -> (energies, forces)."""
    import torch

    opt = torch.optim.Adam(params, 1e-3)

    def call():
        if kind == "infer":
            e, f = forward(False)
            return e.detach().sum()
        opt.zero_grad(set_to_none=True)
        e, f = forward(True)
        loss = ((e.to(e_ref.dtype) - e_ref) ** 2).mean() + ((f - f_ref) ** 2).mean()
        loss.backward()
        opt.step()
        return loss.detach()
    return call


def references(frames, dtype, device):
    import numpy as np
    import torch

    e = torch.tensor([a.info["energy"] for a in frames], dtype=torch.float64, device=device)
    f = torch.tensor(np.concatenate([a.arrays["forces"] for a in frames]), dtype=dtype, device=device)
    return e, f


# ---- the programs -----------------------------------------------------------------------------

def mlip_case(program, frames, S, device, kind):
    import torch
    from ase.data import chemical_symbols

    from mlip.data import GraphDataset, collate, frames_from_atoms_list
    from mlip.data import keys as K
    from mlip.data.graph import to_device
    from mlip.nn import build_model

    dtype = getattr(torch, S["dtype"])
    mframes = frames_from_atoms_list(frames)
    species = sorted({int(z) for f in mframes for z in f.numbers})
    names = [chemical_symbols[z] for z in species]
    torch.manual_seed(0)
    model = build_model(dict(architecture="nequip", num_layers=S["num_layers"], channels=S["channels"],
                             l_max=S["l_max"], parity=False, r_max=S["r_max"], num_bessel=S["num_bessel"],
                             radial_hidden=128, radial_depth=1, self_connection="embedding",
                             avg_num_neighbors=20.0,
                             message_backend="torch" if program == "mlip-torch" else "triton"),
                        names, dtype).to(device)
    batch = to_device(collate(GraphDataset(mframes, names, S["r_max"], dtype).graphs), device)
    potential = model
    if program == "mlip-compiled":
        from mlip.nn.compiled import CompiledPotential

        potential = CompiledPotential(model)

    def forward(training):
        out = potential(batch, compute_forces=True, training=training)
        return out[K.TOTAL_ENERGY], out[K.FORCES]
    params = [p for p in model.parameters() if p.requires_grad]
    return forward, params


def nequip_case(program, frames, S, device, kind):
    import torch
    from nequip.data import AtomicDataDict
    from nequip.data._nl import compute_neighborlist_
    from nequip.data.ase import from_ase
    from nequip.model.nequip_models import NequIPGNNModel
    from nequip.utils.global_state import set_global_state

    set_global_state()
    species = sorted({int(z) for a in frames for z in a.numbers})
    model = NequIPGNNModel(seed=0, model_dtype=S["dtype"], type_names=[f"Z{z}" for z in species], r_max=S["r_max"],
                           num_layers=S["num_layers"], l_max=S["l_max"], parity=False, num_features=S["channels"],
                           num_bessels=S["num_bessel"], avg_num_neighbors=20.0, per_type_energy_scales=1.0,
                           per_type_energy_shifts=0.0,
                           compile_mode="compile" if program == "nequip-compile" else "eager").to(device)
    idx = {z: i for i, z in enumerate(species)}
    ds = []
    for a in frames:
        d = compute_neighborlist_(from_ase(a), r_max=S["r_max"])
        d[AtomicDataDict.ATOM_TYPE_KEY] = torch.tensor([idx[int(z)] for z in a.numbers], dtype=torch.long)
        ds.append(d)
    batch = AtomicDataDict.to_(AtomicDataDict.batched_from_list(ds), device)

    def forward(training):
        out = model(dict(batch))
        return out["total_energy"].view(-1), out["forces"]
    return forward, list(model.parameters())


def mace_case(program, frames, S, device, kind):
    import numpy as np
    import torch
    from e3nn import o3
    from mace import data as mdata, modules, tools
    from mace.tools import torch_geometric

    dtype = getattr(torch, S["dtype"])
    torch.set_default_dtype(dtype)
    species = sorted({int(z) for a in frames for z in a.numbers})
    hidden = "+".join(f"{S['channels']}x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(S["l_max"] + 1))
    extra = {}
    if program == "mace-cueq":
        from mace.modules.wrapper_ops import CUET_AVAILABLE, CuEquivarianceConfig

        if not CUET_AVAILABLE:
            raise RuntimeError("cuequivariance_torch does not import")
        extra["cueq_config"] = CuEquivarianceConfig(enabled=True, layout="ir_mul", group="O3_e3nn", optimize_all=True)
    inter = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.MACE(
        r_max=S["r_max"], num_bessel=S["num_bessel"], num_polynomial_cutoff=5, max_ell=3, interaction_cls=inter,
        interaction_cls_first=inter, num_interactions=S["num_layers"], num_elements=len(species),
        hidden_irreps=o3.Irreps(hidden), MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(len(species)),
        avg_num_neighbors=20.0, atomic_numbers=species, correlation=3, gate=torch.nn.functional.silu,
        **extra).to(dtype).to(device)
    z_table = tools.AtomicNumberTable(species)
    keyspec = mdata.KeySpecification(info_keys={"energy": "energy"}, arrays_keys={"forces": "forces"})
    configs = [mdata.config_from_atoms(a, key_specification=keyspec) for a in frames]
    ds = [mdata.AtomicData.from_config(c, z_table=z_table, cutoff=S["r_max"]) for c in configs]
    batch = next(iter(torch_geometric.dataloader.DataLoader(ds, batch_size=len(ds), shuffle=False))).to(device)
    batch = batch.to_dict()

    def forward(training):
        out = model(batch, training=training, compute_force=True)
        return out["energy"], out["forces"]
    return forward, list(model.parameters())


CASES = {"mlip": mlip_case, "nequip": nequip_case, "mace": mace_case}


def run_family(family, programs, cases, device, repeats, bench_dir, dry_run):
    """Child process: one JSON line per (program, size, workload), errors included."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 for every program
    for program in programs:
        for size_name, workload in cases:
            S = SIZES[size_name]
            row = {"program": program, "size": size_name, "workload": workload, "device": device}
            try:
                frames = load_frames(workload, bench_dir, dry_run)
                kind = kind_of(workload)
                forward, params = CASES[family](program, frames, S, device, kind)
                e_ref, f_ref = references(frames, getattr(torch, S["dtype"]), device)
                t0 = time.perf_counter()
                row.update(time_calls(step_fn(kind, forward, params, e_ref, f_ref), repeats, device))
                row.update(atoms=sum(len(a) for a in frames), structures=len(frames),
                           params=sum(p.numel() for p in params), wall_s=round(time.perf_counter() - t0, 1))
            except Exception as exc:  # one failing case must not stop the others
                row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
            print(json.dumps(row), flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()


# ---- the driver -------------------------------------------------------------------------------

def family_env(family, sites, device):
    """PYTHONPATH for a family: its own site folder first (e3nn pins), then mlip's (ase), then the repo."""
    paths = []
    if family != "mlip" and sites.get(family):
        paths.append(sites[family])
    if family == "mace" and sites.get("cueq"):
        paths.append(sites["cueq"])
    if sites.get("mlip"):
        paths.append(sites["mlip"])
    if family == "mlip":
        paths.append(REPO)
    env = dict(os.environ, PYTHONWARNINGS="ignore", TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    if device != "cuda" and family == "mlip":
        env["TRITON_INTERPRET"] = "1"  # a CPU rehearsal runs mlip-triton through the interpreter
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env


def run_phase(family, programs, cases, args, sites, deadline, results, write):
    cmd = [args.python.get(family, sys.executable), os.path.abspath(__file__), "--child", family,
           "--programs", ",".join(programs), "--cases", ",".join(f"{s}:{w}" for s, w in cases),
           "--device", args.device, "--repeats", str(args.repeats), "--bench-dir", args.bench_dir]
    if args.dry_run:
        cmd.append("--dry-run")
    expected = {(p, s, w) for p in programs for s, w in cases}
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=family_env(family, sites, args.device), bufsize=1)
    except OSError as exc:  # e.g. a --python that does not exist: report it per case, go on
        for p, s, w in sorted(expected):
            results.append({"program": p, "size": s, "workload": w, "device": args.device,
                            "error": f"not run: {type(exc).__name__}: {exc}"})
            show(results[-1])
        write()
        return
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            proc.kill()
            break
        ready, _, _ = select.select([proc.stdout], [], [], min(left, 5.0))
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                row = json.loads(line)
                results.append(row)
                expected.discard((row["program"], row["size"], row["workload"]))
                show(row)
                write()
        elif proc.poll() is not None:
            break
    proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    buf = (err.strip().splitlines() or [""])[-1][:300]
    for p, s, w in sorted(expected):  # what the phase did not get to
        reason = "not run: the family's time share ran out" if time.monotonic() >= deadline else \
                 f"not run: the {family} process ended ({buf or 'rc ' + str(proc.returncode)})"
        results.append({"program": p, "size": s, "workload": w, "device": args.device, "error": reason})
        write()


def show(row):
    if "error" in row:
        print(f"  {row['program']:<15}{row['size']:<5}{row['workload']:<14} error: {row['error']}", flush=True)
    else:
        mem = f"{row['peak_mb']:8.0f} MB" if "peak_mb" in row else ""
        print(f"  {row['program']:<15}{row['size']:<5}{row['workload']:<14}{row['seconds'] * 1e3:10.2f} ms{mem}"
              f"  (params {row['params']}, atoms {row['atoms']})", flush=True)


def table(results):
    """Milliseconds per call, one row per (size, workload), one column per program; then the
    fastest peer, and mlip-triton's speed-up over it and over mlip's own torch path (the issue's
    goals: at least 1.5x the fastest peer for training steps, never slower than torch)."""
    ok = {(r["program"], r["size"], r["workload"]): r for r in results if "seconds" in r}
    programs = [p for fam in FAMILIES.values() for p in fam if any(k[0] == p for k in ok)]
    rows = sorted({(r["size"], r["workload"]) for r in results})
    lines = ["ms per call (peak MB)", f"{'size':<5}{'workload':<14}" + "".join(f"{p:>22}" for p in programs)
             + f"{'fastest peer':>16}{'triton vs peer':>16}{'triton vs torch':>17}"]
    for s, w in rows:
        line = f"{s:<5}{w:<14}"
        for p in programs:
            r = ok.get((p, s, w))
            cell = f"{r['seconds'] * 1e3:.2f}" + (f" ({r['peak_mb']:.0f})" if "peak_mb" in r else "") if r else "-"
            line += f"{cell:>22}"
        peers = [(ok[(p, s, w)]["seconds"], p) for p in programs if not p.startswith("mlip") and (p, s, w) in ok]
        best = min(peers) if peers else None
        ours = ok.get(("mlip-triton", s, w))
        line += f"{best[1] if best else '-':>16}"
        line += f"{best[0] / ours['seconds']:>15.2f}x" if best and ours else f"{'-':>16}"
        torch_path = ok.get(("mlip-torch", s, w))
        line += f"{torch_path['seconds'] / ours['seconds']:>16.2f}x" if torch_path and ours else f"{'-':>17}"
        lines.append(line)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_bench.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sizes", default="S,L")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--programs", default=",".join(p for fam in FAMILIES.values() for p in fam))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=240.0, help="wall-clock budget for the whole run")
    ap.add_argument("--bench-dir", default=os.path.join(REPO, "..", "shared", "bench"),
                    help="folder of workloads.py (its ../data/3bpa is read)")
    ap.add_argument("--site", action="append", default=[], metavar="FAMILY=DIR",
                    help="site folder of a family (mlip, mace, nequip, cueq), put on its PYTHONPATH")
    ap.add_argument("--python", action="append", default=[], metavar="FAMILY=PYTHON",
                    help="interpreter for a family (default: this one)")
    ap.add_argument("--dry-run", action="store_true", help="two small structures per workload: a rehearsal")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cases", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        cases = [tuple(c.split(":")) for c in args.cases.split(",")]
        run_family(args.child, args.programs.split(","), cases, args.device, args.repeats, args.bench_dir,
                   args.dry_run)
        return
    sites = dict(s.split("=", 1) for s in args.site)
    args.python = dict(s.split("=", 1) for s in args.python)
    wanted = set(args.programs.split(","))
    unknown = wanted - {p for fam in FAMILIES.values() for p in fam}
    if unknown:
        ap.error(f"unknown programs {sorted(unknown)}")
    cases = [(s, w) for s in args.sizes.split(",") for w in args.workloads.split(",")]
    # cu3456-train is the "few thousand atoms" batch of size L only
    cases = [(s, w) for s, w in cases if w != "cu3456-train" or s != "S"]
    phases = [(fam, [p for p in progs if p in wanted]) for fam, progs in PHASES]
    phases = [(fam, progs) for fam, progs in phases if progs]
    results = []
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": args.device, "repeats": args.repeats,
            "sizes": {s: SIZES[s] for s in args.sizes.split(",")}, "dry_run": args.dry_run}
    try:
        import torch

        meta.update(torch=torch.__version__, cuda=torch.version.cuda,
                    gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None)
    except Exception:
        pass

    def write():
        tmp = args.out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"meta": meta, "results": results}, fh, indent=1)
        os.replace(tmp, args.out)

    end = time.monotonic() + args.budget_s
    for i, (family, programs) in enumerate(phases):
        now = time.monotonic()
        share = (end - now) / (len(phases) - i)  # unused time passes on to later phases
        print(f"[gpu_bench] {family}: {', '.join(programs)} ({share:.0f} s at most)", flush=True)
        run_phase(family, programs, cases, args, sites, now + share, results, write)
    write()
    print()
    print(table(results))
    print(f"\n[gpu_bench] {sum('seconds' in r for r in results)} figures, "
          f"{sum('error' in r for r in results)} errors; written to {args.out}")


if __name__ == "__main__":
    main()
