"""The GPU kernel tier (marker ``gpu``): the fused Triton message kernels compiled for the real
device, against the torch reference, and models running through them.

On a machine with CUDA these run the compiled kernels at GPU sizes: forward, backward and double
backward in float32 and float64, both scatter modes, l_max 1-3, 16-128 channels, and the odd
shapes (one edge, an atom without neighbours, 100k edges). ``pytest -m gpu`` is the tier that
``scripts/gpu_check.sh`` runs on a lent GPU. Without CUDA every test is skipped (CI is CPU-only),
unless ``MLIP_GPU_TESTS_ON_CPU=1``: then the same tests run on CPU tensors through the Triton
interpreter at small sizes, which rehearses this file (``scripts/gpu_check.sh --dry-run``) but
proves nothing about the GPU.
"""
import os

import pytest
import torch

pytest.importorskip("triton")

from mlip.data import keys as K  # noqa: E402
from mlip.data.graph import to_device  # noqa: E402
from mlip.nn.build import build_model  # noqa: E402
from mlip.ops import triton_message as tm  # noqa: E402
from triton_helpers import (SPECS, TOL, assert_all_close, derivative_tower, force_loss, fused,  # noqa: E402
                            make_spec, random_graph, random_inputs, reference, small_batch)

ON_GPU = torch.cuda.is_available()
REHEARSAL = not ON_GPU and os.environ.get("MLIP_GPU_TESTS_ON_CPU") == "1"
DEVICE = "cuda" if ON_GPU else "cpu"

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not (ON_GPU or REHEARSAL),
                                 reason="needs CUDA (MLIP_GPU_TESTS_ON_CPU=1 rehearses on CPU via the interpreter)")]


@pytest.fixture(scope="module", autouse=True)
def _interpreter_when_rehearsing(request):
    """The Triton interpreter for CPU tensors during a rehearsal; real compilation on a GPU."""
    if REHEARSAL:
        request.getfixturevalue("triton_interpreter")
    yield


def size(gpu: int, cpu: int) -> int:
    """A GPU-scale size, or a small one that the interpreter finishes quickly."""
    return gpu if ON_GPU else cpu


def graph_on_device(num_nodes, num_edges, sort, seed=0):
    return random_graph(num_nodes, num_edges, sort, seed).to(DEVICE)


def check_tower(spec, num_nodes, num_edges, channels, dtype, mode, sort, seed=0, tol=None):
    """Output, first and second derivatives of the fused kernels against the torch reference,
    both on the test device."""
    edge_index = graph_on_device(num_nodes, num_edges, sort, seed)
    x, y, w = random_inputs(spec, num_nodes, num_edges, channels, dtype, seed, DEVICE)
    got = derivative_tower(lambda a, b, c: fused(spec, a, b, c, edge_index, num_nodes, mode), x, y, w)
    want = derivative_tower(lambda a, b, c: reference(spec, a, b, c, edge_index, num_nodes), x, y, w)
    assert_all_close(got, want, tol or TOL[dtype], f"{spec} {mode} {dtype} C={channels} E={num_edges}")
    return got


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("mode,sort", [("deterministic", True), ("atomic", False)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_spec_mode_and_dtype(name, mode, sort, dtype):
    """l_max 1-3, with and without parity, at a size of several blocks per program grid."""
    check_tower(make_spec(name), size(300, 6), size(4000, 19), size(16, 3), dtype, mode, sort)


@pytest.mark.parametrize("channels", [16, 24, 64, 128])
@pytest.mark.parametrize("mode,sort", [("deterministic", True), ("atomic", False)])
def test_channel_counts(channels, mode, sort):
    """Channel blocks full, partial (24: masked lanes) and several per program."""
    check_tower(make_spec("l2_parity"), size(200, 5), size(3000, 12), size(channels, channels // 8),
                torch.float32, mode, sort)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_l3_at_128_channels(dtype):
    """The largest per-program register footprint the models use (l_max 3, many outputs)."""
    check_tower(make_spec("l3_parity"), size(100, 4), size(1500, 8), size(128, 2), dtype, "deterministic", True)


@pytest.mark.parametrize("mode", tm.SCATTER_MODES)
def test_one_edge(mode):
    check_tower(make_spec("l2_parity"), 3, 1, size(32, 3), torch.float64, mode, True)


@pytest.mark.parametrize("mode", tm.SCATTER_MODES)
def test_atom_without_neighbours_gets_zero_message_and_gradient(mode):
    spec = make_spec("l1_parity")
    num_nodes = size(50, 5)
    got = check_tower(spec, num_nodes, size(400, 10), size(16, 3), torch.float64, mode, mode == "deterministic")
    out, d_h = got[0], got[1]
    # random_graph leaves the last node out of every edge
    assert out[-1].abs().max() == 0 and d_h[-1].abs().max() == 0


@pytest.mark.parametrize("mode,sort", [("deterministic", True), ("atomic", False)])
def test_100k_edges(mode, sort):
    """A training-size graph: about 40 neighbours per atom, 64 channels, float32."""
    num_edges = size(100_000, 600)
    check_tower(make_spec("l1_parity"), num_edges // 40, num_edges, size(64, 4), torch.float32, mode, sort,
                tol=1e-4)


def test_deterministic_mode_is_bitwise_reproducible():
    spec = make_spec("l2_parity")
    num_nodes, num_edges = size(2000, 8), size(80_000, 30)
    edge_index = graph_on_device(num_nodes, num_edges, sort=False, seed=3)
    x, y, w = random_inputs(spec, num_nodes, num_edges, size(32, 3), torch.float32, 3, DEVICE)
    run = lambda: derivative_tower(  # noqa: E731
        lambda a, b, c: fused(spec, a, b, c, edge_index, num_nodes, "deterministic"), x, y, w)
    for a, b in zip(run(), run()):
        assert torch.equal(a, b)


# ---- models through the kernels -----------------------------------------------------------------

MODELS = {
    "nequip_l2": dict(architecture="nequip", r_max=4.0, num_layers=2, channels=16, l_max=2, parity=True,
                      num_bessel=6, radial_hidden=16, avg_num_neighbors=4.0),
    "mace_l2": dict(architecture="mace", r_max=4.0, num_interactions=2, channels=16, max_L=1, l_max=2,
                    correlation=3, num_bessel=6, radial_hidden=16, avg_num_neighbors=4.0),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_model_forces_and_force_loss_gradients_match_torch_path(name):
    """Energy, forces (backward) and the parameter gradients of a force loss (double backward) of
    a whole model: Triton kernels against the model's own torch path, float64, same device."""
    config = MODELS[name]
    torch.manual_seed(0)
    ref = build_model(dict(config, message_backend="torch"), ["O", "Si"], torch.float64).to(DEVICE)
    fast = build_model(dict(config, message_backend="triton"), ["O", "Si"], torch.float64).to(DEVICE)
    fast.load_state_dict(ref.state_dict())
    batch = to_device(small_batch(config["r_max"]), DEVICE)
    out_r, loss_r = force_loss(ref, batch)
    out_f, loss_f = force_loss(fast, batch)
    torch.testing.assert_close(out_f[K.TOTAL_ENERGY], out_r[K.TOTAL_ENERGY], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out_f[K.FORCES], out_r[K.FORCES], rtol=1e-10, atol=1e-10)
    grads_r = torch.autograd.grad(loss_r, list(ref.parameters()), allow_unused=True)
    grads_f = torch.autograd.grad(loss_f, list(fast.parameters()), allow_unused=True)
    checked = 0
    for (pname, _), gr, gf in zip(ref.named_parameters(), grads_r, grads_f):
        if gr is not None:
            torch.testing.assert_close(gf, gr, rtol=1e-9, atol=1e-11, msg=lambda m: f"{pname}: {m}")
            checked += 1
    assert checked > 5


@pytest.mark.skipif(not ON_GPU, reason="auto picks Triton only for CUDA tensors")
def test_auto_backend_runs_triton_on_cuda(monkeypatch):
    launches = []
    real = tm._launch
    monkeypatch.setattr(tm, "_launch", lambda free, *a: launches.append(free) or real(free, *a))
    model = build_model(dict(MODELS["nequip_l2"], message_backend="auto"), ["O", "Si"], torch.float32).to(DEVICE)
    batch = to_device(small_batch(4.0), DEVICE)
    model(batch, compute_forces=True)
    assert {"z", "x"} <= set(launches)
