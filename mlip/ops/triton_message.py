"""Triton-fused message step: gather + channel-wise tensor product + radial weights + scatter.

    out[i, k, c] = sum over edges e = (i, j) of  W[e, path(k), c] * sum_{a, b} CG[a, b, k] h[j, a, c] Y[e, b]

Per-edge messages are never written to memory: every program keeps its partial sums in
registers and writes (or atomically adds) only node-sized results.

How backward and double backward stay fused
-------------------------------------------
The message step is the derivative of one 4-linear form over the graph,

    L(x, y, w, z) = sum_e sum_c sum_{(a, b, k)} CG[a, b, k] x[snd(e), a, c] y[e, b] w[e, path(k), c] z[rcv(e), k, c]

with x = node features (sender side, [N, Din, C]), y = edge harmonics ([E, Dsh]),
w = radial weights ([E, P, C]) and z a receiver-side node tensor ([N, Dout, C]):
``message = dL/dz``. The derivative of L with respect to any one of its four slots (the "free"
slot) is a contraction of the other three, and the backward of such a contraction, given the
gradient g of its output, is the set of contractions of the *same form* with g put in the free
slot. So four kernel families close the whole derivative tower:

* free ``z`` -- node kernel, gather senders, scatter receivers (the forward message);
* free ``x`` -- node kernel, gather receivers, scatter senders, transposed CG (grad w.r.t. h);
* free ``y`` -- per-edge kernel reducing over channels and CG entries (grad w.r.t. Y);
* free ``w`` -- per-edge, per-channel kernel (grad w.r.t. W).

:class:`_Contract` is one ``torch.autograd.Function`` whose backward calls itself with another
free slot, so backward, double backward (force training) and any higher order run through
fused Triton kernels only; nothing falls back to torch except index bookkeeping (argsort /
CSR row pointers for the deterministic mode, zero-filling outputs for the atomic mode).

The CG coefficients are unrolled into the generated kernel source as compile-time constants
(only the non-zero entries of :meth:`TensorProductSpec.sparse_entries`), one kernel source per
(spec, free slot, scatter mode, output group), cached in-process.

Scatter modes for the node kernels
----------------------------------
``"deterministic"`` (default): edges are grouped by the scattered-to node with a stable argsort
(CSR segments; the identity permutation when the edges already come sorted by receiver, as the
neighbour list produces them); one program per (node, channel block) loops over its segment and
writes once. Bitwise reproducible, no atomics, any edge order accepted.
``"atomic"``: one program per (edge block, channel block) adds into the output with atomics;
any edge order, no sorting, not bitwise reproducible in float32 on GPU.
The mode is chosen per call (``scatter=``), else by ``MLIP_TRITON_SCATTER``, else
deterministic; ``torch.use_deterministic_algorithms(True)`` forces deterministic.

Interpreter: with ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (used by the tests).
Triton reads that variable when a function is *decorated* with ``triton.jit``. Kernels here
are generated and decorated lazily and cached per interpreter flag, so the variable may be set
after ``import triton`` (e3nn imports Triton, so in a test process it usually is already
imported). Triton's own ``@jit`` helpers (``tl.sum``, ``tl.zeros``, ...) were decorated at
import time, though, and cannot run in the interpreter unless the flag was set before the
import; the generated kernels therefore avoid them (``tl.full`` for zeros, and
``tl.reduce(x, axis, tl.standard._sum_combine)``, which the interpreter recognises by identity
and compiles to the same reduction as ``tl.sum`` on GPU).
"""

import hashlib
import linecache
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from mlip.ops.tensor_product import TensorProductSpec

SLOTS = ("x", "y", "w", "z")
SCATTER_MODES = ("deterministic", "atomic")

# launch configuration; tuned for nothing yet (no GPU measurement exists), see docs/performance.md
CONFIG = {
    "node_block_e": 8,          # edges per step of a deterministic segment loop
    "atomic_block_e": 32,       # edges per program, atomic node kernel
    "edge_block_e": 32,         # edges per program, per-edge kernels
    "block_c": 32,              # channels per program (power of two)
    "max_outputs_per_kernel": 48,  # outputs per generated kernel (register pressure); 0 = no split
    "num_warps": 4,
}
# the interpreter pays per program and per op, not per element: use big blocks, no split
INTERPRET_CONFIG = {"node_block_e": 32, "atomic_block_e": 64, "edge_block_e": 64, "block_c": 64,
                    "max_outputs_per_kernel": 0, "num_warps": 1}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _config() -> Dict[str, int]:
    return INTERPRET_CONFIG if _interpreting() else CONFIG


# ----------------------------------------------------------------------------------------------
# plan: the sparse CG entries of a spec
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """Sparse 4-linear form: entries (a, b, k, p, value) over dims (Din, Dsh, Dout, P)."""

    entries: Tuple[Tuple[int, int, int, int, float], ...]
    dim_x: int
    dim_y: int
    dim_z: int
    num_paths: int

    @property
    def key(self) -> str:
        return hashlib.sha1(repr((self.entries, self.dim_x, self.dim_y, self.dim_z, self.num_paths)).encode()
                            ).hexdigest()[:16]


_PLANS: Dict[tuple, Plan] = {}


def plan_for(spec: TensorProductSpec) -> Plan:
    key = (tuple(spec.irreps_in), tuple(spec.irreps_sh), tuple(spec.irreps_out_allowed))
    plan = _PLANS.get(key)
    if plan is None:
        pk = spec.path_of_output().tolist()
        entries = tuple((i, j, k, pk[k], float(v)) for i, j, k, v in spec.sparse_entries())
        plan = Plan(entries, spec.dim_in, spec.dim_sh, spec.dim_out, spec.num_paths)
        _PLANS[key] = plan
    return plan


def _dims(plan: Plan) -> Dict[str, int]:
    return {"x": plan.dim_x, "y": plan.dim_y, "w": plan.num_paths, "z": plan.dim_z}


def _slot_of_entry(entry, slot: str) -> int:
    a, b, k, p, _ = entry
    return {"x": a, "y": b, "w": p, "z": k}[slot]


# ----------------------------------------------------------------------------------------------
# code generation
# ----------------------------------------------------------------------------------------------

class _Emitter:
    def __init__(self):
        self.lines: List[str] = []
        self.consts: Dict[float, str] = {}

    def __call__(self, line: str, indent: int = 1):
        self.lines.append("    " * indent + line)

    def const(self, v: float) -> str:
        if v not in self.consts:
            self.consts[v] = f"K{len(self.consts)}"
        return self.consts[v]

    def const_lines(self, indent: int = 1) -> List[str]:
        # exact constants in the kernel's dtype (a bare float literal would be float32)
        return ["    " * indent + f"{name} = tl.full([], {v!r}, DT)" for v, name in self.consts.items()]


def _lin(em: _Emitter, terms: Sequence[Tuple[str, float]]) -> str:
    """sum of value * var as source text."""
    parts = []
    for var, v in terms:
        if v == 1.0:
            parts.append(var)
        elif v == -1.0:
            parts.append(f"(-{var})")
        else:
            parts.append(f"{em.const(v)} * {var}")
    return "(" + " + ".join(parts) + ")"


def _group(entries, *slots):
    """nested dict grouping entries by the given slots in order; leaves are lists of entries."""
    out: Dict = {}
    for e in entries:
        d = out
        for s in slots[:-1]:
            d = d.setdefault(_slot_of_entry(e, s), {})
        d.setdefault(_slot_of_entry(e, slots[-1]), []).append(e)
    return out


def _used(entries, slot):
    return sorted({_slot_of_entry(e, slot) for e in entries})


def _node_message_exprs(em: _Emitter, entries, gather_slot: str, out_slot: str, outputs) -> Dict[int, str]:
    """Per-output [BLOCK_E, BLOCK_C] message expressions of a node kernel.

    out[o] = sum_p w_p * sum_g (sum_b v y_b)[:, None] * g_g, with g the gathered node tensor."""
    grouped = _group(entries, out_slot, "w", gather_slot, "y")
    exprs = {}
    for o in outputs:
        by_p = grouped.get(o, {})
        p_terms = []
        for p, by_g in sorted(by_p.items()):
            g_terms = []
            for g, by_b in sorted(by_g.items()):
                coef = _lin(em, [(f"y_{b}", sum(e[4] for e in es)) for b, es in sorted(by_b.items())])
                g_terms.append(f"{coef}[:, None] * g_{g}")
            p_terms.append(f"w_{p} * (" + " + ".join(g_terms) + ")")
        exprs[o] = " + ".join(p_terms) if p_terms else None
    return exprs


def _gen_node(name: str, plan: Plan, free: str, mode: str, outputs: Sequence[int]) -> str:
    """free 'z': gather x at senders, scatter to receivers. free 'x': gather z at receivers,
    scatter to senders (the transposed product)."""
    gather_slot = "x" if free == "z" else "z"
    dims = _dims(plan)
    dg, do, dy, npth = dims[gather_slot], dims[free], plan.dim_y, plan.num_paths
    outset = set(outputs)
    entries = [e for e in plan.entries if _slot_of_entry(e, free) in outset]
    em = _Emitter()
    exprs = _node_message_exprs(em, entries, gather_slot, free, outputs)
    body = _Emitter()
    body.consts = em.consts

    def loads(indent):
        for g in _used(entries, gather_slot):
            body(f"g_{g} = tl.load(G + gi[:, None] * {dg} * C + {g} * C + offs_c[None, :], mask=m2, other=0.0)",
                 indent)
        for b in _used(entries, "y"):
            body(f"y_{b} = tl.load(Y + e * {dy} + {b}, mask=mask_e, other=0.0)", indent)
        for p in _used(entries, "w"):
            body(f"w_{p} = tl.load(W + e[:, None] * {npth} * C + {p} * C + offs_c[None, :], mask=m2, other=0.0)",
                 indent)

    if mode == "deterministic":
        head = (f"def {name}(G, Y, W, GATHER, PERM, ROWPTR, OUT, C: tl.constexpr, DT: tl.constexpr, "
                f"BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr):")
        body("n = tl.program_id(0).to(tl.int64)")
        body("offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)")
        body("mask_c = offs_c < C")
        body("start = tl.load(ROWPTR + n)")
        body("end = tl.load(ROWPTR + n + 1)")
        for o in outputs:
            body(f"acc_{o} = tl.full([BLOCK_C], 0, DT)")
        body("for e0 in range(start, end, BLOCK_E):")
        body("idx = e0 + tl.arange(0, BLOCK_E)", 2)
        body("mask_e = idx < end", 2)
        body("e = tl.load(PERM + idx, mask=mask_e, other=0)", 2)
        body("gi = tl.load(GATHER + e, mask=mask_e, other=0)", 2)
        body("m2 = mask_e[:, None] & mask_c[None, :]", 2)
        loads(2)
        for o in outputs:
            if exprs[o] is not None:
                body(f"acc_{o} += tl.reduce({exprs[o]}, 0, _SUM)", 2)
        for o in outputs:
            body(f"tl.store(OUT + n * {do} * C + {o} * C + offs_c, acc_{o}, mask=mask_c)")
    else:
        head = (f"def {name}(G, Y, W, GATHER, SCATTER, OUT, E, C: tl.constexpr, DT: tl.constexpr, "
                f"BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr):")
        body("e = (tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)).to(tl.int64)")
        body("mask_e = e < E")
        body("offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)")
        body("mask_c = offs_c < C")
        body("m2 = mask_e[:, None] & mask_c[None, :]")
        body("gi = tl.load(GATHER + e, mask=mask_e, other=0)")
        body("si = tl.load(SCATTER + e, mask=mask_e, other=0)")
        loads(1)
        for o in outputs:
            if exprs[o] is not None:
                body(f"tl.atomic_add(OUT + si[:, None] * {do} * C + {o} * C + offs_c[None, :], {exprs[o]}, "
                     f"mask=m2, sem='relaxed')")
    return "\n".join(["@triton.jit", head] + body.const_lines() + body.lines) + "\n"


def _gen_edge_y(name: str, plan: Plan, outputs: Sequence[int]) -> str:
    """free 'y': out[e, b] = sum_c sum CG x[snd, a, c] w[e, p, c] z[rcv, k, c]."""
    outset = set(outputs)
    entries = [e for e in plan.entries if e[1] in outset]
    body = _Emitter()
    grouped = _group(entries, "y", "w", "z", "x")
    dx, dz, dy, npth = plan.dim_x, plan.dim_z, plan.dim_y, plan.num_paths
    head = (f"def {name}(X, Z, W, SEND, RECV, OUT, E, C: tl.constexpr, DT: tl.constexpr, "
            f"BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr):")
    body("e = (tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)).to(tl.int64)")
    body("mask_e = e < E")
    body("si = tl.load(SEND + e, mask=mask_e, other=0)")
    body("ri = tl.load(RECV + e, mask=mask_e, other=0)")
    for b in outputs:
        body(f"acc_{b} = tl.full([BLOCK_E, BLOCK_C], 0, DT)")
    body("for c0 in range(0, C, BLOCK_C):")
    body("offs_c = c0 + tl.arange(0, BLOCK_C)", 2)
    body("m2 = mask_e[:, None] & (offs_c < C)[None, :]", 2)
    for a in _used(entries, "x"):
        body(f"x_{a} = tl.load(X + si[:, None] * {dx} * C + {a} * C + offs_c[None, :], mask=m2, other=0.0)", 2)
    for k in _used(entries, "z"):
        body(f"z_{k} = tl.load(Z + ri[:, None] * {dz} * C + {k} * C + offs_c[None, :], mask=m2, other=0.0)", 2)
    for p in _used(entries, "w"):
        body(f"w_{p} = tl.load(W + e[:, None] * {npth} * C + {p} * C + offs_c[None, :], mask=m2, other=0.0)", 2)
    pk_pairs = sorted({(e[3], e[2]) for e in entries})
    for p, k in pk_pairs:
        body(f"wz_{p}_{k} = w_{p} * z_{k}", 2)
    for b in outputs:
        terms = []
        for p, by_k in sorted(grouped.get(b, {}).items()):
            for k, by_a in sorted(by_k.items()):
                lin = _lin(body, [(f"x_{a}", sum(e[4] for e in es)) for a, es in sorted(by_a.items())])
                terms.append(f"{lin} * wz_{p}_{k}")
        if terms:
            body(f"acc_{b} += " + " + ".join(terms), 2)
    for b in outputs:
        body(f"tl.store(OUT + e * {dy} + {b}, tl.reduce(acc_{b}, 1, _SUM), mask=mask_e)")
    return "\n".join(["@triton.jit", head] + body.const_lines() + body.lines) + "\n"


def _gen_edge_w(name: str, plan: Plan, outputs: Sequence[int]) -> str:
    """free 'w': out[e, p, c] = sum over entries of path p of CG x[snd, a, c] y[e, b] z[rcv, k, c]."""
    outset = set(outputs)
    entries = [e for e in plan.entries if e[3] in outset]
    body = _Emitter()
    grouped = _group(entries, "w", "z", "x", "y")
    dx, dz, dy, npth = plan.dim_x, plan.dim_z, plan.dim_y, plan.num_paths
    head = (f"def {name}(X, Z, Y, SEND, RECV, OUT, E, C: tl.constexpr, DT: tl.constexpr, "
            f"BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr):")
    body("e = (tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)).to(tl.int64)")
    body("mask_e = e < E")
    body("offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)")
    body("m2 = mask_e[:, None] & (offs_c < C)[None, :]")
    body("si = tl.load(SEND + e, mask=mask_e, other=0)")
    body("ri = tl.load(RECV + e, mask=mask_e, other=0)")
    for a in _used(entries, "x"):
        body(f"x_{a} = tl.load(X + si[:, None] * {dx} * C + {a} * C + offs_c[None, :], mask=m2, other=0.0)")
    for k in _used(entries, "z"):
        body(f"z_{k} = tl.load(Z + ri[:, None] * {dz} * C + {k} * C + offs_c[None, :], mask=m2, other=0.0)")
    for b in _used(entries, "y"):
        body(f"y_{b} = tl.load(Y + e * {dy} + {b}, mask=mask_e, other=0.0)")
    for p in outputs:
        terms = []
        for k, by_a in sorted(grouped.get(p, {}).items()):
            a_terms = []
            for a, by_b in sorted(by_a.items()):
                coef = _lin(body, [(f"y_{b}", sum(e[4] for e in es)) for b, es in sorted(by_b.items())])
                a_terms.append(f"{coef}[:, None] * x_{a}")
            terms.append(f"z_{k} * (" + " + ".join(a_terms) + ")")
        value = " + ".join(terms) if terms else "tl.full([BLOCK_E, BLOCK_C], 0, DT)"
        body(f"tl.store(OUT + e[:, None] * {npth} * C + {p} * C + offs_c[None, :], {value}, mask=m2)")
    return "\n".join(["@triton.jit", head] + body.const_lines() + body.lines) + "\n"


_KERNELS: Dict[tuple, object] = {}


def _compile(name: str, src: str):
    """Turn generated source into a triton.jit function; the source is registered with linecache
    so that Triton (and tracebacks) can read it back with inspect."""
    fname = f"<mlip-triton-{name}>"
    linecache.cache[fname] = (len(src), None, src.splitlines(True), fname)
    namespace = {"triton": triton, "tl": tl, "_SUM": tl.standard._sum_combine}
    exec(compile(src, fname, "exec"), namespace)  # noqa: S102 -- our own generated source
    return namespace[name]


def _output_groups(n: int, limit: int) -> List[List[int]]:
    if limit <= 0 or n <= limit:
        return [list(range(n))]
    count = -(-n // limit)
    size = -(-n // count)
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


def get_kernels(plan: Plan, free: str, mode: str = "deterministic"):
    """The generated kernels (one per output group) for a free slot; cached."""
    limit = _config()["max_outputs_per_kernel"]
    key = (plan.key, free, mode if free in ("x", "z") else "", limit, _interpreting())
    kernels = _KERNELS.get(key)
    if kernels is None:
        kernels = []
        for gi, outputs in enumerate(_output_groups(_dims(plan)[free], limit)):
            name = f"mlip_{free}_{mode[:3] if free in 'xz' else 'edge'}_{plan.key}_{gi}"
            if free in ("x", "z"):
                src = _gen_node(name, plan, free, mode, outputs)
            elif free == "y":
                src = _gen_edge_y(name, plan, outputs)
            else:
                src = _gen_edge_w(name, plan, outputs)
            kernels.append(_compile(name, src))
        _KERNELS[key] = kernels
    return kernels


def kernel_source(spec: TensorProductSpec, free: str = "z", mode: str = "deterministic") -> str:
    """Generated source of the first kernel for a slot (for inspection and debugging)."""
    plan = plan_for(spec)
    limit = _config()["max_outputs_per_kernel"]
    outputs = _output_groups(_dims(plan)[free], limit)[0]
    if free in ("x", "z"):
        return _gen_node("kernel", plan, free, mode, outputs)
    return _gen_edge_y("kernel", plan, outputs) if free == "y" else _gen_edge_w("kernel", plan, outputs)


# ----------------------------------------------------------------------------------------------
# graph bookkeeping and launches
# ----------------------------------------------------------------------------------------------

class EdgeGraph:
    """Edge endpoints plus lazily built CSR segments (stable argsort) for each scatter side."""

    def __init__(self, edge_index: torch.Tensor, num_nodes: int, mode: str):
        if mode not in SCATTER_MODES:
            raise ValueError(f"scatter mode must be one of {SCATTER_MODES}, got '{mode}'")
        self.receiver = edge_index[0].contiguous().long()
        self.sender = edge_index[1].contiguous().long()
        self.num_nodes = int(num_nodes)
        self.num_edges = int(self.receiver.shape[0])
        self.mode = mode
        self._csr: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}

    def index(self, side: str) -> torch.Tensor:
        return self.receiver if side == "receiver" else self.sender

    def csr(self, side: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """(perm, rowptr): edges perm[rowptr[n]:rowptr[n+1]] scatter to node n."""
        if side not in self._csr:
            idx = self.index(side)
            perm = torch.argsort(idx, stable=True)
            nodes = torch.arange(self.num_nodes + 1, device=idx.device, dtype=idx.dtype)
            rowptr = torch.searchsorted(idx.index_select(0, perm), nodes)
            self._csr[side] = (perm, rowptr)
        return self._csr[side]


def _launch(free: str, plan: Plan, graph: EdgeGraph, vals: Dict[str, torch.Tensor]) -> torch.Tensor:
    cfg = _config()
    ref = next(iter(vals.values()))
    dtype, device = ref.dtype, ref.device
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"fused message supports float32 and float64, got {dtype}")
    vals = {k: v.contiguous() for k, v in vals.items()}
    n, e_count = graph.num_nodes, graph.num_edges
    channels = vals["w"].shape[2] if "w" in vals else vals["x"].shape[2]
    dims = _dims(plan)
    dt = tl.float64 if dtype == torch.float64 else tl.float32
    block_c = min(cfg["block_c"], triton.next_power_of_2(max(channels, 1)))
    c_blocks = triton.cdiv(channels, block_c)
    kernels = get_kernels(plan, free, graph.mode)
    nw = cfg["num_warps"]

    if free in ("x", "z"):
        gather_slot, gather_side, scatter_side = ("x", "sender", "receiver") if free == "z" else \
            ("z", "receiver", "sender")
        shape = (n, dims[free], channels)
        if e_count == 0 or n == 0:
            return torch.zeros(shape, dtype=dtype, device=device)
        g, y, w = vals[gather_slot], vals["y"], vals["w"]
        if graph.mode == "deterministic":
            out = torch.empty(shape, dtype=dtype, device=device)
            perm, rowptr = graph.csr(scatter_side)
            for kern in kernels:
                kern[(n, c_blocks)](g, y, w, graph.index(gather_side), perm, rowptr, out, C=channels, DT=dt,
                                    BLOCK_E=cfg["node_block_e"], BLOCK_C=block_c, num_warps=nw)
        else:
            out = torch.zeros(shape, dtype=dtype, device=device)
            be = cfg["atomic_block_e"]
            for kern in kernels:
                kern[(triton.cdiv(e_count, be), c_blocks)](g, y, w, graph.index(gather_side), graph.index(scatter_side),
                                                          out, e_count, C=channels, DT=dt, BLOCK_E=be,
                                                          BLOCK_C=block_c, num_warps=nw)
        return out

    be = cfg["edge_block_e"]
    if free == "y":
        out = torch.empty((e_count, dims["y"]), dtype=dtype, device=device)
        if e_count == 0:
            return out
        for kern in kernels:
            kern[(triton.cdiv(e_count, be),)](vals["x"], vals["z"], vals["w"], graph.sender, graph.receiver, out,
                                              e_count, C=channels, DT=dt, BLOCK_E=be, BLOCK_C=block_c, num_warps=nw)
        return out
    out = torch.empty((e_count, dims["w"], channels), dtype=dtype, device=device)
    if e_count == 0:
        return out
    for kern in kernels:
        kern[(triton.cdiv(e_count, be), c_blocks)](vals["x"], vals["z"], vals["y"], graph.sender, graph.receiver, out,
                                                  e_count, C=channels, DT=dt, BLOCK_E=be, BLOCK_C=block_c,
                                                  num_warps=nw)
    return out


def _others(free: str) -> Tuple[str, str, str]:
    return tuple(s for s in SLOTS if s != free)  # type: ignore[return-value]


class _Contract(torch.autograd.Function):
    """dL/d(free) of the 4-linear form; its backward is three more contractions of the same form."""

    @staticmethod
    def forward(ctx, free: str, plan: Plan, graph: EdgeGraph, t0, t1, t2):
        ctx.free, ctx.plan, ctx.graph = free, plan, graph
        ctx.save_for_backward(t0, t1, t2)
        return _launch(free, plan, graph, dict(zip(_others(free), (t0, t1, t2))))

    @staticmethod
    def backward(ctx, grad):
        names = _others(ctx.free)
        vals = dict(zip(names, ctx.saved_tensors))
        vals[ctx.free] = grad
        grads = []
        for i, slot in enumerate(names):
            grads.append(contract(slot, ctx.plan, ctx.graph, vals) if ctx.needs_input_grad[3 + i] else None)
        return (None, None, None, *grads)


def contract(free: str, plan: Plan, graph: EdgeGraph, vals: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Differentiable fused dL/d(free) given the three other slots in ``vals``."""
    return _Contract.apply(free, plan, graph, *(vals[s] for s in _others(free)))


def default_scatter_mode() -> str:
    if torch.are_deterministic_algorithms_enabled():
        return "deterministic"
    mode = os.environ.get("MLIP_TRITON_SCATTER", "deterministic")
    if mode not in SCATTER_MODES:
        raise ValueError(f"MLIP_TRITON_SCATTER must be one of {SCATTER_MODES}, got '{mode}'")
    return mode


def fused_message(node_feats: torch.Tensor, edge_sh: torch.Tensor, edge_weights: torch.Tensor,
                  edge_index: torch.Tensor, spec: TensorProductSpec, num_nodes: int,
                  scatter: Optional[str] = None) -> torch.Tensor:
    """Fused equivalent of :func:`mlip.ops.message.message_reference` (same arguments, with the
    spec instead of the dense CG tensor). Differentiable to any order w.r.t. the three inputs.

    ``scatter``: "deterministic" or "atomic" (default: see :func:`default_scatter_mode`).
    """
    plan = plan_for(spec)
    mode = scatter or default_scatter_mode()
    if torch.are_deterministic_algorithms_enabled():
        mode = "deterministic"
    n_e = edge_index.shape[1]
    if node_feats.dim() != 3 or node_feats.shape[1] != plan.dim_x:
        raise ValueError(f"node_feats must be [N, {plan.dim_x}, C], got {tuple(node_feats.shape)}")
    channels = node_feats.shape[2]
    if tuple(edge_sh.shape) != (n_e, plan.dim_y):
        raise ValueError(f"edge_sh must be [{n_e}, {plan.dim_y}], got {tuple(edge_sh.shape)}")
    if tuple(edge_weights.shape) != (n_e, plan.num_paths, channels):
        raise ValueError(f"edge_weights must be [{n_e}, {plan.num_paths}, {channels}], "
                         f"got {tuple(edge_weights.shape)}")
    dtype = torch.promote_types(torch.promote_types(node_feats.dtype, edge_sh.dtype), edge_weights.dtype)
    graph = EdgeGraph(edge_index, num_nodes, mode)
    vals = {"x": node_feats.to(dtype), "y": edge_sh.to(dtype), "w": edge_weights.to(dtype)}
    return contract("z", plan, graph, vals)


__all__ = ["fused_message", "contract", "plan_for", "EdgeGraph", "Plan", "kernel_source", "CONFIG",
           "INTERPRET_CONFIG", "SCATTER_MODES", "default_scatter_mode"]
