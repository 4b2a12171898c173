"""Fused Triton message kernels against the torch reference, run by the Triton interpreter.

``TRITON_INTERPRET=1`` is set by a module-scoped fixture (and restored afterwards), not at
import time: Triton reads the variable when a kernel is decorated, and the fused module
generates and decorates its kernels lazily, keyed by the interpreter flag. So the variable is
only in effect while this module's tests run and does not leak into other test modules of the
same pytest process (``triton_available`` of CPU tensors is False again afterwards).
"""
import os

import pytest
import torch

pytest.importorskip("triton")

from mlip.nn.build import default_dtype  # noqa: E402
from mlip.ops import triton_message as tm  # noqa: E402
from mlip.ops.message import MessagePassing  # noqa: E402
from triton_helpers import (SPECS, TOL, assert_all_close, derivative_tower, fused, make_spec,  # noqa: E402
                            random_graph, random_inputs, reference)


pytestmark = pytest.mark.usefixtures("triton_interpreter")


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("mode,sort", [("deterministic", True), ("atomic", False)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_forward_backward_double_backward_match_reference(name, mode, sort, dtype):
    spec = make_spec(name)
    num_nodes, num_edges, channels = 6, 19, 5   # channels not a power of two: masked lanes
    edge_index = random_graph(num_nodes, num_edges, sort)
    x, y, w = random_inputs(spec, num_nodes, num_edges, channels, dtype)
    got = derivative_tower(lambda a, b, c: fused(spec, a, b, c, edge_index, num_nodes, mode), x, y, w)
    want = derivative_tower(lambda a, b, c: reference(spec, a, b, c, edge_index, num_nodes), x, y, w)
    assert_all_close(got, want, TOL[dtype], f"{name} {mode} {dtype}")


def test_deterministic_mode_accepts_unsorted_edges_and_is_reproducible():
    spec = make_spec("l1_parity")
    num_nodes, num_edges, channels = 7, 40, 3
    edge_index = random_graph(num_nodes, num_edges, sort=False, seed=3)
    x, y, w = random_inputs(spec, num_nodes, num_edges, channels, torch.float32)
    got = derivative_tower(lambda a, b, c: fused(spec, a, b, c, edge_index, num_nodes, "deterministic"), x, y, w)
    again = derivative_tower(lambda a, b, c: fused(spec, a, b, c, edge_index, num_nodes, "deterministic"), x, y, w)
    want = derivative_tower(lambda a, b, c: reference(spec, a, b, c, edge_index, num_nodes), x, y, w)
    assert_all_close(got, want, 1e-5, "unsorted deterministic")
    for a, b in zip(got, again):
        assert torch.equal(a, b)


def test_many_channels_and_long_segments():
    """More channels than one channel block and segments longer than one edge block."""
    spec = make_spec("l1_parity")
    num_nodes, num_edges, channels = 3, 90, 70
    edge_index = random_graph(num_nodes, num_edges, sort=True, seed=5)
    x, y, w = random_inputs(spec, num_nodes, num_edges, channels, torch.float64)
    for mode in tm.SCATTER_MODES:
        got = derivative_tower(lambda a, b, c: fused(spec, a, b, c, edge_index, num_nodes, mode), x, y, w)
        want = derivative_tower(lambda a, b, c: reference(spec, a, b, c, edge_index, num_nodes), x, y, w)
        assert_all_close(got, want, 1e-10, mode)


def test_output_groups_split_kernels(monkeypatch):
    """Splitting the outputs over several generated kernels (as on GPU) gives the same result."""
    monkeypatch.setitem(tm.INTERPRET_CONFIG, "max_outputs", {"z": 4, "x": 4, "y": 2, "w": 2})
    spec = make_spec("l2_so3")
    num_nodes, num_edges, channels = 5, 12, 3
    edge_index = random_graph(num_nodes, num_edges, sort=True, seed=2)
    x, y, w = random_inputs(spec, num_nodes, num_edges, channels, torch.float64)
    for mode in tm.SCATTER_MODES:
        got = derivative_tower(lambda a, b, c: fused(spec, a, b, c, edge_index, num_nodes, mode), x, y, w)
        want = derivative_tower(lambda a, b, c: reference(spec, a, b, c, edge_index, num_nodes), x, y, w)
        assert_all_close(got, want, 1e-10, f"split {mode}")
    for slot in "zxyw":
        assert len(tm.get_kernels(tm.plan_for(spec), slot)) > 1


def test_no_edges():
    spec = make_spec("l1_parity")
    x, y, w = random_inputs(spec, 4, 0, 3, torch.float64)
    edge_index = torch.zeros(2, 0, dtype=torch.long)
    for mode in tm.SCATTER_MODES:
        out = fused(spec, x, y, w, edge_index, 4, mode)
        assert out.shape == (4, spec.dim_out, 3) and out.abs().max() == 0
        gx, gy, gw = torch.autograd.grad(out.sum(), (x, y, w), allow_unused=True)
        assert gx.abs().max() == 0 and gy.shape == y.shape and gw.shape == w.shape


def test_bad_inputs_are_rejected():
    spec = make_spec("l1_parity")
    x, y, w = random_inputs(spec, 4, 5, 3, torch.float64)
    edge_index = random_graph(4, 5, sort=True)
    with pytest.raises(ValueError, match="scatter mode"):
        fused(spec, x, y, w, edge_index, 4, "sometimes")
    with pytest.raises(ValueError, match="edge_weights"):
        fused(spec, x, y, w[:, :, :2], edge_index, 4, None)
    with pytest.raises(ValueError, match="edge_sh"):
        fused(spec, x, y[:, :2], w, edge_index, 4, None)


@pytest.mark.parametrize("name,modes,channels", [("l1_parity", tm.SCATTER_MODES, 2),
                                                  ("l3_parity", ("deterministic",), 1)])
def test_gradcheck_and_gradgradcheck(name, modes, channels):
    """fast_mode (random projections): the interpreter is too slow for full Jacobians of l = 3."""
    spec = make_spec(name)
    num_nodes, num_edges = 4, 6
    edge_index = random_graph(num_nodes, num_edges, sort=True, seed=7)
    x, y, w = random_inputs(spec, num_nodes, num_edges, channels, torch.float64)
    for mode in modes:
        fn = lambda a, b, c: fused(spec, a, b, c, edge_index, num_nodes, mode)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, y, w), fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, (x, y, w), fast_mode=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name,channels", [("l1_parity", 2), ("l2_so3", 1)])
def test_gradcheck_and_gradgradcheck_full(name, channels):
    """Full (slow-mode) Jacobians, unsorted edges, both scatter modes."""
    spec = make_spec(name)
    num_nodes, num_edges = 3, 4
    edge_index = random_graph(num_nodes, num_edges, sort=False, seed=11)
    x, y, w = random_inputs(spec, num_nodes, num_edges, channels, torch.float64)
    for mode in tm.SCATTER_MODES:
        fn = lambda a, b, c: fused(spec, a, b, c, edge_index, num_nodes, mode)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, y, w))
        assert torch.autograd.gradgradcheck(fn, (x, y, w))


def test_kernel_source_unrolls_only_nonzero_cg_entries():
    spec = make_spec("l3_parity")
    src = tm.kernel_source(spec, "z")
    assert "tl.full([]" in src and "for e0 in range(start, end, BLOCK_E)" in src
    # one load per used input component, never a dense [Din, Dsh, Dout] table
    assert src.count("g_0 = tl.load") == 1 and "CG" not in src.split("def ")[1].split(")")[0]


# ---- dispatch ---------------------------------------------------------------------------------

def test_dispatch_backend_switch(monkeypatch):
    spec = make_spec("l1_parity")
    calls = []
    real = tm.fused_message

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tm, "fused_message", spy)
    x, y, w = random_inputs(spec, 5, 8, 3, torch.float64)
    edge_index = random_graph(5, 8, sort=True)
    want = reference(spec, x, y, w, edge_index, 5)
    for backend, expect_fused in [("torch", False), ("auto", False), ("triton", True)]:
        calls.clear()
        with default_dtype(torch.float64):  # the CG buffer is built in the default dtype
            mp = MessagePassing(spec, 3, backend)
        out = mp(x, y, w, edge_index)
        torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
        # "auto" picks the fused kernel only for CUDA tensors; these are CPU tensors
        assert bool(calls) == expect_fused, backend


def test_torchscript_uses_reference_path():
    spec = make_spec("l1_parity")
    x, y, w = random_inputs(spec, 5, 8, 3, torch.float64)
    edge_index = random_graph(5, 8, sort=True)
    with default_dtype(torch.float64):
        mp = MessagePassing(spec, 3, "triton")
    scripted = torch.jit.script(mp)
    torch.testing.assert_close(scripted(x, y, w, edge_index), reference(spec, x, y, w, edge_index, 5),
                               rtol=1e-10, atol=1e-10)


def test_interpreter_flag_is_set_only_inside_this_module():
    assert os.environ.get("TRITON_INTERPRET") == "1"
