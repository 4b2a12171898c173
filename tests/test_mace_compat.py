"""``mace_compat``: mace-torch's path set for the symmetric contraction, its block structure and
its parameter count (issue 21). The physics suite (tests/test_physics.py) runs a compat variant
too; the last test compares with mace-torch itself when its environment is installed."""
import itertools
import json
import os
import subprocess

import numpy as np
import pytest
import torch

from mlip.irreps import irreps_dim, sh_irreps, wigner_D
from mlip.nn import build_model
from mlip.nn.cg_coupling import coupling_basis, mace_coupling_paths, symmetrise
from mlip.nn.symmetric_contraction import SymmetricContraction
from peer_weights import copy_radial_mlp

A_IRREPS = [(0, 1), (1, -1), (2, 1)]          # an A-basis of one channel, l <= 2
OUTPUTS = [(0, 1), (1, -1), (1, 1), (2, 1)]


def _random_o3(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return torch.tensor(-q if np.linalg.det(q) > 0 else q)  # an improper rotation: parity matters


def _tree_count(ls, parities, ir_out):
    """Number of left-to-right coupling trees of an ordered tuple of irreps into ir_out,
    counted from the angular-momentum rules alone (no tensors)."""
    states = {(ls[0], parities[0]): 1}
    for l, p in zip(ls[1:], parities[1:]):
        nxt = {}
        for (j, q), n in states.items():
            for j2 in range(abs(j - l), j + l + 1):
                nxt[(j2, q * p)] = nxt.get((j2, q * p), 0) + n
        states = nxt
    return states.get(tuple(ir_out), 0)


@pytest.mark.parametrize("nu", [1, 2, 3])
def test_mace_paths_are_one_per_coupling_tree_of_every_ordered_tuple(nu):
    for ir_out in OUTPUTS:
        expected = sum(_tree_count([A_IRREPS[i][0] for i in t], [A_IRREPS[i][1] for i in t], ir_out)
                       for t in itertools.product(range(len(A_IRREPS)), repeat=nu))
        assert mace_coupling_paths(A_IRREPS, nu, ir_out).shape[-1] == expected


@pytest.mark.parametrize("nu", [1, 2, 3])
def test_mace_paths_are_equivariant(nu, rng, float64_default):
    R = _random_o3(rng)
    d_in = wigner_D(A_IRREPS, R)
    for ir_out in OUTPUTS:
        u = mace_coupling_paths(A_IRREPS, nu, ir_out)  # [M, D^nu, K]
        if u.shape[-1] == 0:
            continue
        d_out = wigner_D([ir_out], R)
        # U(D x_1, ..., D x_nu) = D_out U(x_1, ..., x_nu), for every path
        lhs = u
        for axis in range(1, nu + 1):
            lhs = torch.movedim(torch.tensordot(lhs, d_in, dims=([axis], [0])), -1, axis)
        rhs = torch.tensordot(d_out, u, dims=([1], [0]))
        assert torch.allclose(lhs, rhs, atol=1e-12), (nu, ir_out)


@pytest.mark.parametrize("nu", [1, 2, 3])
def test_symmetrised_mace_paths_span_the_independent_basis(nu):
    """On a product of nu copies of one input only the symmetric part of a path acts: the
    symmetrised redundant paths span exactly the space of the independent basis."""
    d = irreps_dim(A_IRREPS)
    for ir_out in OUTPUTS:
        rows = (2 * ir_out[0] + 1) * d ** nu
        basis = coupling_basis(A_IRREPS, nu, ir_out).reshape(rows, -1)
        paths = symmetrise(mace_coupling_paths(A_IRREPS, nu, ir_out), nu).reshape(rows, -1)
        if basis.shape[1] == 0:
            assert paths.shape[1] == 0 or float(paths.abs().max()) < 1e-12
            continue
        assert torch.linalg.matrix_rank(paths, atol=1e-9) == basis.shape[1]
        # every redundant path lies in the basis' span, and the basis in theirs (equal ranks)
        q, _ = torch.linalg.qr(basis)
        assert torch.allclose(q @ (q.T @ paths), paths, atol=1e-10)


def test_compat_contraction_is_mace_torchs_sum_over_unsymmetrised_paths(rng):
    """B = sum_nu sum_k W[z, k, c] sum_i U[M, i_1..i_nu, k] A_{i_1 c} ... A_{i_nu c} with the
    paths as mace-torch stores them (not symmetrised) and no path normalisation."""
    torch.manual_seed(1)
    outs, channels, correlation = [(0, 1), (1, -1)], 3, 3
    sc = SymmetricContraction(A_IRREPS, outs, channels, correlation, num_types=2, paths="mace").double()
    a = torch.randn(5, irreps_dim(A_IRREPS), channels, dtype=torch.float64)
    z = torch.tensor([0, 1, 1, 0, 1])
    expected = torch.zeros(5, sum(2 * l + 1 for l, _ in outs), channels, dtype=torch.float64)
    row = 0
    for ir, (m0, m1) in zip(outs, [(0, 1), (1, 4)]):
        for nu in range(1, correlation + 1):
            u = mace_coupling_paths(A_IRREPS, nu, ir)
            k = u.shape[-1]
            w = sc.weight.detach()[z, row:row + k]  # [N, K, C]
            letters = "abc"[:nu]
            spec = "M" + letters + "k," + ",".join(f"n{x}C" for x in letters) + ",nkC->nMC"
            expected[:, m0:m1] += torch.einsum(spec, u, *([a] * nu), w)
            row += k
    assert row == sc.num_paths
    assert torch.allclose(sc(a, z), expected, atol=1e-12)


def test_compat_weights_start_as_normal_over_k():
    torch.manual_seed(0)
    sc = SymmetricContraction(sh_irreps(3, True), [(0, 1)], 64, 3, num_types=4, paths="mace")
    for _, nu, k0, k, norm in sc.paths:
        w = sc.weight.detach()[:, k0:k0 + k]
        assert norm == 1.0
        assert abs(float(w.std()) * k - 1.0) < 0.1, (nu, k)


def _mace_model(channels, compat, types=("H", "C", "N", "O")):
    return build_model(dict(architecture="mace", r_max=5.0, num_interactions=2, num_channels=channels, max_L=1,
                            max_ell=3, correlation=3, num_radial_basis=8, num_cutoff_basis=5,
                            radial_MLP=[16, 16, 16], readout_hidden=16, mace_compat=compat), list(types),
                       torch.float64)


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_compat_adds_exactly_mace_torchs_blocks():
    """The parameter difference is the first layer's per-species map of the A-basis, the
    redundant paths, minus the Bessel frequencies and the energy offset that mace-torch fixes."""
    channels, species = 8, 4
    default, compat = _mace_model(channels, False), _mace_model(channels, True)
    a_irreps = sh_irreps(3, True)
    extra_paths = 0
    for layer in compat.energy_model.layers:
        outs = layer.out_irreps_list
        extra_paths += sum(mace_coupling_paths(a_irreps, nu, ir).shape[-1] - coupling_basis(a_irreps, nu, ir).shape[-1]
                           for ir in outs for nu in (1, 2, 3))
    first_map = species * channels * channels * len(a_irreps)
    assert _count(compat.energy_model.layers[0].species_a) == first_map
    assert default.energy_model.layers[0].species_a is None
    assert _count(compat) - _count(default) == first_map + species * channels * extra_paths - 8 - species
    # the fixed ones are buffers under the same state-dict keys (checkpoints keep one layout)
    assert set(compat.state_dict()) - set(default.state_dict()) == {
        k for k in compat.state_dict() if ".species_a." in k}


def test_two_of_compats_differences_can_be_chosen_alone():
    """product_paths and first_layer_species_map add exactly their own blocks, with or without
    mace_compat, and a wrong path-set name is refused."""
    channels, species = 8, 4
    counts = {}
    for name, extra in {"default": {}, "paths": {"product_paths": "mace"}, "map": {"first_layer_species_map": True},
                        "compat": {"mace_compat": True},
                        "compat-paths": {"mace_compat": True, "product_paths": "independent"},
                        "compat-map": {"mace_compat": True, "first_layer_species_map": False}}.items():
        counts[name] = _count(build_model(dict(architecture="mace", r_max=5.0, channels=channels, max_L=1, l_max=3,
                                               correlation=3, radial_hidden=16, **extra), ["H", "C", "N", "O"]))
    paths, first_map = counts["paths"] - counts["default"], counts["map"] - counts["default"]
    assert paths > 0 and first_map == species * channels * channels * 4
    assert counts["compat"] - counts["compat-paths"] == paths
    assert counts["compat"] - counts["compat-map"] == first_map
    assert counts["compat"] == counts["default"] + paths + first_map - 8 - species
    with pytest.raises(ValueError, match="product_paths"):
        build_model(dict(architecture="mace", r_max=5.0, channels=4, product_paths="full"), ["H"])


def test_product_weights_choose_the_parametrisation_apart_from_the_path_set():
    torch.manual_seed(0)
    sc = SymmetricContraction(sh_irreps(2, True), [(0, 1)], 64, 3, num_types=4, weights="mace")
    assert sc.path_set == "independent" and sc.weight_form == "mace"
    for _, nu, k0, k, norm in sc.paths:
        assert norm == 1.0 and abs(float(sc.weight.detach()[:, k0:k0 + k].std()) * k - 1.0) < 0.15, (nu, k)
    sc = SymmetricContraction(sh_irreps(2, True), [(0, 1)], 4, 3, num_types=1, paths="mace", weights="normalised")
    assert all(abs(norm - k ** -0.5) < 1e-15 for _, _, _, k, norm in sc.paths)
    with pytest.raises(ValueError, match="weights"):
        SymmetricContraction(sh_irreps(1, True), [(0, 1)], 4, 2, num_types=1, weights="unit")


def test_compat_round_trips_through_a_model_file(tmp_path, rng):
    """A trained compat model (buffers and parameters) is rebuilt from its file exactly."""
    from ase import Atoms

    from mlip.checkpoint import load_model, model_record, save_model_file
    from mlip.data import collate, frame_to_graph, frames_from_atoms_list, TypeMapper
    from mlip.data import keys as K

    torch.manual_seed(0)
    types = ["H", "C", "N", "O"]
    config = dict(architecture="mace", r_max=4.0, channels=4, max_L=1, l_max=2, correlation=3, radial_hidden=8,
                  radial_depth=2, mace_compat=True)
    model = build_model(config, types, torch.float64)
    with torch.no_grad():  # move every parameter off its initial value
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    atoms = Atoms(numbers=rng.choice([1, 6, 7, 8], size=6), positions=rng.normal(size=(6, 3)) * 1.2)
    graph = collate([frame_to_graph(f, TypeMapper(types), 4.0, torch.float64) for f in frames_from_atoms_list([atoms])])
    path = str(tmp_path / "model.pt")
    save_model_file(path, model_record(config, types, "float64", model.state_dict()))
    loaded = load_model(path)
    e0 = model(dict(graph), compute_forces=True)
    e1 = loaded(dict(graph), compute_forces=True)
    assert torch.equal(e0[K.TOTAL_ENERGY], e1[K.TOTAL_ENERGY])
    assert torch.allclose(e0[K.FORCES], e1[K.FORCES], atol=1e-14, rtol=0)


PEER_PYTHON = os.path.join(os.environ.get("MLIP_PEERS", os.path.expanduser("~/.cache/mlip-peers")), "mace", "bin",
                           "python")


def _e3nn_linear(flat, irreps_in, irreps_out, mul_in, mul_out):
    """e3nn's o3.Linear flat weight (one [mul_in, mul_out] block per pair of equal input and
    output irreps, input-major) as mlip's IrrepsLinear weights: per output irrep, the blocks of
    its input copies stacked in input order."""
    blocks, k = {}, 0
    for ir_in in irreps_in:
        for o, ir_out in enumerate(irreps_out):
            if ir_in == ir_out:
                blocks.setdefault(o, []).append(flat[k:k + mul_in * mul_out].reshape(mul_in, mul_out))
                k += mul_in * mul_out
    assert k == flat.numel()
    return [torch.cat(blocks[o], 0) for o in sorted(blocks)]


def _set_linear(linear, flat, irreps_in, irreps_out, mul_in, mul_out):
    weights = _e3nn_linear(flat, irreps_in, irreps_out, mul_in, mul_out)
    assert [w.shape for w in weights] == [p.shape for p in linear.weights]
    for p, w in zip(linear.weights, weights):
        p.copy_(w)


def _load_mace_torch_weights(model, ref, channels, num_types):
    """Copy a mace-torch MACE's weights (``ref``: the arrays of tests/data/mace_torch_model.py)
    into mlip's ``mace_compat`` model of the same settings."""
    state = {k[len("state/"):]: torch.tensor(ref[k]) for k in ref.files if k.startswith("state/")}
    a_irreps = sh_irreps(3, True)
    C, S = channels, num_types
    model.embedding.weight.copy_(state["node_embedding.linear.weight"].reshape(S, C))
    for t, layer in enumerate(model.layers):
        pre, node = f"interactions.{t}.", [tuple(x) for x in ref[f"node_irreps_{t}"]]
        mid = [tuple(x) for x in ref[f"mid_irreps_{t}"]]
        _set_linear(layer.linear_up, state[pre + "linear_up.weight"], node, node, C, C)
        # radial MLP: the last layer's columns go from mace-torch's path order to mlip's
        copy_radial_mlp(layer, [state[pre + f"conv_tp_weights.layer{k}.weight"]
                                for k in range(len(layer.radial_mlp.weights))],
                        [(i1, i2, mid[io][0]) for i1, i2, io in ref[f"instructions_{t}"]], C)
        _set_linear(layer.linear_a, state[pre + "linear.weight"], mid, a_irreps, C, C)
        if layer.species_a is not None:  # first layer: skip_tp maps the A-basis per species
            _set_linear(layer.species_a.linear, state[pre + "skip_tp.weight"], a_irreps, a_irreps, C, S * C)
        if layer.residual is not None:  # later layers: skip_tp is the residual
            _set_linear(layer.residual.linear, state[pre + "skip_tp.weight"], node, layer.out_irreps_list, C, S * C)
        pre, rows = f"products.{t}.", []
        for o, ir in enumerate(layer.out_irreps_list):
            c = pre + f"symmetric_contractions.contractions.{o}."
            weights = {3: state[c + "weights_max"], 2: state[c + "weights.0"], 1: state[c + "weights.1"]}
            for nu in (1, 2, 3):
                u_mine = mace_coupling_paths(a_irreps, nu, ir)
                k = u_mine.shape[-1]
                u_peer = state[c + f"U_matrix_{nu}"].reshape(u_mine.shape)
                # the same paths in the same order; a path may differ in sign (e3nn 0.4 and 0.6
                # choose different signs for some Wigner 3j symbols): its weight then flips too
                sign = torch.where((u_mine - u_peer).reshape(-1, k).abs().amax(0) < 1e-12, 1.0, -1.0)
                assert torch.allclose(u_mine * sign, u_peer, atol=1e-12, rtol=0), (t, ir, nu)
                rows.append(weights[nu] * sign.view(1, k, 1))
        layer.product.weight.copy_(torch.cat(rows, 1))
        _set_linear(layer.linear_out, state[pre + "linear.weight"], layer.out_irreps_list, layer.out_irreps_list,
                    C, C)
    model.layers[0].readout.weight.copy_(state["readouts.0.linear.weight"].reshape(C, 1))
    model.layers[1].readout.w1.copy_(state["readouts.1.linear_1.weight"].reshape(C, -1))
    model.layers[1].readout.w2.copy_(state["readouts.1.linear_2.weight"].reshape(-1, 1))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(PEER_PYTHON), reason="no mace-torch environment (../shared/bench/setup_peers.sh)")
def test_computes_what_mace_torch_computes(tmp_path):
    """mace-torch's weights, loaded into mlip's compat model block by block, give mace-torch's
    energy and forces: the same blocks, parameter counts, normalisations and paths."""
    from ase import Atoms

    from mlip.data import collate, frame_to_graph, frames_from_atoms_list, TypeMapper
    from mlip.data import keys as K

    channels, types = 4, ["H", "C", "N", "O"]
    out = tmp_path / "mace_torch.npz"
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")  # e3nn 0.4 loads its constants by pickle
    script = os.path.join(os.path.dirname(__file__), "data", "mace_torch_model.py")
    run = subprocess.run([PEER_PYTHON, script, str(channels), "0", str(out)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    ref = np.load(out)
    pot = build_model(dict(architecture="mace", r_max=4.0, num_interactions=2, channels=channels, max_L=1, l_max=3,
                           correlation=3, num_bessel=8, cutoff_p=5, radial_hidden=16, radial_depth=3,
                           readout_hidden=16, avg_num_neighbors=3.0, atomic_energy_scales=1.3,
                           atomic_energy_shifts=[-13.6, -1029.0, -1484.0, -2041.0], mace_compat=True),
                      types, torch.float64)
    model = pot.energy_model
    first, second = model.layers
    mine = {
        "node_embedding": model.embedding,
        "interactions.0.linear_up": first.linear_up, "interactions.0.conv_tp_weights": first.radial_mlp,
        "interactions.0.linear": first.linear_a, "interactions.0.skip_tp": first.species_a,
        "products.0.symmetric_contractions": first.product, "products.0.linear": first.linear_out,
        "readouts.0": first.readout,
        "interactions.1.linear_up": second.linear_up, "interactions.1.conv_tp_weights": second.radial_mlp,
        "interactions.1.linear": second.linear_a, "interactions.1.skip_tp": second.residual,
        "products.1.symmetric_contractions": second.product, "products.1.linear": second.linear_out,
        "readouts.1": second.readout,
    }
    numel = {k[len("numel/"):]: int(ref[k]) for k in ref.files if k.startswith("numel/")}
    peer_blocks = {prefix: sum(n for name, n in numel.items() if name.startswith(prefix + ".")) for prefix in mine}
    assert peer_blocks == {prefix: _count(m) for prefix, m in mine.items()}
    assert sum(numel.values()) == _count(pot)

    with torch.no_grad():
        _load_mace_torch_weights(model, ref, channels, len(types))
    atoms = Atoms(numbers=ref["numbers"], positions=ref["positions"])
    graph = collate([frame_to_graph(f, TypeMapper(types), 4.0, torch.float64) for f in frames_from_atoms_list([atoms])])
    result = pot(graph, compute_forces=True)
    energy, forces = float(result[K.TOTAL_ENERGY].detach()), result[K.FORCES].detach().numpy()
    assert abs(energy - float(ref["energy"][0])) < 1e-9  # of -7.6e3 eV: the last digits
    assert float(np.abs(ref["forces"]).max()) > 0.01  # forces of a size that the tolerance below resolves
    np.testing.assert_allclose(forces, ref["forces"], rtol=0, atol=1e-12)
