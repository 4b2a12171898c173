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

_PEER_SCRIPT = r"""
import json, sys
import numpy as np, torch
from e3nn import o3
from mace import modules
from mace.tools import cg
torch.set_default_dtype(torch.float64)
channels = int(sys.argv[1])
model = modules.ScaleShiftMACE(
    r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
    interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
    interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
    num_interactions=2, num_elements=4, hidden_irreps=o3.Irreps(f"{channels}x0e+{channels}x1o"),
    MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(4), avg_num_neighbors=10.0,
    atomic_numbers=[1, 6, 7, 8], correlation=3, gate=torch.nn.functional.silu, radial_MLP=[16, 16, 16],
    atomic_inter_scale=1.0, atomic_inter_shift=0.0)
blocks = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
paths = {}
for out in ["0e", "1o"]:
    for nu in (1, 2, 3):
        u = cg.U_matrix_real(o3.Irreps("0e+1o+2e+3o"), o3.Irreps(out), nu, dtype=torch.float64)[-1]
        paths[f"{out}{nu}"] = u.reshape(-1, u.shape[-1]).tolist()
print(json.dumps({"blocks": blocks, "paths": paths}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(PEER_PYTHON), reason="no mace-torch environment (../shared/bench/setup_peers.sh)")
def test_matches_mace_torch_block_by_block():
    channels = 8
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")  # e3nn 0.4's constants file
    out = subprocess.run([PEER_PYTHON, "-c", _PEER_SCRIPT, str(channels)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    peer = json.loads(out.stdout.strip().splitlines()[-1])
    blocks = peer["blocks"]

    def peer_count(prefix):
        return sum(n for name, n in blocks.items() if name.startswith(prefix + "."))

    model = _mace_model(channels, True).energy_model
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
    assert {prefix: peer_count(prefix) for prefix in mine} == {prefix: _count(m) for prefix, m in mine.items()}
    assert sum(blocks.values()) == _count(model)
    # the same path tensors, in the same order; a path may differ in sign (e3nn 0.4 and 0.6
    # choose different signs for some Wigner 3j symbols)
    a_irreps = sh_irreps(3, True)
    for key, u_peer in peer["paths"].items():
        ir = (0, 1) if key.startswith("0e") else (1, -1)
        u_mine = mace_coupling_paths(a_irreps, int(key[-1]), ir).reshape(-1, len(u_peer[0]))
        u_peer = torch.tensor(u_peer, dtype=torch.float64).reshape(u_mine.shape)
        same = (u_mine - u_peer).abs().amax(0) < 1e-12
        flipped = (u_mine + u_peer).abs().amax(0) < 1e-12
        assert bool((same | flipped).all()), key
