"""The CPU message path (message_grouped) against the plain reference: forward, first and
second derivatives in float64, for specs with one input component (first layer, broadcast
product), several output blocks, and the size-S model's layers."""
import pytest
import torch

from mlip.ops.message import message_grouped, message_reference
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


@pytest.mark.parametrize("name", list(SPECS))
def test_grouped_equals_reference(name):
    irreps_in, irreps_sh, candidates = SPECS[name]
    spec = TensorProductSpec(irreps_in, irreps_sh, reachable_irreps(irreps_in, irreps_sh, candidates))
    n_nodes, n_edges, channels = 7, 40, 5
    g = torch.Generator().manual_seed(0)
    edge_index = torch.randint(0, n_nodes - 1, (2, n_edges), generator=g)
    x = torch.randn(n_nodes, spec.dim_in, channels, generator=g, dtype=torch.float64).requires_grad_(True)
    y = torch.randn(n_edges, spec.dim_sh, generator=g, dtype=torch.float64).requires_grad_(True)
    w = torch.randn(n_edges, spec.num_paths, channels, generator=g, dtype=torch.float64).requires_grad_(True)
    cg = spec.cg_tensor(torch.float64)
    got = _derivatives(lambda a, b, c: message_grouped(a, b, c, edge_index, cg, spec.weight_groups(), n_nodes),
                       x, y, w)
    want = _derivatives(lambda a, b, c: message_reference(a, b, c, edge_index, cg, spec.path_of_output(), n_nodes),
                        x, y, w)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * max(1.0, b.abs().max().item()))
