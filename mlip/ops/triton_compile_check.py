"""Compile the generated message kernels for an NVIDIA GPU *without* a GPU, and report their
register use and spills.

Triton's NVIDIA backend lowers a kernel to PTX and assembles it with the ``ptxas`` bundled in
the Triton wheel; neither step needs a device or a driver. ``cuobjdump -res-usage`` (also
bundled) then reads the registers per thread and the stack (spill) bytes from the cubin. This
checks that every generated kernel is valid Triton for real hardware (the interpreter is more
lenient) and catches register spills, the first thing that would make a fused kernel slow.
It says nothing about speed.

    python -m mlip.ops.triton_compile_check --lmax 2 --channels 128 --dtype float32
"""
import argparse
import os
import subprocess
import tempfile
import time
from typing import Dict, Iterable, List, Optional

import torch

from mlip.ops import triton_message as tm
from mlip.ops.tensor_product import TensorProductSpec

_INDEX_ARGS = {"GATHER", "PERM", "ROWPTR", "SCATTER", "SEND", "RECV"}
_CONSTEXPR_ARGS = {"C", "DT", "BLOCK_E", "BLOCK_C"}


def _tool(name: str) -> str:
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise RuntimeError(f"Triton's NVIDIA backend tool '{name}' is not available at {path}")
    return path


def available() -> bool:
    try:
        _tool("ptxas")
        _tool("cuobjdump")
        from triton.backends.compiler import GPUTarget  # noqa: F401
        return True
    except Exception:
        return False


def _resource_usage(cubin: bytes) -> Dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        name = f.name
    try:
        out = subprocess.run([_tool("cuobjdump"), "-res-usage", name], capture_output=True, text=True,
                             check=True).stdout
    finally:
        os.unlink(name)
    for line in out.splitlines():
        if "REG:" in line:
            fields = dict(tok.split(":", 1) for tok in line.split() if ":" in tok)
            return {"registers": int(fields["REG"]), "stack_bytes": int(fields["STACK"]),
                    "shared_bytes": int(fields.get("SHARED", 0))}
    raise RuntimeError(f"no resource usage in cuobjdump output:\n{out}")


def compile_report(spec: TensorProductSpec, dtype: torch.dtype = torch.float32, channels: int = 128,
                   arch: int = 90, slots: Iterable[str] = "zxyw", modes: Iterable[str] = tm.SCATTER_MODES,
                   config: Optional[Dict] = None) -> List[Dict]:
    """Compile every generated kernel of ``spec`` for sm_``arch`` with the launch configuration
    ``config`` (default :data:`mlip.ops.triton_message.CONFIG`); one row per kernel."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cfg = config or tm.CONFIG
    plan = tm.plan_for(spec)
    target = GPUTarget("cuda", arch, 32)
    ptr = "*fp64" if dtype == torch.float64 else "*fp32"
    rows = []
    for free in slots:
        for mode in (modes if free in ("x", "z") else ["edge"]):
            lp = tm.launch_params(free, mode, dtype, channels, cfg, interpret=False)
            for group, outputs in enumerate(tm.output_groups(plan, free, cfg["max_outputs"][free])):
                name = f"check_{free}_{mode[:3]}_{group}"
                kernel = tm._compile(name, tm._generate(name, plan, free, mode, outputs), interpret=False)
                signature = {a: ("constexpr" if a in _CONSTEXPR_ARGS else "*i64" if a in _INDEX_ARGS
                                 else "i32" if a == "E" else ptr) for a in kernel.arg_names}
                constants = {"C": channels, "DT": tl.float64 if dtype == torch.float64 else tl.float32,
                             "BLOCK_E": lp["BLOCK_E"], "BLOCK_C": lp["BLOCK_C"]}
                t0 = time.perf_counter()
                compiled = triton.compile(ASTSource(kernel, signature, constants), target=target,
                                          options={"num_warps": lp["num_warps"], "num_stages": lp["num_stages"]})
                row = {"slot": free, "mode": mode, "group": group, "outputs": len(outputs),
                       "compile_s": time.perf_counter() - t0}
                row.update(_resource_usage(compiled.asm["cubin"]))
                rows.append(row)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    from mlip.irreps import hidden_irreps, sh_irreps
    from mlip.ops.tensor_product import reachable_irreps

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lmax", type=int, default=2)
    ap.add_argument("--no-parity", action="store_true")
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 (A100), 90 (H100)")
    args = ap.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    hidden, sh = hidden_irreps(args.lmax, not args.no_parity), sh_irreps(args.lmax, not args.no_parity)
    spec = TensorProductSpec(hidden, sh, reachable_irreps(hidden, sh, hidden))
    print(f"# sm_{args.arch}, l_max {args.lmax}, {args.channels} channels, {args.dtype}: "
          f"{len(spec.sparse_entries())} CG entries, Din {spec.dim_in}, Dsh {spec.dim_sh}, Dout {spec.dim_out}")
    print(f"{'slot':<5}{'mode':<15}{'group':>6}{'outputs':>8}{'regs':>6}{'spill B':>9}{'compile s':>10}")
    for r in compile_report(spec, getattr(torch, args.dtype), args.channels, args.arch):
        print(f"{r['slot']:<5}{r['mode']:<15}{r['group']:>6}{r['outputs']:>8}{r['registers']:>6}"
              f"{r['stack_bytes']:>9}{r['compile_s']:>10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
