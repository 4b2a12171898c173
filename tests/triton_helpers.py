"""Helpers shared by the fused-kernel tests (tests/test_triton_message.py under the Triton
interpreter, tests/test_gpu.py on CUDA): tensor-product specs of l_max 1-3, random graphs and
inputs, the torch reference, and the derivative tower (out, first and second derivatives) that
force training runs through the kernels."""
import numpy as np
import torch

from mlip.data import keys as K
from mlip.data.frames import Frame
from mlip.data.graph import TypeMapper, collate, frame_to_graph
from mlip.nn.build import build_model
from mlip.ops import triton_message as tm
from mlip.ops.message import message_reference
from mlip.ops.tensor_product import TensorProductSpec, reachable_irreps


E, O = 1, -1
SPECS = {
    # (irreps_in, irreps_sh, candidate outputs)
    "l1_parity": ([(0, E), (1, O)], [(0, E), (1, O)], [(0, E), (1, O), (1, E), (0, O)]),
    "l2_parity": ([(0, E), (1, O), (2, E)], [(0, E), (1, O), (2, E)], [(0, E), (1, O), (2, E), (1, E)]),
    "l2_so3": ([(0, E), (1, E), (2, E)], [(0, E), (1, E)], [(0, E), (1, E), (2, E)]),
    "l3_parity": ([(0, E), (3, O)], [(0, E), (1, O), (3, O)], [(0, E), (1, O), (2, E), (3, O), (3, E)]),
    "l3_odd_in": ([(1, O), (3, E)], [(0, E), (3, O)], [(0, O), (1, O), (2, O), (3, E), (3, O)]),
}
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def make_spec(name):
    irreps_in, irreps_sh, candidates = SPECS[name]
    return TensorProductSpec(irreps_in, irreps_sh, reachable_irreps(irreps_in, irreps_sh, candidates))


def random_graph(num_nodes, num_edges, sort, seed=0):
    """Random edges among all but the last node (which stays isolated); self-pairs allowed
    (periodic images); sorted by receiver like the neighbour list, or shuffled."""
    g = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, num_nodes - 1, (2, num_edges), generator=g)
    if sort:
        order = np.lexsort((edge_index[1].numpy(), edge_index[0].numpy()))
        edge_index = edge_index[:, torch.as_tensor(order)]
    return edge_index


def random_inputs(spec, num_nodes, num_edges, channels, dtype, seed=0, device="cpu"):
    """Node features, edge harmonics and edge weights, drawn in float64 on the CPU (the same
    numbers on every device), then cast and moved; leaves that require grad."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, spec.dim_in, channels, generator=g, dtype=torch.float64)
    y = torch.randn(num_edges, spec.dim_sh, generator=g, dtype=torch.float64)
    w = torch.randn(num_edges, spec.num_paths, channels, generator=g, dtype=torch.float64)
    return [t.to(dtype=dtype, device=device).requires_grad_(True) for t in (x, y, w)]


def reference(spec, x, y, w, edge_index, num_nodes):
    return message_reference(x, y, w, edge_index, spec.cg_tensor(x.dtype), spec.path_of_output(), num_nodes)


def fused(spec, x, y, w, edge_index, num_nodes, mode):
    return tm.fused_message(x, y, w, edge_index, spec, num_nodes, scatter=mode)


def derivative_tower(fn, x, y, w, seed=1):
    """out, first derivatives under a random cotangent (create_graph) and second derivatives
    of a random functional of the first ones, as force training produces them."""
    out = fn(x, y, w)
    g = torch.Generator().manual_seed(seed)
    cot = torch.randn(out.shape, generator=g, dtype=torch.float64).to(dtype=out.dtype, device=out.device)
    first = torch.autograd.grad(out, (x, y, w), cot, create_graph=True)
    probes = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype=t.dtype, device=t.device)
              for t in first]
    functional = sum(((t * p).sum() + 0.5 * (t * t).sum()) for t, p in zip(first, probes))
    second = torch.autograd.grad(functional, (x, y, w))
    return [out, *first, *second]


def assert_all_close(got, want, tol, what):
    names = ["out", "d/dh", "d/dY", "d/dW", "dd/dh", "dd/dY", "dd/dW"]
    for name, a, b in zip(names, got, want):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale, msg=lambda m: f"{what} {name}: {m}")


# ---- models ----------------------------------------------------------------------------------

def small_batch(r_max):
    """A periodic 2-atom Si cell (atoms see their own images) and a non-periodic 4-atom Si/O
    cluster, batched: two structures, self-image edges, receiver-sorted edges as in training."""
    rng = np.random.default_rng(0)
    a = 5.43
    cell = np.array([[0.0, a / 2, a / 2], [a / 2, 0.0, a / 2], [a / 2, a / 2, 0.0]])
    si2 = Frame(positions=np.array([[0.0, 0.0, 0.0], [a / 4, a / 4, a / 4]]) + 0.05 * rng.standard_normal((2, 3)),
                numbers=np.array([14, 14]), cell=cell, pbc=np.array([True, True, True]),
                energy=-10.0, forces=rng.standard_normal((2, 3)))
    cluster = Frame(positions=np.array([[0.0, 0.0, 0.0], [1.6, 0.1, 0.0], [0.2, 1.5, 0.1], [1.0, 0.9, 1.3]])
                    + 0.05 * rng.standard_normal((4, 3)), numbers=np.array([14, 8, 8, 14]),
                    cell=np.zeros((3, 3)), pbc=np.array([False, False, False]),
                    energy=-20.0, forces=rng.standard_normal((4, 3)))
    mapper = TypeMapper(["O", "Si"])
    return collate([frame_to_graph(f, mapper, r_max) for f in (si2, cluster)])


def pair_of_models(config):
    torch.manual_seed(0)
    ref = build_model(dict(config, message_backend="torch"), ["O", "Si"], torch.float64)
    fused = build_model(dict(config, message_backend="triton"), ["O", "Si"], torch.float64)
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def force_loss(model, batch):
    out = model(batch, compute_forces=True, training=True)
    loss = ((out[K.TOTAL_ENERGY] - batch[K.REF_ENERGY]) ** 2).mean() \
        + ((out[K.FORCES] - batch[K.REF_FORCES]) ** 2).mean()
    return out, loss
