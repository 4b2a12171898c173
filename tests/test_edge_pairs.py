"""Opposite edges grouped into pairs (radial MLP once per pair): the index is right, and the
model gives the same energies, forces, stress and force-loss gradients with and without it."""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from mlip.data import TypeMapper, collate, frame_to_graph, frames_from_atoms_list
from mlip.data import keys as K
from mlip.data.neighbors import edge_pairs, neighbor_list
from mlip.nn import build_model

TYPES = ["H", "C", "O"]
R_MAX = 3.0


def _structures(rng):
    mol = Atoms(numbers=rng.choice([1, 6, 8], size=7), positions=rng.normal(size=(7, 3)) * 1.2)
    cell = np.eye(3) * 3.3 + rng.uniform(-0.3, 0.3, (3, 3))
    crystal = Atoms(numbers=rng.choice([1, 6, 8], size=5), scaled_positions=rng.uniform(0, 1, (5, 3)),
                    cell=cell, pbc=True)
    small = bulk("C", "diamond", a=2.0)  # cell smaller than r_max: atoms see their own images
    small.rattle(0.01, seed=2)
    slab = crystal.copy()
    slab.pbc = [True, True, False]
    return [mol, crystal, small, slab]


def _without_pairs(g):
    return {k: v for k, v in g.items() if k not in (K.EDGE_PAIR, K.PAIR_EDGE)}


def test_pairs_group_each_edge_with_its_reverse(rng):
    for atoms in _structures(rng):
        pos, cell = atoms.positions, atoms.cell.array
        edge_index, shifts = neighbor_list(pos, cell, atoms.pbc, R_MAX)
        edge_pair, pair_edge = edge_pairs(edge_index, shifts)
        n_edges = edge_index.shape[1]
        assert edge_pair.shape == (n_edges,) and edge_pair.dtype == np.int64
        assert np.all(edge_pair[pair_edge] == np.arange(len(pair_edge)))
        counts = np.bincount(edge_pair, minlength=len(pair_edge))
        assert np.all(counts == 2)  # full neighbour list: every edge has its reverse
        vec = pos[edge_index[1]] - pos[edge_index[0]] + shifts @ (cell if atoms.pbc.any() else np.zeros((3, 3)))
        rep = pair_edge[edge_pair]
        mine = rep != np.arange(n_edges)
        # the other edge of the pair is the reverse: swapped endpoints, opposite shift and vector
        np.testing.assert_array_equal(edge_index[:, mine], edge_index[::-1][:, rep[mine]])
        np.testing.assert_array_equal(shifts[mine], -shifts[rep[mine]])
        np.testing.assert_array_equal(np.linalg.norm(vec, axis=1), np.linalg.norm(vec[rep], axis=1))


def test_pairs_without_reverse_and_empty():
    # a half list: no edge has its reverse, each is a pair of its own
    edge_index = np.array([[0, 0, 1], [1, 2, 2]])
    shifts = np.zeros((3, 3), dtype=np.int64)
    edge_pair, pair_edge = edge_pairs(edge_index, shifts)
    assert sorted(edge_pair.tolist()) == [0, 1, 2] and np.all(edge_pair[pair_edge] == np.arange(3))
    # self-images: (0, 0, S) and (0, 0, -S) pair up
    edge_index = np.array([[0, 0, 0, 0], [0, 0, 0, 0]])
    shifts = np.array([[1, 0, 0], [-1, 0, 0], [0, -1, 1], [0, 1, -1]])
    edge_pair, _ = edge_pairs(edge_index, shifts)
    assert edge_pair[0] == edge_pair[1] and edge_pair[2] == edge_pair[3] and edge_pair[0] != edge_pair[2]
    edge_pair, pair_edge = edge_pairs(np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3)))
    assert edge_pair.shape == (0,) and pair_edge.shape == (0,)


def test_collate_offsets_pairs(rng):
    tm = TypeMapper(TYPES)
    graphs = [frame_to_graph(f, tm, R_MAX) for f in frames_from_atoms_list(_structures(rng))]
    batch = collate(graphs)
    ei, ep, pe = batch[K.EDGE_INDEX], batch[K.EDGE_PAIR], batch[K.PAIR_EDGE]
    assert ep.shape[0] == ei.shape[1] and int(ep.max()) == pe.shape[0] - 1
    assert torch.equal(ep[pe], torch.arange(pe.shape[0]))
    # both edges of a pair join the same two atoms
    a, b = ei[:, pe[ep]], ei
    assert torch.equal(torch.sort(a, dim=0).values, torch.sort(b, dim=0).values)
    # a batch where one graph lacks the index drops it (the model then works per edge)
    mixed = collate([graphs[0], _without_pairs(graphs[1])])
    assert K.EDGE_PAIR not in mixed and K.PAIR_EDGE not in mixed


MODELS = {
    "nequip": dict(architecture="nequip", num_layers=2, channels=6),
    "mace": dict(architecture="mace", num_interactions=2, channels=6, max_L=1, correlation=2, radial_hidden=8),
}


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("parity,l_max", [(True, 2), (False, 1)])
def test_pair_path_equals_per_edge_path(rng, arch, parity, l_max):
    """Every architecture reads the pairing (radial MLPs once per pair) with the same results."""
    torch.manual_seed(0)
    model = build_model(dict(MODELS[arch], l_max=l_max, parity=parity, r_max=R_MAX, avg_num_neighbors=4.0),
                        TYPES, torch.float64)
    if arch == "mace":  # the pairing must actually be used: count the rows the radial MLPs see
        rows = []
        for layer in model.energy_model.layers:
            layer.radial_mlp.register_forward_hook(lambda m, inp, out: rows.append(inp[0].shape[0]))
    tm = TypeMapper(TYPES)
    graphs = [frame_to_graph(f, tm, R_MAX) for f in frames_from_atoms_list(_structures(rng))]
    batch = collate(graphs)
    assert K.EDGE_PAIR in batch
    outs = []
    for g in (batch, _without_pairs(batch)):
        model.zero_grad(set_to_none=True)
        out = model(g, compute_forces=True, compute_stress=True, training=True)
        loss = out[K.TOTAL_ENERGY].pow(2).sum() + out[K.FORCES].pow(2).sum() + out[K.STRESS].pow(2).sum()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        outs.append(({k: out[k].detach() for k in (K.TOTAL_ENERGY, K.FORCES, K.STRESS)}, grads))
    (paired, g_paired), (per_edge, g_per_edge) = outs
    if arch == "mace":
        n_layers = len(model.energy_model.layers)
        assert rows[:n_layers] == [batch[K.PAIR_EDGE].shape[0]] * n_layers
        assert rows[n_layers:] == [batch[K.EDGE_INDEX].shape[1]] * n_layers
    for k in paired:
        torch.testing.assert_close(paired[k], per_edge[k], rtol=1e-10, atol=1e-10)
    assert len(g_paired) == len(g_per_edge)
    for a, b in zip(g_paired, g_per_edge):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("script", [False, True])
def test_contract_model_with_and_without_pairs(tmp_path, script):
    """The LAMMPS/ASE wrapper takes the pairing when given (ASE) and works without it (LAMMPS)."""
    from test_deploy_common import make_checkpoint, triclinic

    from mlip.deploy.calculator import MLIPCalculator

    calc = MLIPCalculator(make_checkpoint(tmp_path / "m.pth", dtype="float64", seed=3), script=script)
    loaded = calc.models[0]
    data = calc.inputs(triclinic(seed=1), loaded)
    assert "edge_pair" in data and "pair_edge" in data
    with_pairs = loaded.module(data)
    without = loaded.module({k: v for k, v in data.items() if k not in ("edge_pair", "pair_edge")})
    for key in ("total_energy", "atomic_energy", "forces", "virial"):
        torch.testing.assert_close(with_pairs[key], without[key], rtol=1e-10, atol=1e-10)
