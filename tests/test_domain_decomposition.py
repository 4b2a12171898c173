"""Message-passing models under LAMMPS ``pair_style allegro`` (domain decomposition, issue #17).

The exported model (TorchScript, as ``mlip export`` writes it) is given what each MPI rank of an
emulated LAMMPS run gives it (tests/test_deploy_common.allegro_rank_inputs: local atoms, ghost
images, edges from local atoms only, no cell); LAMMPS' reduction (local energies summed, ghost
forces sent to their owners, virials summed) must equal the whole periodic cell computed at once,
for 1 to 8 ranks, NequIP and MACE bodies of 1 to 3 layers, to float64 rounding. The real LAMMPS
runs are in tests/test_lammps_real.py (marker ``lammps``).
"""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from test_deploy_common import (TINY_CONFIG, TINY_MACE_CONFIG, TYPE_NAMES, allegro_rank_inputs, allegro_reduce, lammps_emulated_inputs,
                                lammps_frame, triclinic)

MODELS = {
    "nequip-2": TINY_CONFIG,
    "nequip-1": dict(TINY_CONFIG, num_layers=1),
    "nequip-3": dict(TINY_CONFIG, num_layers=3),
    "mace-2": TINY_MACE_CONFIG,
}


def _scripted(config, seed=0):
    from mlip.deploy.export import script_model
    from mlip.nn import build_model

    torch.manual_seed(seed)
    potential = build_model(config, TYPE_NAMES, torch.float64).eval()
    return potential, script_model(potential)


def _crystal(seed=0):
    """54 atoms of a rattled Si/C diamond lattice in its triclinic primitive cell, 3x3x3."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Si", "diamond", a=4.9) * (3, 3, 3)
    symbols = np.array(atoms.get_chemical_symbols())
    symbols[rng.permutation(len(atoms))[:18]] = "C"
    atoms.set_chemical_symbols(symbols.tolist())
    atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    return atoms


def _whole(potential, atoms):
    """Energy, forces and virial of the whole periodic cell in LAMMPS' frame (the reference)."""
    from mlip.deploy.calculator import MLIPCalculator

    lower, x, _ = lammps_frame(atoms)
    frame = Atoms(atoms.get_chemical_symbols(), positions=x, cell=lower, pbc=True)
    frame.calc = MLIPCalculator(potential)
    energy = frame.get_potential_energy()
    virial = -frame.get_volume() * frame.get_stress(voigt=False)
    return energy, frame.get_forces(), virial


def _ranks(module, atoms, cutoff, grid):
    ranks, _ = allegro_rank_inputs(atoms, cutoff, grid, TYPE_NAMES)
    outputs = [module(dict(inputs)) for inputs, _, _ in ranks]
    return allegro_reduce(outputs, ranks, len(atoms)), ranks


def _assert_ranks_sum_to(module, atoms, cutoff, grids, energy, forces, virial):
    """For each grid of ranks, LAMMPS' reduction equals the whole cell's answers."""
    for grid in grids:
        (e, f, v), _ = _ranks(module, atoms, cutoff, grid)
        assert e == pytest.approx(energy, rel=1e-13)
        np.testing.assert_allclose(f, forces, rtol=0, atol=1e-10)
        np.testing.assert_allclose(v, virial, rtol=0, atol=1e-10)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("grid", [(1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2)], ids=["1", "2", "4", "8"])
def test_ranks_sum_to_the_whole_cell(model, grid):
    potential, module = _scripted(MODELS[model])
    atoms = _crystal()
    energy, forces, virial = _whole(potential, atoms)
    # the ghost shell LAMMPS builds from the exported metadata: layers x cutoff
    cutoff = potential.num_message_layers * potential.r_max
    (e, f, v), ranks = _ranks(module, atoms, cutoff, grid)
    assert sum(nlocal for _, _, nlocal in ranks) == len(atoms)
    assert e == pytest.approx(energy, rel=1e-13, abs=1e-10)
    np.testing.assert_allclose(f, forces, rtol=0, atol=1e-10)
    np.testing.assert_allclose(v, virial, rtol=0, atol=1e-10)
    assert np.abs(forces).max() > 1e-3 and np.abs(virial).max() > 1e-3  # not trivially zero


def test_a_thinner_ghost_shell_gives_different_answers():
    """The control: with ghosts only within one cutoff (what a plain neighbour list would hold),
    a two-layer model's energy and forces come out wrong, so the tests above can fail."""
    potential, module = _scripted(TINY_CONFIG)
    atoms = _crystal()
    energy, forces, _ = _whole(potential, atoms)
    (e, f, _), _ = _ranks(module, atoms, potential.r_max, (2, 1, 1))
    assert abs(e - energy) > 1e-6 or np.abs(f - forces).max() > 1e-6


def test_triclinic_small_cell_on_one_and_two_ranks():
    """A skewed cell narrower than the cutoff: atoms meet several images of themselves as ghosts."""
    potential, module = _scripted(TINY_CONFIG, seed=2)
    atoms = triclinic(seed=1) * (2, 1, 1)
    energy, forces, virial = _whole(potential, atoms)
    _assert_ranks_sum_to(module, atoms, 2 * potential.r_max, ((1, 1, 1), (2, 1, 1)), energy, forces, virial)


def test_one_rank_graph_keeps_only_what_reaches_local_atoms():
    """The rank's own graph: edges of the model's cutoff, receivers within (L-1) cutoffs of a
    local atom and all their edges, the atoms at an end of an edge; the local atoms are those
    the plugin's edges start from."""
    from mlip.deploy.domain import domain_graph

    atoms = _crystal()
    r = 3.5
    (inputs, owner, nlocal), = allegro_rank_inputs(atoms, 2 * r, (2, 1, 1), TYPE_NAMES)[0][:1]
    pos = inputs["pos"]
    nodes, edges, counted = domain_graph(pos, inputs["edge_index"], r, 2)
    assert bool((nodes[1:] > nodes[:-1]).all()) and len(nodes) < len(pos)
    assert (nodes[:nlocal] == torch.arange(nlocal)).all()
    assert counted[:nlocal].all() and not counted[nlocal:].any()
    # edges into counted atoms lead (the last layer takes only them: keys.LAST_LAYER_EDGES)
    into_counted = counted[edges[0]]
    k = int(into_counted.sum())
    assert 0 < k < edges.shape[1] and bool(into_counted[:k].all())
    edges = nodes[edges]  # back to the rank's numbering
    length = (pos[edges[1]] - pos[edges[0]]).norm(dim=-1)
    assert float(length.max()) <= r
    # receivers: within one cutoff of a local atom; every such node has all its edges
    near = torch.cdist(pos, pos[:nlocal]).min(dim=1).values <= r
    assert near[edges[0]].all()
    full = torch.cdist(pos, pos) <= r
    full.fill_diagonal_(False)
    for k in torch.nonzero(near).view(-1)[::7].tolist():
        assert set(edges[1][edges[0] == k].tolist()) == set(torch.nonzero(full[k]).view(-1).tolist())
    assert set(nodes.tolist()) == set(edges.view(-1).tolist()) | set(range(nlocal))


def test_atoms_without_neighbours_get_the_isolated_energy():
    """A rank holds local atoms with no neighbour (a gas) and ghosts it need not compute: their
    energies are the isolated atom's, and the sum over ranks is still the whole cell's."""
    potential, module = _scripted(TINY_CONFIG, seed=4)
    cluster = triclinic(seed=2)
    atoms = Atoms(cluster.get_chemical_symbols() + ["C", "Si"],
                  positions=np.concatenate([cluster.positions + 3.0, [[15.0, 15.0, 3.0], [3.0, 16.0, 15.0]]]),
                  cell=np.diag([22.0, 21.0, 20.0]), pbc=True)
    energy, forces, virial = _whole(potential, atoms)
    _assert_ranks_sum_to(module, atoms, 2 * potential.r_max, ((1, 1, 1), (2, 2, 1)), energy, forces, virial)


def test_radius_graph_matches_vesin(rng):
    import vesin

    from mlip.deploy.domain import radius_graph

    scripted = torch.jit.script(radius_graph)
    for n, box in [(0, 5.0), (1, 5.0), (2, 1.0), (40, 6.0), (500, 15.0), (300, 200.0)]:
        points = rng.uniform(0, box, size=(n, 3))
        for fn in (radius_graph, scripted):
            edges = fn(torch.tensor(points), 3.0, None, 128)
            assert edges.shape[0] == 2 and bool((edges[0][1:] >= edges[0][:-1]).all())
            ours = set(map(tuple, edges.T.tolist()))
            assert len(ours) == edges.shape[1]
            if n < 2:
                assert not ours
                continue
            i, j = vesin.NeighborList(cutoff=3.0, full_list=True).compute(
                points=points, box=np.zeros((3, 3)), periodic=False, quantities="ij")
            assert ours == set(zip(i.tolist(), j.tolist()))
            # some centres only: their edges, all of them
            centres = torch.arange(0, n, 3)
            some = fn(torch.tensor(points), 3.0, centres, 64)
            assert set(map(tuple, some.T.tolist())) == {(a, b) for a, b in ours if a % 3 == 0}


def test_edges_beyond_the_cutoff_are_dropped_under_pair_style_nequip():
    """pair_style nequip's neighbour list now reaches the interaction range; the network still
    sees only its own cutoff's edges: same outputs as inputs built with the cutoff."""
    from test_deploy_common import lammps_outputs

    potential, module = _scripted(TINY_CONFIG)
    atoms = triclinic(seed=4)
    near, _ = lammps_emulated_inputs(atoms, potential.r_max, ["Si", "C"], TYPE_NAMES, seed=1)
    far, _ = lammps_emulated_inputs(atoms, 2 * potential.r_max, ["Si", "C"], TYPE_NAMES, seed=1)
    assert far["edge_index"].shape[1] > 2 * near["edge_index"].shape[1]
    a, b = lammps_outputs(module(near)), lammps_outputs(module(far))
    assert b["energy"] == pytest.approx(a["energy"], rel=1e-13)
    np.testing.assert_allclose(b["forces"], a["forces"], rtol=0, atol=1e-11)
    np.testing.assert_allclose(b["virial"], a["virial"], rtol=0, atol=1e-11)


def test_heads_stay_out_of_a_rank():
    """A rank holds part of a structure: a model with a dipole head returns no dipole there."""
    potential, module = _scripted(dict(TINY_CONFIG, dipole=True))
    (inputs, _, _), = allegro_rank_inputs(_crystal(), 7.0, (1, 1, 1), TYPE_NAMES)[0][:1]
    out = module(dict(inputs))
    assert "dipole" not in out and "forces" in out


def _bad(inputs, **change):
    bad = dict(inputs)
    for key, value in change.items():
        if value is None:
            bad.pop(key)
        else:
            bad[key] = value
    return bad


def test_inputs_outside_the_contract_are_refused():
    """Missing keys, wrong shapes, types out of range (an unmapped LAMMPS type reads -1), edges
    naming absent atoms, non-finite positions, a cell without shifts: a one-line error."""
    _, module = _scripted(TINY_CONFIG)
    inputs, _ = lammps_emulated_inputs(triclinic(), 3.5, ["Si", "C"], TYPE_NAMES)
    module(dict(inputs))
    pos = inputs["pos"].clone()
    pos[2, 1] = float("nan")
    types = inputs["atom_types"].clone()
    n = len(types)
    cases = {
        "no 'pos'": _bad(inputs, pos=None),
        "must be a floating \\[N, 3\\]": _bad(inputs, pos=inputs["pos"][:, :2]),
        "position of atom 2 .* NaN": _bad(inputs, pos=pos),
        "atom type -1 is not one of the model's types 0..1 \\(Si C\\)": _bad(inputs, atom_types=types - 1),
        "atom type 2 is not": _bad(inputs, atom_types=types.clamp(min=1) + 1),
        "one integer per atom": _bad(inputs, atom_types=types[:-1]),
        f"names atoms outside 0..{n - 1}": _bad(inputs, edge_index=inputs["edge_index"] + 1),
        "come together": _bad(inputs, edge_cell_shift=None),
        "'edge_cell_shift' must be \\[E, 3\\]": _bad(inputs, edge_cell_shift=inputs["edge_cell_shift"][1:]),
    }
    for message, bad in cases.items():
        with pytest.raises((RuntimeError, torch.jit.Error), match=message):
            module(bad)


def test_single_rank_export_refuses_pair_style_allegro(tmp_path):
    """`mlip export --single-rank`: LAMMPS' cutoff is the network's own (no ghost shell), the
    file runs pair_style nequip's inputs and refuses a rank's inputs with a clear message."""
    from test_deploy_common import make_checkpoint

    from mlip.cli import main

    ckpt = make_checkpoint(tmp_path / "m.pth", dtype="float64", seed=5)
    both, one = str(tmp_path / "both.nequip.pth"), str(tmp_path / "one.nequip.pth")
    assert main(["export", ckpt, "-o", both]) == 0
    assert main(["export", ckpt, "-o", one, "--single-rank"]) == 0
    metadata = {}
    for path in (both, one):
        extra = {"r_max": "", "model_r_max": ""}
        metadata[path] = (torch.jit.load(path, _extra_files=extra), {k: float(v) for k, v in extra.items()})
    (module_both, meta_both), (module_one, meta_one) = metadata[both], metadata[one]
    r = TINY_CONFIG["r_max"]
    assert meta_one == {"r_max": r, "model_r_max": r} and meta_both == {"r_max": 2 * r, "model_r_max": r}
    inputs, _ = lammps_emulated_inputs(triclinic(), r, ["Si", "C"], TYPE_NAMES)
    a, b = module_one(dict(inputs)), module_both(dict(inputs))
    torch.testing.assert_close(a["forces"], b["forces"], rtol=0, atol=0)
    (rank, _, _), = allegro_rank_inputs(_crystal(), 2 * r, (1, 1, 1), TYPE_NAMES)[0][:1]
    module_both(dict(rank))
    with pytest.raises((RuntimeError, torch.jit.Error), match="exported with --single-rank"):
        module_one(dict(rank))
