"""``mace_compat``: mace-torch's path set for the symmetric contraction, its block structure and
its parameter count (issue 21). The physics suite (tests/test_physics.py) runs a compat variant
too; the last test compares with mace-torch itself when its environment is installed."""
import importlib.util
import itertools
import json
import os
import subprocess
import sys
from typing import Dict, List

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


def _mace_model(channels, compat, types=("H", "C", "N", "O"), **extra):
    return build_model(dict(architecture="mace", r_max=5.0, num_interactions=2, num_channels=channels, max_L=1,
                            max_ell=3, correlation=3, num_radial_basis=8, num_cutoff_basis=5,
                            radial_MLP=[16, 16, 16], readout_hidden=16, mace_compat=compat, **extra), list(types),
                       torch.float64)


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_compat_adds_exactly_mace_torchs_blocks():
    """The parameter difference to mlip's leanest MACE (the independent product basis) is the
    first layer's per-species map of the A-basis, the redundant paths, minus the Bessel
    frequencies and the energy offset that mace-torch fixes."""
    channels, species = 8, 4
    default, compat = _mace_model(channels, False, product_paths="independent"), _mace_model(channels, True)
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
    for name, extra in {"default": {"product_paths": "independent"}, "paths": {"product_paths": "mace"},
                        "map": {"product_paths": "independent", "first_layer_species_map": True},
                        "new-default": {},
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
    assert counts["new-default"] == counts["paths"]  # mace-torch's path set is the default (defaults version 2)
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


PEER_TYPES = ["H", "C", "N", "O"]
PEER_E0S = [-13.6, -1029.0, -1484.0, -2041.0]  # mace_torch_model.py's atomic_energies, per type


def _run_peer_script(name: str, argv: List[str]) -> None:
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")  # e3nn 0.4 loads its constants by pickle
    script = os.path.join(os.path.dirname(__file__), "data", name)
    run = subprocess.run([PEER_PYTHON, script, *argv], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def _compat_potential(channels: int) -> torch.nn.Module:
    """mlip's compat model with mace_torch_model.py's hyperparameters, scale and shifts."""
    return build_model(dict(architecture="mace", r_max=4.0, num_interactions=2, channels=channels, max_L=1, l_max=3,
                            correlation=3, num_bessel=8, cutoff_p=5, radial_hidden=16, radial_depth=3,
                            readout_hidden=16, avg_num_neighbors=3.0, atomic_energy_scales=1.3,
                            atomic_energy_shifts=PEER_E0S, mace_compat=True), PEER_TYPES, torch.float64)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(PEER_PYTHON), reason="no mace-torch environment (../shared/bench/setup_peers.sh)")
def test_computes_what_mace_torch_computes(tmp_path):
    """mace-torch's weights, loaded into mlip's compat model block by block, give mace-torch's
    energy and forces: the same blocks, parameter counts, normalisations and paths."""
    from ase import Atoms

    from mlip.data import collate, frame_to_graph, frames_from_atoms_list, TypeMapper
    from mlip.data import keys as K

    channels, types = 4, PEER_TYPES
    out = tmp_path / "mace_torch.npz"
    _run_peer_script("mace_torch_model.py", [str(channels), "0", str(out)])
    ref = np.load(out)
    pot = _compat_potential(channels)
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


def _compare_peers():
    """scripts/compare_peers.py as a module (its Settings and translations into both programs)."""
    if "compare_peers" not in sys.modules:
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "compare_peers.py")
        spec = importlib.util.spec_from_file_location("compare_peers", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["compare_peers"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["compare_peers"]


def _molecules(rng: np.random.Generator, count: int) -> list:
    """Small random molecules (4-7 atoms of H, C, N, O, no two closer than 0.9 A) with made-up but
    fixed labels: both programs read the same file, so the labels need not be physical. Every
    fourth has forces ten times larger, so that some batches' gradients are clipped (norm > 10)
    and some are not."""
    from ase import Atoms

    out = []
    while len(out) < count:
        n = int(rng.integers(4, 8))
        pos = rng.normal(size=(n, 3)) * 1.2
        if min(np.linalg.norm(pos[i] - pos[j]) for i in range(n) for j in range(i)) < 0.9:
            continue
        numbers = rng.choice([1, 6, 7, 8], size=n)
        atoms = Atoms(numbers=numbers, positions=pos)
        e0 = sum(PEER_E0S[[1, 6, 7, 8].index(int(z))] for z in numbers)
        atoms.info["REF_energy"] = e0 + float(rng.normal()) * n * 0.1
        atoms.arrays["REF_forces"] = rng.normal(size=(n, 3)) * (5.0 if len(out) % 4 == 0 else 0.5)
        out.append(atoms)
    return out


class _Snapshot:
    """The arrays of mace_torch_steps.py with the weights of one snapshot (``grad0/``, ``step1/``,
    ``final/``, ``ema/``) as their ``state/``, for ``_load_mace_torch_weights``."""

    def __init__(self, ref, prefix: str):
        self.ref, self.prefix = ref, prefix
        self.files = ["state/" + k[len(prefix):] for k in ref.files if k.startswith(prefix)]

    def __getitem__(self, key: str):
        return self.ref[self.prefix + key[len("state/"):]] if key.startswith("state/") else self.ref[key]


def _peer_tensors(ref, prefix: str, channels: int) -> Dict[str, torch.Tensor]:
    """A snapshot of mace-torch's weights (or gradients: the copy is linear, signs and
    permutations only) in mlip's layout, by parameter name."""
    pot = _compat_potential(channels)
    with torch.no_grad():
        _load_mace_torch_weights(pot.energy_model, _Snapshot(ref, prefix), channels, len(PEER_TYPES))
    return {name: p.detach().clone() for name, p in pot.named_parameters() if p.requires_grad}


def _max_rel(mine: Dict[str, torch.Tensor], peer: Dict[str, torch.Tensor]) -> float:
    """max over parameter tensors of max|mine - peer| / max|peer|."""
    assert mine.keys() == peer.keys()
    return max(float((mine[k] - peer[k]).abs().max() / peer[k].abs().max().clamp_min(1e-300)) for k in peer)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(PEER_PYTHON), reason="no mace-torch environment (../shared/bench/setup_peers.sh)")
def test_trains_as_mace_torch_trains(tmp_path, monkeypatch):
    """From the same initial weights, on the same batches in the same order, mlip's training
    machinery (loss, optimiser, clipping, EMA, each built from the config that
    scripts/compare_peers.py writes) takes the steps that mace-torch's takes (its loss, parameter
    groups and AMSGrad, take_step's clipping and torch_ema, built from compare_peers' mace_run_train
    arguments): per-step losses and gradient norms, the gradients of the first step, the weights
    after it and at the end, and the raw and EMA models' predictions on held-out molecules."""
    import ase.io

    from mlip.data import collate, frame_to_graph, frames_from_atoms_list, TypeMapper
    from mlip.data import keys as K
    from mlip.data.frames import LabelKeys
    from mlip.train.config import validate
    from mlip.train.distributed import SINGLE
    from mlip.train.ema import EMA
    from mlip.train.loss import compute_loss, stage_loss_weights
    from mlip.train.model_setup import StepModel
    from mlip.train.schedule import LRSchedule, make_optimizer
    from mlip.train.step import train_step

    cp = _compare_peers()
    channels, batch_size, train_count = 4, 3, 18
    rng = np.random.default_rng(7)
    train_atoms, held_atoms = _molecules(rng, train_count), _molecules(rng, 3)
    paths = {"train": str(tmp_path / "train.xyz"), "held_out": str(tmp_path / "held_out.xyz")}
    ase.io.write(paths["train"], train_atoms, format="extxyz")
    ase.io.write(paths["held_out"], held_atoms, format="extxyz")
    # two epochs of 6 batches, the second in another order: 12 steps
    order = list(range(train_count)) + [int(i) for i in rng.permutation(train_count)]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    per_epoch = train_count // batch_size

    # one Settings, translated into both programs' training settings as compare_peers does
    # (lr 0.01, AMSGrad, no weight decay, clip 10, EMA 0.99, loss weights 1 per atom / 100)
    settings = cp.Settings(batch_size=batch_size)
    files = {"train": paths["train"], "valid": paths["held_out"], "e0s": dict(zip(PEER_TYPES, PEER_E0S))}
    spec = {"channels": channels, "seed": 0, "batches": batches, **paths,
            "mace_args": cp.mace_args(settings, files, 0, 2, str(tmp_path / "mace"), stage_two=False)}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "mace_torch_steps.npz"
    _run_peer_script("mace_torch_steps.py", [str(tmp_path / "spec.json"), str(out)])
    ref = np.load(out)
    cfg = validate(cp.mlip_config(settings, files, 0, 2, str(tmp_path / "mlip"), stage_two=False), check_files=False)

    # mlip's model with mace-torch's initial weights
    pot = _compat_potential(channels)
    with torch.no_grad():
        _load_mace_torch_weights(pot.energy_model, ref, channels, len(PEER_TYPES))
    keys = LabelKeys(energy=cfg["data"]["keys"]["energy"], forces=cfg["data"]["keys"]["forces"])

    def graphs(path: str) -> list:
        return [frame_to_graph(f, TypeMapper(PEER_TYPES), 4.0, torch.float64)
                for f in frames_from_atoms_list(ase.io.read(path, ":"), keys)]

    train, held = graphs(paths["train"]), collate(graphs(paths["held_out"]))

    # the trainer's pieces (mlip/train/trainer.py: _setup_data_and_model, _setup_optim, train_epoch)
    weights, lc = stage_loss_weights(cfg["loss"], cfg["stage_two"], 1), cfg["loss"]

    def loss_fn(out, batch, counts=None):
        return compute_loss(out, batch, weights, lc["energy_per_atom"], lc["type"], lc["huber_delta"], counts=counts)

    params = [p for p in pot.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg["optim"])
    schedule = LRSchedule(cfg["schedule"], cfg["optim"]["lr"], per_epoch, cfg["optim"]["max_epochs"])
    ema = EMA(pot, cfg["ema"]["decay"])
    norms: List[float] = []
    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(*a, **k):  # train_step keeps the norm to itself
        norm = clip(*a, **k)
        norms.append(float(norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    losses: List[float] = []
    pot.train()
    for step, idx in enumerate(batches):
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr(step // per_epoch, step)
        outcome = train_step(StepModel(pot), collate([train[i] for i in idx]), loss_fn, optimizer, params, idx,
                             False, cfg["optim"]["clip_grad_norm"], SINGLE)
        ema.update(pot)
        losses.append(outcome.loss)
        if step == 0:
            grads0 = {n: p.grad.detach().clone() for n, p in pot.named_parameters() if p.requires_grad}
            weights1 = {n: p.detach().clone() for n, p in pot.named_parameters() if p.requires_grad}
    monkeypatch.undo()

    peer_loss, peer_norm = ref["loss"], ref["grad_norm"]
    rel_loss = np.abs(np.array(losses) - peer_loss) / np.abs(peer_loss)
    rel_norm = np.abs(np.array(norms) - peer_norm) / np.abs(peer_norm)
    raw, averaged = pot(held, compute_forces=True), ema.model(held, compute_forces=True)
    final = {n: p.detach() for n, p in pot.named_parameters() if p.requires_grad}
    # the EMA copy's parameters do not require grad: select them by the trained names
    ema_weights = {n: p.detach() for n, p in ema.model.named_parameters() if n in final}
    report = {"grad0": _max_rel(grads0, _peer_tensors(ref, "grad0/", channels)),
              "step1": _max_rel(weights1, _peer_tensors(ref, "step1/", channels)),
              "final": _max_rel(final, _peer_tensors(ref, "final/", channels)),
              "ema": _max_rel(ema_weights, _peer_tensors(ref, "ema/", channels))}
    for name, mine in (("raw", raw), ("ema", averaged)):  # held-out predictions (eV, eV/A)
        report[f"{name}_energy"] = float(np.abs(mine[K.TOTAL_ENERGY].detach().numpy() - ref[f"{name}_energy"]).max())
        report[f"{name}_forces"] = float(np.abs(mine[K.FORCES].detach().numpy() - ref[f"{name}_forces"]).max())
    print("step  loss mlip            loss mace-torch      rel diff   grad norm mlip / mace-torch")
    for s, (a, b, r, na, nb) in enumerate(zip(losses, peer_loss, rel_loss, norms, peer_norm)):
        print(f"{s:>4d}  {a:<20.15g} {b:<20.15g} {r:8.1e}   {na:.12g} / {nb:.12g}")
    print(json.dumps(report, indent=1))

    assert len(losses) == len(peer_loss) == len(norms) == len(peer_norm) == len(batches)
    assert np.all(ref["lr"] == cfg["optim"]["lr"])
    clip_at = cfg["optim"]["clip_grad_norm"]
    assert min(peer_norm) < clip_at < max(peer_norm)  # steps with and without clipping
    # Tolerances. Both programs compute in float64 the same arithmetic in other orders (e3nn's and
    # mlip's contractions), so the loss, the gradients and their norm agree to a few ulp (~1e-15
    # relative). Adam divides each gradient entry by its own running RMS, which turns an entry's
    # rounding error (an ulp of the tensor's largest entry) into a relative error of its step: the
    # weights agree to ~1e-13 after the first step and ~1e-12 after twelve (no chaotic growth over
    # so few steps). A real difference of the loops is many orders larger: Adam eps 1e-7 instead of
    # 1e-8, no AMSGrad, a weight decay of 1e-6 or the EMA warm-up one step ahead each move the
    # losses by >= 1e-7 relative or the (EMA) weights by >= 3e-5 in this very test. The bounds
    # below leave >= 100x headroom over the rounding seen and stay >= 1000x under those.
    assert float(rel_loss.max()) < 1e-12 and float(rel_norm.max()) < 1e-12
    assert report["grad0"] < 1e-12  # the loss definition and backward: step 0's (clipped) gradients
    assert report["step1"] < 1e-10  # the first update (optimiser, clipping)
    assert report["final"] < 1e-9 and report["ema"] < 1e-9  # twelve updates and the EMA warm-up
    for what in ("raw", "ema"):
        assert report[f"{what}_energy"] < 1e-9  # eV, of totals around -6e3 eV (an ulp is 1e-12)
        assert report[f"{what}_forces"] < 1e-12  # eV/A
