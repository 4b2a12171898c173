"""The CPU message paths (message_grouped in torch, the fused C++ kernel) against the plain
reference: forward, first and second derivatives in float64, for specs with one input component
(first layer, broadcast product), several output blocks, and the size-S model's layers."""
import os
import shutil

import pytest
import torch

from mlip.nn.build import default_dtype
from mlip.ops import cpu_message, current_policy, reference_ops
from mlip.ops.cpu_message import fused_message_cpu
from mlip.ops.message import MessagePassing, message_grouped, message_reference
from mlip.ops.tensor_product import TensorProductSpec, reachable_irreps

E, O = 1, -1
SPECS = {
    "scalar_in_l1": ([(0, E)], [(0, E), (1, O)], [(0, E), (1, O)]),
    "scalar_in_l2_so3": ([(0, E)], [(0, E), (1, E), (2, E)], [(0, E), (1, E), (2, E)]),
    "l1_so3_to_scalar": ([(0, E), (1, E)], [(0, E), (1, E)], [(0, E)]),
    "l1_parity": ([(0, E), (1, O)], [(0, E), (1, O)], [(0, E), (1, O), (1, E), (0, O)]),
    "l2_parity": ([(0, E), (1, O), (2, E)], [(0, E), (1, O), (2, E)], [(0, E), (1, O), (2, E), (1, E)]),
}


def _derivatives(fn, x, y, w):
    out = fn(x, y, w)
    g = torch.Generator().manual_seed(1)
    cot = torch.randn(out.shape, generator=g, dtype=out.dtype)
    first = torch.autograd.grad(out, (x, y, w), cot, create_graph=True)
    probes = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in first]
    functional = sum(((t * p).sum() + 0.5 * (t * t).sum()) for t, p in zip(first, probes))
    return [out, *first, *torch.autograd.grad(functional, (x, y, w))]


# the fused CPU kernels are built with the system's C++ compiler; a machine without one runs the
# torch path (and these tests cannot run). Where a compiler exists, a failed build fails them.
needs_cpu_kernel = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                      reason="no C++ compiler to build the fused CPU kernel")


def _spec(name):
    irreps_in, irreps_sh, candidates = SPECS[name]
    return TensorProductSpec(irreps_in, irreps_sh, reachable_irreps(irreps_in, irreps_sh, candidates))


def _inputs(spec, n_nodes=7, n_edges=40, channels=5, dtype=torch.float64, seed=0):
    """Random edges in random order (not sorted by receiver; the last node has no edges)."""
    g = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, n_nodes - 1, (2, n_edges), generator=g)
    x = torch.randn(n_nodes, spec.dim_in, channels, generator=g, dtype=dtype).requires_grad_(True)
    y = torch.randn(n_edges, spec.dim_sh, generator=g, dtype=dtype).requires_grad_(True)
    w = torch.randn(n_edges, spec.num_paths, channels, generator=g, dtype=dtype).requires_grad_(True)
    return edge_index, x, y, w


@pytest.mark.parametrize("impl", ["grouped", pytest.param("cpu_fused", marks=needs_cpu_kernel)])
@pytest.mark.parametrize("name", list(SPECS))
def test_cpu_paths_equal_reference(name, impl):
    spec = _spec(name)
    n_nodes = 7
    edge_index, x, y, w = _inputs(spec, n_nodes)
    cg = spec.cg_tensor(torch.float64)
    if impl == "grouped":
        def fn(a, b, c):
            return message_grouped(a, b, c, edge_index, cg, spec.weight_groups(), n_nodes)
    else:
        def fn(a, b, c):
            return fused_message_cpu(a, b, c, edge_index, spec, n_nodes)
    got = _derivatives(fn, x, y, w)
    want = _derivatives(lambda a, b, c: message_reference(a, b, c, edge_index, cg, spec.path_of_output(), n_nodes),
                        x, y, w)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * max(1.0, b.abs().max().item()))


@needs_cpu_kernel
def test_cpu_fused_gradcheck():
    """Analytic first and second derivatives of the C++ kernel against finite differences."""
    spec = _spec("l1_parity")
    edge_index, x, y, w = _inputs(spec, n_nodes=5, n_edges=12, channels=3)

    def fn(a, b, c):
        return fused_message_cpu(a, b, c, edge_index, spec, 5)

    assert torch.autograd.gradcheck(fn, (x, y, w))
    assert torch.autograd.gradgradcheck(fn, (x, y, w))


@needs_cpu_kernel
def test_cpu_fused_float32_threads_and_empty():
    spec = _spec("l2_parity")
    edge_index, x, y, w = _inputs(spec, n_nodes=60, n_edges=3000, channels=16, dtype=torch.float32)
    cg = spec.cg_tensor(torch.float32)
    want = message_reference(x, y, w, edge_index, cg, spec.path_of_output(), 60)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fused_message_cpu(x, y, w, edge_index, spec, 60)
        torch.set_num_threads(2)
        two = fused_message_cpu(x, y, w, edge_index, spec, 60)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(one, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-5)  # per-thread partial sums, same result
    none = fused_message_cpu(x, y[:0], w[:0], edge_index[:, :0], spec, 60)
    assert none.shape == want.shape and not none.any()


@needs_cpu_kernel
def test_message_passing_picks_the_cpu_kernel(monkeypatch):
    spec = _spec("l1_so3_to_scalar")
    with default_dtype(torch.float64):  # Clebsch-Gordan buffer computed in float64
        mp = MessagePassing(spec, 5)
    edge_index, x, y, w = _inputs(spec)
    assert current_policy().message_kernel(mp.backend, x.device.type) == "cpu"
    with reference_ops():
        assert current_policy().message_kernel(mp.backend, x.device.type) == "torch"
        ref = mp(x, y, w, edge_index)
    torch.testing.assert_close(mp(x, y, w, edge_index), ref, rtol=1e-12, atol=1e-12)
    # without the kernel (no compiler, or switched off) "auto" falls back to torch
    monkeypatch.setattr(cpu_message, "_STATE", {})
    monkeypatch.setenv("MLIP_CPU_KERNEL", "0")
    assert current_policy().message_kernel(mp.backend, x.device.type) == "torch"
    torch.testing.assert_close(mp(x, y, w, edge_index), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="MLIP_CPU_KERNEL=0"):
        fused_message_cpu(x, y, w, edge_index, spec, 7)


@needs_cpu_kernel
@pytest.mark.parametrize("name", ["l1_so3_to_scalar", "l2_parity"])
def test_cpu_fused_shared_pair_weights(name):
    """Weights with one row per pair of edges (edge e reads row edge_pair[e]; rows with one or
    several edges) equal the per-edge gather, to second derivatives, and through MessagePassing."""
    spec = _spec(name)
    n_nodes, n_edges, channels = 7, 40, 5
    edge_index, x, y, _ = _inputs(spec, n_nodes, n_edges, channels)
    g = torch.Generator().manual_seed(3)
    edge_pair = torch.randint(0, 25, (n_edges,), generator=g)
    edge_pair[:25] = torch.arange(25)  # every row used, some by one edge, some by several
    rows = torch.randn(25, spec.num_paths, channels, generator=g, dtype=torch.float64).requires_grad_(True)
    cg = spec.cg_tensor(torch.float64)
    got = _derivatives(lambda a, b, c: fused_message_cpu(a, b, c, edge_index, spec, n_nodes, edge_pair), x, y, rows)
    want = _derivatives(lambda a, b, c: message_reference(a, b, c.index_select(0, edge_pair), edge_index, cg,
                                                          spec.path_of_output(), n_nodes), x, y, rows)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * max(1.0, b.abs().max().item()))
    with default_dtype(torch.float64):
        mp = MessagePassing(spec, channels)
    with reference_ops():
        ref = mp(x, y, rows, edge_index, edge_pair)
    torch.testing.assert_close(mp(x, y, rows, edge_index, edge_pair), ref, rtol=1e-12, atol=1e-12)


@needs_cpu_kernel
def test_cpu_fused_rejects_bad_indices():
    spec = _spec("l1_parity")
    edge_index, x, y, w = _inputs(spec)
    bad = edge_index.clone()
    bad[1, 3] = 7  # one past the last node
    with pytest.raises(RuntimeError, match="outside"):
        fused_message_cpu(x, y, w, bad, spec, 7)
    with pytest.raises(RuntimeError, match="w_rows"):
        fused_message_cpu(x, y, w[:5], edge_index, spec, 7, torch.full((40,), 5))


@needs_cpu_kernel
def test_fused_silu_derivatives(monkeypatch):
    """gain * silu(x) with fused CPU derivatives: first and second derivatives against finite
    differences, third (torch fallback) against the plain expression."""
    from mlip.ops import silu

    monkeypatch.setattr(silu, "FUSED_MIN_NUMEL", 0)
    x = torch.randn(40, 3, dtype=torch.float64, requires_grad=True)
    y = silu.silu_gain(x, 1.7)
    assert y.grad_fn is not None and "SiLUGain" in type(y.grad_fn).__name__  # the fused path ran
    assert torch.autograd.gradcheck(lambda t: silu.silu_gain(t, 1.7), (x,))
    assert torch.autograd.gradgradcheck(lambda t: silu.silu_gain(t, 1.7), (x,))

    def third(fn):
        (d1,) = torch.autograd.grad(fn(x, 1.7).sum(), x, create_graph=True)
        (d2,) = torch.autograd.grad((d1 * d1).sum(), x, create_graph=True)
        return torch.autograd.grad(d2.sum(), x)[0]

    torch.testing.assert_close(third(silu.silu_gain), third(silu.silu_gain_torch), rtol=1e-12, atol=1e-12)
    with reference_ops():
        assert "SiLUGain" not in type(silu.silu_gain(x, 1.7).grad_fn).__name__


@needs_cpu_kernel
def test_fused_silu_many_chunks_float32():
    """Tensors spanning several parallel chunks (not a multiple of the chunk size): value, first
    and second derivatives equal torch's expressions in float32 at 1 and 2 threads."""
    from mlip.ops import silu

    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(1000, 133, generator=g) * 3
    gy = torch.randn(1000, 133, generator=g)
    gg = torch.randn(1000, 133, generator=g)

    def derivatives(fn):
        x = x0.clone().requires_grad_(True)
        y = fn(x, 1.3)
        (d1,) = torch.autograd.grad(y, x, gy, create_graph=True)
        (d2,) = torch.autograd.grad(d1, x, gg)
        return y.detach(), d1.detach(), d2

    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for got, want in zip(derivatives(silu.silu_gain), derivatives(silu.silu_gain_torch)):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


@needs_cpu_kernel
@pytest.mark.parametrize("shared", [False, True])
def test_kernel_ops_registered_for_tracing(shared):
    """The formulas that let traced graphs hold the kernel (mlip.nn.compiled): the fake (shape)
    implementations give the real outputs' shapes for every free slot and for the all-gradients
    op, and the op's registered derivative passes gradcheck and gradgradcheck (float64) when
    the op is called directly, outside the eager autograd Function."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from mlip.ops.fourlinear import SLOTS, plan_for

    assert cpu_message.cpu_kernel_traceable()
    spec = _spec("l1_parity")
    plan = plan_for(spec)
    edge_index, x, y, w = _inputs(spec, n_edges=12, channels=3)
    n_rows = 12
    pair = None
    if shared:  # weights shared by edges 2k and 2k+1
        n_rows = 6
        pair = torch.arange(12) // 2
        w = w[:6].detach().requires_grad_(True)
    graph = cpu_message.CpuGraph(edge_index, x.shape[0], pair, n_rows)
    idx, val = cpu_message._terms(plan)
    z = torch.randn(x.shape[0], plan.dim_z, 3, dtype=torch.float64, requires_grad=True)
    full = {"x": x, "y": y, "w": w, "z": z}

    def call(free, vals):
        ref = next(iter(vals.values()))
        args = [vals[s] if s != free else ref.new_empty((0,)) for s in SLOTS]
        return torch.ops.mlip_cpu.contract(SLOTS.index(free), idx, val, *args, graph.receiver, graph.sender,
                                           graph.w_rows, graph.num_w_rows, graph.num_nodes, plan.dims()[free])

    with torch.no_grad():
        real = {free: call(free, full) for free in SLOTS}
        real_grads = torch.ops.mlip_cpu.grads(idx, val, x, y, w, z, graph.receiver, graph.sender, graph.w_rows,
                                              graph.num_nodes, True, True, True, True)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        fake_vals = {k: mode.from_tensor(v.detach()) for k, v in full.items()}
        for free in SLOTS:
            assert call(free, fake_vals).shape == real[free].shape, free
        fake_grads = torch.ops.mlip_cpu.grads(idx, val, *(fake_vals[s] for s in SLOTS), graph.receiver,
                                              graph.sender, graph.w_rows, graph.num_nodes, True, True, True, True)
        assert [t.shape for t in fake_grads] == [t.shape for t in real_grads]

    for free in ("z", "x", "w"):
        given = [s for s in SLOTS if s != free]

        def fn(*ts, free=free, given=given):
            return call(free, dict(zip(given, ts)))

        inputs = tuple(full[s] for s in given)
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)
