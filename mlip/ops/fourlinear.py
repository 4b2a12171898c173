"""The message step as the derivative of one 4-linear form, shared by the fused kernels.

    L(x, y, w, z) = sum_e sum_c sum_{(a, b, k)} CG[a, b, k] x[snd(e), a, c] y[e, b] w[e, path(k), c] z[rcv(e), k, c]

with x = node features (sender side, [N, Din, C]), y = edge harmonics ([E, Dsh]),
w = radial weights ([E, P, C]) and z a receiver-side node tensor ([N, Dout, C]):
``message = dL/dz``. The derivative of L with respect to any one of its four slots (the "free"
slot) is a contraction of the other three, and the backward of such a contraction, given the
gradient g of its output, is the set of contractions of the *same form* with g put in the free
slot. So four kernels close the whole derivative tower:

* free ``z``: gather senders, scatter receivers (the forward message);
* free ``x``: gather receivers, scatter senders, transposed CG (grad w.r.t. h);
* free ``y``: per edge, reduced over channels and CG entries (grad w.r.t. Y);
* free ``w``: per edge and channel (grad w.r.t. W).

:class:`Contract` is one ``torch.autograd.Function`` whose backward calls itself with another
free slot, so backward, double backward (force training) and any higher order run through the
fused kernels only. A backend supplies ``launch(free, plan, graph, vals) -> Tensor``: the Triton
kernels on GPU (:mod:`mlip.ops.triton_message`), the C++ kernels on CPU
(:mod:`mlip.ops.cpu_message`). A backend whose ``launch`` also has ``grads(plan, graph, vals,
slots) -> {slot: Tensor}`` computes all the gradients a backward needs in one pass when they
will not be differentiated again (inference forces; the last backward of force training).
"""

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Dict, Tuple

import torch

from mlip.irreps import irreps_slices
from mlip.ops.tensor_product import TensorProductSpec

SLOTS = ("x", "y", "w", "z")


@dataclass(frozen=True)
class Plan:
    """Sparse 4-linear form: entries (a, b, k, p, value) over dims (Din, Dsh, Dout, P), plus the
    component ranges of the irreps (the units that output groups never split)."""

    entries: Tuple[Tuple[int, int, int, int, float], ...]
    dim_x: int
    dim_y: int
    dim_z: int
    num_paths: int
    x_slices: Tuple[Tuple[int, int], ...]   # per input irrep
    y_slices: Tuple[Tuple[int, int], ...]   # per harmonic irrep
    z_slices: Tuple[Tuple[int, int], ...]   # per path (its output block)

    @cached_property  # looked up on every kernel launch
    def key(self) -> str:
        return hashlib.sha1(repr((self.entries, self.dim_x, self.dim_y, self.dim_z, self.num_paths)).encode()
                            ).hexdigest()[:16]

    def dims(self) -> Dict[str, int]:
        """Size of each slot's component axis."""
        return {"x": self.dim_x, "y": self.dim_y, "w": self.num_paths, "z": self.dim_z}

    def units(self, free: str) -> Tuple[Tuple[int, int], ...]:
        if free == "x":
            return self.x_slices
        if free == "y":
            return self.y_slices
        if free == "z":
            return self.z_slices
        return tuple((p, p + 1) for p in range(self.num_paths))


_PLANS: Dict[tuple, Plan] = {}


def plan_for(spec: TensorProductSpec) -> Plan:
    key = (tuple(spec.irreps_in), tuple(spec.irreps_sh), tuple(spec.irreps_out_allowed))
    plan = _PLANS.get(key)
    if plan is None:
        with outside_tracing():
            plan = _PLANS[key] = _build_plan(spec)
    return plan


def outside_tracing():
    """Real tensors even while a graph is traced (make_fx / fake modes are suspended): for
    constants computed once and cached across calls, which must not be fake or traced."""
    from torch.utils._python_dispatch import _disable_current_modes

    return _disable_current_modes()


def _build_plan(spec: TensorProductSpec) -> Plan:
    pk = spec.path_of_output().tolist()
    entries = tuple((i, j, k, pk[k], float(v)) for i, j, k, v in spec.sparse_entries())
    return Plan(entries, spec.dim_in, spec.dim_sh, spec.dim_out, spec.num_paths,
                tuple(irreps_slices(spec.irreps_in)), tuple(irreps_slices(spec.irreps_sh)),
                tuple(irreps_slices(spec.irreps_out)))


def others(free: str) -> Tuple[str, str, str]:
    """The three slots that are given when ``free`` is computed, in SLOTS order."""
    return tuple(s for s in SLOTS if s != free)  # type: ignore[return-value]


Launch = Callable[[str, Plan, object, Dict[str, torch.Tensor]], torch.Tensor]


class Contract(torch.autograd.Function):
    """dL/d(free) of the 4-linear form; its backward is three more contractions of the same form."""

    @staticmethod
    def forward(ctx, launch: Launch, free: str, plan: Plan, graph, t0, t1, t2):
        ctx.launch, ctx.free, ctx.plan, ctx.graph = launch, free, plan, graph
        ctx.save_for_backward(t0, t1, t2)
        return launch(free, plan, graph, dict(zip(others(free), (t0, t1, t2))))

    @staticmethod
    def backward(ctx, grad):
        names = others(ctx.free)
        vals = dict(zip(names, ctx.saved_tensors))
        vals[ctx.free] = grad
        needed = [slot for i, slot in enumerate(names) if ctx.needs_input_grad[4 + i]]
        all_at_once = getattr(ctx.launch, "grads", None)
        if all_at_once is not None and not torch.is_grad_enabled():
            # nothing will differentiate these gradients: one pass computes them all
            out = all_at_once(ctx.plan, ctx.graph, vals, needed)
            return (None, None, None, None, *(out.get(slot) for slot in names))
        grads = [contract(ctx.launch, slot, ctx.plan, ctx.graph, vals) if slot in needed else None for slot in names]
        return (None, None, None, None, *grads)


def contract(launch: Launch, free: str, plan: Plan, graph, vals: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Differentiable dL/d(free) given the three other slots in ``vals``, computed by ``launch``."""
    return Contract.apply(launch, free, plan, graph, *(vals[s] for s in others(free)))


def check_message_inputs(plan: Plan, node_feats: torch.Tensor, edge_sh: torch.Tensor, edge_weights: torch.Tensor,
                         edge_index: torch.Tensor, shared_weights: bool = False) -> torch.dtype:
    """Shapes of a fused message call against the plan; returns the common dtype.
    ``shared_weights``: the weights have one row per pair of edges, not per edge."""
    n_e = edge_index.shape[1]
    if node_feats.dim() != 3 or node_feats.shape[1] != plan.dim_x:
        raise ValueError(f"node_feats must be [N, {plan.dim_x}, C], got {tuple(node_feats.shape)}")
    channels = node_feats.shape[2]
    if tuple(edge_sh.shape) != (n_e, plan.dim_y):
        raise ValueError(f"edge_sh must be [{n_e}, {plan.dim_y}], got {tuple(edge_sh.shape)}")
    rows = edge_weights.shape[0] if shared_weights and edge_weights.dim() == 3 else n_e
    if tuple(edge_weights.shape) != (rows, plan.num_paths, channels):
        raise ValueError(f"edge_weights must be [{'pairs' if shared_weights else n_e}, {plan.num_paths}, "
                         f"{channels}], got {tuple(edge_weights.shape)}")
    dtype = torch.promote_types(torch.promote_types(node_feats.dtype, edge_sh.dtype), edge_weights.dtype)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"fused message supports float32 and float64, got {dtype}")
    return dtype
