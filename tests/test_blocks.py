"""Each equivariant block checked with e3nn's own test helper (through the [N, D, C] <-> e3nn
layout conversion), and the tensor product checked against an explicit Wigner-3j einsum."""
import pytest
import torch
from e3nn import o3
from e3nn.util.test import assert_equivariant

from mlip.nn.gate import Gate, gate_input_irreps
from mlip.nn.interaction import NequIPInteraction
from mlip.irreps import e3nn_irreps, from_e3nn, hidden_irreps, irreps_slices, sh_irreps, to_e3nn
from mlip.nn.linear import IrrepsLinear, SpeciesLinear
from mlip.nn.spherical_harmonics import SphericalHarmonics
from mlip.ops.message import MessagePassing, message_reference
from mlip.ops.tensor_product import TensorProductSpec

C = 3


pytestmark = pytest.mark.usefixtures("float64_default")


@pytest.mark.parametrize("l_max", [0, 1, 2, 3])
def test_spherical_harmonics_match_e3nn(l_max):
    v = torch.randn(50, 3) * 2.5
    ref = o3.spherical_harmonics(list(range(l_max + 1)), v, normalize=True, normalization="component")
    torch.testing.assert_close(SphericalHarmonics(l_max)(v), ref, rtol=0, atol=1e-13)


def test_spherical_harmonics_equivariant():
    sh = SphericalHarmonics(3)
    assert_equivariant(sh, irreps_in=[o3.Irreps("1o")], irreps_out=[o3.Irreps(sh.irreps_out)])


@pytest.mark.parametrize("parity", [True, False])
def test_irreps_linear_equivariant(parity):
    irreps_in = hidden_irreps(2, parity) + [(1, -1 if parity else 1)]  # a repeated irrep too
    irreps_out = hidden_irreps(2, parity)
    lin = IrrepsLinear(irreps_in, irreps_out, C, 5)
    f = lambda x: to_e3nn(lin(from_e3nn(x, irreps_in, C)), irreps_out)
    assert_equivariant(f, irreps_in=[lin.irreps_in], irreps_out=[lin.irreps_out])


def test_species_linear_equivariant():
    irreps = hidden_irreps(2, True)
    lin = SpeciesLinear(irreps, irreps + [(3, -1)], C, C, num_types=3)
    types = torch.randint(0, 3, (10,))
    f = lambda x: to_e3nn(lin(from_e3nn(x, irreps, C), types), irreps + [(3, -1)])
    out = f(torch.randn(10, e3nn_irreps(irreps, C).dim))
    assert torch.all(out[:, -7 * C:] == 0)  # no path into an irrep the input lacks
    assert_equivariant(f, args_in=[torch.randn(10, e3nn_irreps(irreps, C).dim)],
                       irreps_in=[lin.irreps_in], irreps_out=[lin.irreps_out])


def test_gate_equivariant():
    irreps = hidden_irreps(3, True)
    gate = Gate(irreps, C)
    f = lambda x: to_e3nn(gate(from_e3nn(x, gate_input_irreps(irreps), C)), irreps)
    assert_equivariant(f, irreps_in=[gate.irreps_in], irreps_out=[gate.irreps_out])


def _tp_einsum(spec, h, y):
    """Path by path with e3nn's wigner_3j: the definition the dense CG tensor must reproduce."""
    outs = []
    in_sl, sh_sl = irreps_slices(spec.irreps_in), irreps_slices(spec.irreps_sh)
    for p in spec.paths:
        l1, l2 = spec.irreps_in[p.i_in][0], spec.irreps_sh[p.i_sh][0]
        w3j = o3.wigner_3j(l1, l2, p.l_out) * (2 * p.l_out + 1) ** 0.5
        (a1, b1), (a2, b2) = in_sl[p.i_in], sh_sl[p.i_sh]
        outs.append(torch.einsum("ijk,eic,ej->ekc", w3j, h[:, a1:b1], y[:, a2:b2]))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("l_max,parity", [(1, False), (2, True), (3, True), (3, False)])
def test_message_reference_matches_path_by_path_definition(l_max, parity):
    irreps = hidden_irreps(l_max, parity)
    spec = TensorProductSpec(irreps, sh_irreps(l_max, parity), irreps)
    n, e = 6, 20
    h = torch.randn(n, spec.dim_in, C)
    y = torch.randn(e, spec.dim_sh)
    w = torch.randn(e, spec.num_paths, C)
    edge_index = torch.randint(0, n, (2, e))
    out = message_reference(h, y, w, edge_index, spec.cg_tensor(), spec.path_of_output(), n)
    per_edge = _tp_einsum(spec, h[edge_index[1]], y) * w[:, spec.path_of_output()]
    ref = torch.zeros(n, spec.dim_out, C).index_add_(0, edge_index[0], per_edge)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("l_max,parity", [(1, True), (3, True)])
def test_message_passing_equivariant(l_max, parity):
    irreps = hidden_irreps(l_max, parity)
    spec = TensorProductSpec(irreps, sh_irreps(l_max, parity), irreps)
    mp = MessagePassing(spec, C, backend="torch")
    n, e = 5, 12
    edge_index = torch.randint(0, n, (2, e))
    w = torch.randn(e, spec.num_paths, C)
    f = lambda x, y: to_e3nn(mp(from_e3nn(x, irreps, C), y, w, edge_index), spec.irreps_out)
    assert_equivariant(f, args_in=[torch.randn(n, mp.irreps_in.dim), torch.randn(e, mp.irreps_sh.dim)],
                       irreps_in=[mp.irreps_in, mp.irreps_sh], irreps_out=[mp.irreps_out])


def test_interaction_block_equivariant():
    irreps = hidden_irreps(2, True)
    block = NequIPInteraction(irreps, sh_irreps(2, True), irreps, C, num_types=2, num_basis=4, radial_hidden=8,
                              radial_depth=1, avg_num_neighbors=3.0, backend="torch")
    n, e = 6, 14
    edge_index = torch.randint(0, n, (2, e))
    types = torch.randint(0, 2, (n,))
    radial = torch.randn(e, 4)
    out_irreps = block.out_irreps_list
    f = lambda x, y: to_e3nn(block(from_e3nn(x, irreps, C), types, y, radial, edge_index), out_irreps)
    assert_equivariant(f, args_in=[torch.randn(n, block.irreps_in.dim), torch.randn(e, 9)],
                       irreps_in=[block.irreps_in, o3.Irreps("0e+1o+2e")], irreps_out=[block.irreps_out])


@pytest.mark.parametrize("l_max,parity", [(1, False), (2, True), (3, True)])
def test_grouped_message_equals_reference(l_max, parity):
    irreps = hidden_irreps(l_max, parity)
    spec = TensorProductSpec(irreps, sh_irreps(l_max, parity), irreps)
    n, e = 7, 25
    args = [torch.randn(n, spec.dim_in, C, requires_grad=True), torch.randn(e, spec.dim_sh, requires_grad=True),
            torch.randn(e, spec.num_paths, C, requires_grad=True)]
    edge_index = torch.randint(0, n, (2, e))
    ref = message_reference(*args, edge_index, spec.cg_tensor(), spec.path_of_output(), n)
    mp = MessagePassing(spec, C, backend="torch")
    out = mp(*args, edge_index)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g_ref = torch.autograd.grad(ref.pow(2).sum(), args, create_graph=True)
    g_out = torch.autograd.grad(out.pow(2).sum(), args, create_graph=True)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)
    gg_ref = torch.autograd.grad(sum(g.pow(2).sum() for g in g_ref), args)
    gg_out = torch.autograd.grad(sum(g.pow(2).sum() for g in g_out), args)
    for a, b in zip(gg_out, gg_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_embedding_self_connection_is_a_species_linear_map():
    """NequIP's bilinear self-connection equals a per-species linear map whose weights are the
    embedding contracted with the bilinear weights, and it is equivariant."""
    from mlip.nn.linear import EmbeddingSelfConnection, SpeciesLinear

    irreps_in, irreps_out = hidden_irreps(2, True), hidden_irreps(1, True)
    n_types, embed = 3, 5
    torch.manual_seed(0)
    sc = EmbeddingSelfConnection(irreps_in, irreps_out, C, C + 1, n_types, embed).double()
    table = torch.randn(n_types, embed, dtype=torch.float64)
    ref = SpeciesLinear(irreps_in, irreps_out, C, C + 1, n_types).double()
    with torch.no_grad():
        for w_ref, w in zip(ref.linear.weights, sc.weights):
            w_ref.copy_(torch.einsum("dfc,sd->fsc", w, table).reshape(w.shape[1], -1) / embed ** 0.5)
    x = torch.randn(8, sum(2 * l + 1 for l, _ in irreps_in), C, dtype=torch.float64)
    types = torch.randint(0, n_types, (8,))
    torch.testing.assert_close(sc(x, types, table), ref(x, types), rtol=1e-12, atol=1e-12)
    f = lambda x: to_e3nn(sc(from_e3nn(x, irreps_in, C), types, table), irreps_out)
    assert_equivariant(f, args_in=[torch.randn(8, sc.irreps_in.dim, dtype=torch.float64)],
                       irreps_in=[sc.irreps_in], irreps_out=[sc.irreps_out])
    with pytest.raises(ValueError, match="species embedding"):
        sc(x, types)


def test_architecture_registry_knows_each_family_and_its_keys():
    """One registry: builders, accepted model keys and capabilities come from it."""
    from mlip.nn.build import ARCHITECTURES, get_architecture, load_architectures
    from mlip.nn.mace import MACEModel
    from mlip.nn.nequip import NequIPModel

    load_architectures()
    assert {"nequip", "mace"} <= set(ARCHITECTURES)
    assert get_architecture("nequip").model_class is NequIPModel and get_architecture("nequip").supports_compile
    assert get_architecture("mace").model_class is MACEModel and not get_architecture("mace").supports_compile
    assert "num_interactions" in get_architecture("mace").hyperparameters()
    assert "num_layers" in get_architecture("nequip").hyperparameters()
    assert "num_types" not in get_architecture("nequip").hyperparameters()
    with pytest.raises(ValueError, match=r"unknown architecture 'allegro'; available: \['mace', 'nequip'"):
        get_architecture("allegro")


def test_upstream_hyperparameter_names_build_the_same_model():
    """NequIP's and MACE's key names give the model their mlip names give, bit for bit."""
    import torch

    from mlip.nn.build import build_model, canonical_model_config

    cases = [
        ({"architecture": "nequip", "num_features": 8, "num_bessels": 6, "polynomial_cutoff_p": 5,
          "radial_mlp_width": 16, "radial_mlp_depth": 1, "num_layers": 2, "r_max": 3.0},
         {"architecture": "nequip", "channels": 8, "num_bessel": 6, "cutoff_p": 5, "radial_hidden": 16,
          "radial_depth": 1, "num_layers": 2, "r_max": 3.0}),
        ({"architecture": "mace", "num_channels": 4, "max_ell": 2, "max_L": 1, "num_radial_basis": 5,
          "num_cutoff_basis": 4, "radial_MLP": [8, 8], "r_max": 3.0},
         {"architecture": "mace", "channels": 4, "l_max": 2, "max_L": 1, "num_bessel": 5, "cutoff_p": 4,
          "radial_hidden": 8, "radial_depth": 2, "r_max": 3.0}),
    ]
    for upstream, ours in cases:
        config, notes = canonical_model_config(upstream)
        assert config == ours and len(notes) == len(set(upstream) - set(ours))
        torch.manual_seed(0)
        a = build_model(upstream, ["H", "C"], "float64")
        torch.manual_seed(0)
        b = build_model(ours, ["H", "C"], "float64")
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(ValueError, match="model.num_features and model.channels set the same"):
        canonical_model_config({"num_features": 8, "channels": 8})
    with pytest.raises(ValueError, match="equal hidden widths"):
        canonical_model_config({"architecture": "mace", "radial_MLP": [64, 32]})
