"""Triton-fused message step: gather + channel-wise tensor product + radial weights + scatter.

    out[i, k, c] = sum over edges e = (i, j) of  W[e, path(k), c] * sum_{a, b} CG[a, b, k] h[j, a, c] Y[e, b]

Per-edge messages are never written to memory: every program keeps its partial sums in
registers and writes (or atomically adds) only node-sized results.

How backward and double backward stay fused
-------------------------------------------
The message step is the derivative of one 4-linear form over the graph (see
:mod:`mlip.ops.fourlinear`); every derivative of it is a contraction of the same form with
another free slot, so four kernel families (free x, y, w, z) generated here close the whole
derivative tower, wired by :class:`mlip.ops.fourlinear.Contract`. Nothing falls back to torch
except index bookkeeping (argsort / CSR row pointers for the deterministic mode, zero-filling
outputs for the atomic mode).

The CG coefficients are unrolled into the generated kernel source as compile-time constants
(only the non-zero entries of :meth:`TensorProductSpec.sparse_entries`), one kernel source per
(spec, free slot, scatter mode, output group), cached in-process. Code is emitted path by path,
loading each operand tile just before its first use, which bounds register pressure; large
output sets are split over several kernels. ``python -m mlip.ops.triton_compile_check``
compiles all of them for sm_90 without a GPU and reports registers and spills.

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
are generated lazily and wrapped as interpreted or compiled functions according to the flag at
that moment (cached per flag), so the variable may be set after ``import triton`` (e3nn imports Triton, so in a test process it usually is already
imported). Triton's own ``@jit`` helpers (``tl.sum``, ``tl.zeros``, ...) were decorated at
import time, though, and cannot run in the interpreter unless the flag was set before the
import; the generated kernels therefore avoid them (``tl.full`` for zeros, and
``tl.reduce(x, axis, tl.standard._sum_combine)``, which the interpreter recognises by identity
and compiles to the same reduction as ``tl.sum`` on GPU).
"""

import linecache
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from mlip.ops.fourlinear import SLOTS, Plan, check_message_inputs, plan_for
from mlip.ops.fourlinear import contract as _contract
from mlip.ops.tensor_product import TensorProductSpec

SCATTER_MODES = ("deterministic", "atomic")

# Launch configuration. Not tuned on hardware (no GPU measurement exists, see docs/performance.md);
# chosen so that the generated kernels of the M model (128 channels, l_max 2, O(3)) compile for
# sm_90 without register spills in float32 (checked offline with Triton's bundled ptxas, see
# mlip/ops/triton_compile_check.py). Tiles hold BLOCK_E x BLOCK_C elements; float64 halves BLOCK_E.
CONFIG = {
    "node_block_e": 8,          # edges per step of a deterministic segment loop
    "atomic_block_e": 16,       # edges per program, atomic node kernels
    "edge_block_e": 16,         # edges per program, per-edge kernel of the grad w.r.t. W
    "edge_y_block_e": 8,        # edges per program, per-edge kernel of the grad w.r.t. Y (loops over C)
    "block_c": 32,              # channels per program / per step (power of two)
    "num_warps": 4,
    "num_stages": 1,            # no software pipelining of the loops: it multiplies live tiles
    # outputs per generated kernel, per free slot (register pressure); 0 = no split
    "max_outputs": {"z": 48, "x": 4, "y": 16, "w": 16},  # x: 4 keeps sm_90 M-size free of spills
}
# the interpreter pays per program and per op, not per element: use big blocks, no split
INTERPRET_CONFIG = {"node_block_e": 32, "atomic_block_e": 64, "edge_block_e": 64, "edge_y_block_e": 64,
                    "block_c": 64, "num_warps": 1, "num_stages": 1, "max_outputs": {"z": 0, "x": 0, "y": 0, "w": 0}}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _config() -> Dict:
    return INTERPRET_CONFIG if _interpreting() else CONFIG


def _slot_of_entry(entry, slot: str) -> int:
    a, b, k, p, _ = entry
    return {"x": a, "y": b, "w": p, "z": k}[slot]


def output_groups(plan: Plan, free: str, limit: int) -> List[List[int]]:
    """Outputs of the free slot packed into groups of at most ``limit`` (0: one group), never
    splitting an irrep (or a path's output block); one generated kernel per group."""
    groups: List[List[int]] = [[]]
    for start, stop in plan.units(free):
        if limit > 0 and groups[-1] and len(groups[-1]) + stop - start > limit:
            groups.append([])
        groups[-1].extend(range(start, stop))
    return groups


# ----------------------------------------------------------------------------------------------
# code generation
# ----------------------------------------------------------------------------------------------
#
# Every kernel walks the paths in order ("path-major") and loads an operand tile right before its
# first use. Per-path operands (w_p, and the z block of path p) are then live only while that path
# is processed; only the x components and the harmonics are shared between paths. This bounds the
# registers a kernel needs by (Din + a few paths) tiles instead of (Din + Dout + P).

class _Emitter:
    def __init__(self):
        self.lines: List[str] = []
        self.consts: Dict[float, str] = {}
        self.loaded: set = set()

    def __call__(self, line: str, indent: int = 1):
        self.lines.append("    " * indent + line)

    def const(self, v: float) -> str:
        if v not in self.consts:
            self.consts[v] = f"K{len(self.consts)}"
        return self.consts[v]

    def need(self, var: str, load: str, indent: int):
        """Emit ``var = load`` the first time ``var`` is used."""
        if var not in self.loaded:
            self.loaded.add(var)
            self(f"{var} = {load}", indent)

    def source(self, head: str) -> str:
        # exact constants in the kernel's dtype (a bare float literal would be float32)
        consts = [f"    {name} = tl.full([], {v!r}, DT)" for v, name in self.consts.items()]
        return "\n".join([head] + consts + self.lines) + "\n"


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


def _merged(entries_by_var: Dict[int, list]) -> List[Tuple[int, float]]:
    return [(i, sum(e[4] for e in es)) for i, es in sorted(entries_by_var.items())]


# tile loads; `row` is the gathered node index / edge index vector of the current edge block
def _node_tile(ptr: str, row: str, dim: int, comp: int, mask: str = "m2") -> str:
    return f"tl.load({ptr} + {row}[:, None] * ({dim} * C) + {comp} * C + offs_c[None, :], mask={mask}, other=0.0)"


def _y_load(dim_y: int, b: int) -> str:
    return f"tl.load(Y + e * {dim_y} + {b}, mask=mask_e, other=0.0)"


def _gen_node(name: str, plan: Plan, free: str, mode: str, outputs: Sequence[int]) -> str:
    """free 'z': gather x at senders, scatter to receivers (the message). free 'x': gather z at
    receivers, scatter to senders (the transposed product, i.e. the gradient w.r.t. h)."""
    gather = "x" if free == "z" else "z"
    dims = plan.dims()
    dg, do = dims[gather], dims[free]
    outset = set(outputs)
    entries = [e for e in plan.entries if _slot_of_entry(e, free) in outset]
    by_path = _group(entries, "w", free, gather, "y")
    em = _Emitter()
    det = mode == "deterministic"
    ind = 2 if det else 1
    if det:
        head = (f"def {name}(G, Y, W, GATHER, PERM, ROWPTR, OUT, C: tl.constexpr, DT: tl.constexpr, "
                f"BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr):")
        em("n = tl.program_id(0).to(tl.int64)")
        em("offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)")
        em("mask_c = offs_c < C")
        em("start = tl.load(ROWPTR + n)")
        em("end = tl.load(ROWPTR + n + 1)")
        for o in outputs:
            em(f"acc_{o} = tl.full([BLOCK_C], 0, DT)")
        em("for e0 in range(start, end, BLOCK_E):")
        em("idx = e0 + tl.arange(0, BLOCK_E)", 2)
        em("mask_e = idx < end", 2)
        em("e = tl.load(PERM + idx, mask=mask_e, other=0)", 2)
        em("gi = tl.load(GATHER + e, mask=mask_e, other=0)", 2)
        em("m2 = mask_e[:, None] & mask_c[None, :]", 2)
    else:
        head = (f"def {name}(G, Y, W, GATHER, SCATTER, OUT, E, C: tl.constexpr, DT: tl.constexpr, "
                f"BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr):")
        em("e = (tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)).to(tl.int64)")
        em("mask_e = e < E")
        em("offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)")
        em("mask_c = offs_c < C")
        em("m2 = mask_e[:, None] & mask_c[None, :]")
        em("gi = tl.load(GATHER + e, mask=mask_e, other=0)")
        em("si = tl.load(SCATTER + e, mask=mask_e, other=0)")
    started = set()
    last_path = {}
    for p, by_out in by_path.items():
        for o in by_out:
            last_path[o] = max(p, last_path.get(o, -1))

    def finish(o):  # reduce (deterministic) or scatter (atomic) output o once it is complete
        if det:
            em(f"acc_{o} += tl.reduce(t_{o}, 0, _SUM)", 2)
        else:
            em(f"tl.atomic_add(OUT + si[:, None] * ({do} * C) + {o} * C + offs_c[None, :], t_{o}, mask=m2, "
               f"sem='relaxed')")

    for p, by_out in sorted(by_path.items()):
        em.need(f"w_{p}", _node_tile("W", "e", plan.num_paths, p), ind)
        for o, by_g in sorted(by_out.items()):
            terms = []
            for g, by_b in sorted(by_g.items()):
                for b, _ in _merged(by_b):
                    em.need(f"y_{b}", _y_load(plan.dim_y, b), ind)
                em.need(f"g_{g}", _node_tile("G", "gi", dg, g), ind)
                coef = _lin(em, [(f"y_{b}", v) for b, v in _merged(by_b)])
                terms.append(f"{coef}[:, None] * g_{g}")
            value = f"w_{p} * (" + " + ".join(terms) + ")"
            em(f"t_{o} {'+=' if o in started else '='} {value}", ind)
            started.add(o)
        for o in sorted(by_out):
            if last_path[o] == p:
                finish(o)
    if det:
        for o in outputs:
            em(f"tl.store(OUT + n * ({do} * C) + {o} * C + offs_c, acc_{o}, mask=mask_c)")
    return em.source(head)


def _gen_edge_y(name: str, plan: Plan, outputs: Sequence[int]) -> str:
    """free 'y': out[e, b] = sum_c sum CG x[snd, a, c] w[e, p, c] z[rcv, k, c]."""
    outset = set(outputs)
    entries = [e for e in plan.entries if e[1] in outset]
    by_path = _group(entries, "w", "z", "y", "x")
    em = _Emitter()
    head = (f"def {name}(X, Z, W, SEND, RECV, OUT, E, C: tl.constexpr, DT: tl.constexpr, "
            f"BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr):")
    em("e = (tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)).to(tl.int64)")
    em("mask_e = e < E")
    em("si = tl.load(SEND + e, mask=mask_e, other=0)")
    em("ri = tl.load(RECV + e, mask=mask_e, other=0)")
    for b in outputs:
        em(f"acc_{b} = tl.full([BLOCK_E, BLOCK_C], 0, DT)")
    em("for c0 in range(0, C, BLOCK_C):")
    em("offs_c = c0 + tl.arange(0, BLOCK_C)", 2)
    em("m2 = mask_e[:, None] & (offs_c < C)[None, :]", 2)
    for p, by_k in sorted(by_path.items()):
        em.need(f"w_{p}", _node_tile("W", "e", plan.num_paths, p), 2)
        for k, by_b in sorted(by_k.items()):
            em.need(f"z_{k}", _node_tile("Z", "ri", plan.dim_z, k), 2)
            em(f"wz = w_{p} * z_{k}", 2)
            for b, by_a in sorted(by_b.items()):
                for a, _ in _merged(by_a):
                    em.need(f"x_{a}", _node_tile("X", "si", plan.dim_x, a), 2)
                em(f"acc_{b} += {_lin(em, [(f'x_{a}', v) for a, v in _merged(by_a)])} * wz", 2)
    for b in outputs:
        em(f"tl.store(OUT + e * {plan.dim_y} + {b}, tl.reduce(acc_{b}, 1, _SUM), mask=mask_e)")
    return em.source(head)


def _gen_edge_w(name: str, plan: Plan, outputs: Sequence[int]) -> str:
    """free 'w': out[e, p, c] = sum over entries of path p of CG x[snd, a, c] y[e, b] z[rcv, k, c]."""
    outset = set(outputs)
    entries = [e for e in plan.entries if e[3] in outset]
    by_path = _group(entries, "w", "z", "x", "y")
    em = _Emitter()
    head = (f"def {name}(X, Z, Y, SEND, RECV, OUT, E, C: tl.constexpr, DT: tl.constexpr, "
            f"BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr):")
    em("e = (tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)).to(tl.int64)")
    em("mask_e = e < E")
    em("offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)")
    em("m2 = mask_e[:, None] & (offs_c < C)[None, :]")
    em("si = tl.load(SEND + e, mask=mask_e, other=0)")
    em("ri = tl.load(RECV + e, mask=mask_e, other=0)")
    for p in outputs:
        terms = []
        for k, by_a in sorted(by_path.get(p, {}).items()):
            em.need(f"z_{k}", _node_tile("Z", "ri", plan.dim_z, k), 1)
            a_terms = []
            for a, by_b in sorted(by_a.items()):
                for b, _ in _merged(by_b):
                    em.need(f"y_{b}", _y_load(plan.dim_y, b), 1)
                em.need(f"x_{a}", _node_tile("X", "si", plan.dim_x, a), 1)
                a_terms.append(f"{_lin(em, [(f'y_{b}', v) for b, v in _merged(by_b)])}[:, None] * x_{a}")
            terms.append(f"z_{k} * (" + " + ".join(a_terms) + ")")
        value = " + ".join(terms) if terms else "tl.full([BLOCK_E, BLOCK_C], 0, DT)"
        em(f"tl.store(OUT + e[:, None] * ({plan.num_paths} * C) + {p} * C + offs_c[None, :], {value}, mask=m2)")
    return em.source(head)


_KERNELS: Dict[tuple, object] = {}


def _compile(name: str, src: str, interpret: Optional[bool] = None):
    """Turn generated source into a Triton kernel: an interpreted function when ``interpret``
    (default: ``TRITON_INTERPRET=1`` now), else a ``JITFunction``. The source is registered with
    linecache so that Triton (and tracebacks) can read it back with inspect."""
    fname = f"<mlip-triton-{name}>"
    linecache.cache[fname] = (len(src), None, src.splitlines(True), fname)
    namespace = {"__name__": "mlip.ops.triton_generated", "triton": triton, "tl": tl,
                 "_SUM": tl.standard._sum_combine}
    exec(compile(src, fname, "exec"), namespace)  # noqa: S102 -- our own generated source
    fn = namespace[name]
    if interpret if interpret is not None else _interpreting():
        from triton.runtime.interpreter import InterpretedFunction
        return InterpretedFunction(fn)
    from triton.runtime.jit import JITFunction
    return JITFunction(fn)


def _generate(name: str, plan: Plan, free: str, mode: str, outputs: Sequence[int]) -> str:
    if free in ("x", "z"):
        return _gen_node(name, plan, free, mode, outputs)
    return _gen_edge_y(name, plan, outputs) if free == "y" else _gen_edge_w(name, plan, outputs)


def get_kernels(plan: Plan, free: str, mode: str = "deterministic"):
    """The generated kernels (one per output group) for a free slot; cached."""
    limit = _config()["max_outputs"][free]
    mode = mode if free in ("x", "z") else "edge"
    key = (plan.key, free, mode, limit, _interpreting())
    kernels = _KERNELS.get(key)
    if kernels is None:
        kernels = []
        for gi, outputs in enumerate(output_groups(plan, free, limit)):
            name = f"mlip_{free}_{mode[:3]}_{plan.key}_{gi}"
            kernels.append(_compile(name, _generate(name, plan, free, mode, outputs)))
        _KERNELS[key] = kernels
    return kernels


def kernel_source(spec: TensorProductSpec, free: str = "z", mode: str = "deterministic", group: int = 0) -> str:
    """Generated source of one kernel (for inspection and debugging)."""
    plan = plan_for(spec)
    outputs = output_groups(plan, free, _config()["max_outputs"][free])[group]
    return "@triton.jit\n" + _generate("kernel", plan, free, mode, outputs)


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


def launch_params(free: str, mode: str, dtype: torch.dtype, channels: int, cfg: Optional[Dict] = None,
                  interpret: Optional[bool] = None) -> Dict[str, int]:
    """BLOCK_E, BLOCK_C, num_warps, num_stages of the kernels of one free slot."""
    cfg = cfg or _config()
    interpret = _interpreting() if interpret is None else interpret
    if free in ("x", "z"):
        key = "node_block_e" if mode == "deterministic" else "atomic_block_e"
    else:
        key = "edge_y_block_e" if free == "y" else "edge_block_e"
    shrink = 2 if dtype == torch.float64 and not interpret else 1   # float64 tiles take twice the registers
    return {"BLOCK_E": max(1, cfg[key] // shrink),
            "BLOCK_C": min(cfg["block_c"], triton.next_power_of_2(max(channels, 1))),
            "num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}


def _launch(free: str, plan: Plan, graph: EdgeGraph, vals: Dict[str, torch.Tensor]) -> torch.Tensor:
    ref = next(iter(vals.values()))
    dtype, device = ref.dtype, ref.device
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"fused message supports float32 and float64, got {dtype}")
    vals = {k: v.contiguous() for k, v in vals.items()}
    n, e_count = graph.num_nodes, graph.num_edges
    channels = vals["w"].shape[2] if "w" in vals else vals["x"].shape[2]
    dims = plan.dims()
    lp = launch_params(free, graph.mode, dtype, channels)
    block_e = lp["BLOCK_E"]
    c_blocks = triton.cdiv(channels, lp["BLOCK_C"])
    common = dict(C=channels, DT=tl.float64 if dtype == torch.float64 else tl.float32, **lp)
    kernels = get_kernels(plan, free, graph.mode)

    if free in ("x", "z"):  # node kernels: gather one side, scatter to the other
        gather_side, scatter_side = ("sender", "receiver") if free == "z" else ("receiver", "sender")
        g, y, w = vals["x" if free == "z" else "z"], vals["y"], vals["w"]
        shape = (n, dims[free], channels)
        if e_count == 0 or n == 0:
            return torch.zeros(shape, dtype=dtype, device=device)
        if graph.mode == "deterministic":
            out = torch.empty(shape, dtype=dtype, device=device)  # every row is written once
            perm, rowptr = graph.csr(scatter_side)
            for kern in kernels:
                kern[(n, c_blocks)](g, y, w, graph.index(gather_side), perm, rowptr, out, **common)
        else:
            out = torch.zeros(shape, dtype=dtype, device=device)
            for kern in kernels:
                kern[(triton.cdiv(e_count, block_e), c_blocks)](g, y, w, graph.index(gather_side),
                                                                graph.index(scatter_side), out, e_count, **common)
        return out

    if free == "y":  # per edge, reduced over channels inside the program
        out = torch.empty((e_count, dims["y"]), dtype=dtype, device=device)
        for kern in kernels if e_count else []:
            kern[(triton.cdiv(e_count, block_e),)](vals["x"], vals["z"], vals["w"], graph.sender, graph.receiver,
                                                   out, e_count, **common)
        return out

    out = torch.empty((e_count, dims["w"], channels), dtype=dtype, device=device)  # per edge and channel
    for kern in kernels if e_count else []:
        kern[(triton.cdiv(e_count, block_e), c_blocks)](vals["x"], vals["z"], vals["y"], graph.sender,
                                                        graph.receiver, out, e_count, **common)
    return out


def contract(free: str, plan: Plan, graph: EdgeGraph, vals: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Differentiable fused dL/d(free) given the three other slots in ``vals`` (Triton kernels)."""
    return _contract(_launch, free, plan, graph, vals)


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
    dtype = check_message_inputs(plan, node_feats, edge_sh, edge_weights, edge_index)
    graph = EdgeGraph(edge_index, num_nodes, mode)
    vals = {"x": node_feats.to(dtype), "y": edge_sh.to(dtype), "w": edge_weights.to(dtype)}
    return contract("z", plan, graph, vals)


__all__ = ["fused_message", "contract", "plan_for", "EdgeGraph", "Plan", "kernel_source", "CONFIG",
           "INTERPRET_CONFIG", "SCATTER_MODES", "default_scatter_mode"]
