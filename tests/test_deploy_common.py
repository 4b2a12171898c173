"""Shared helpers for the deployment tests (export, calculator, check): tiny checkpoints,
structures, and an emulation of what LAMMPS' pair_style nequip feeds the model.

Imported by the other test_deploy/test_export/test_calculator/test_check modules; the one test
here checks the emulated neighbour list against mlip's own.
"""
import itertools
import math
import os

import numpy as np
import pytest
import torch
from ase import Atoms

TYPE_NAMES = ["Si", "C"]
TINY_CONFIG = dict(architecture="nequip", r_max=3.5, num_layers=2, channels=4, l_max=1, num_bessel=4,
                   radial_hidden=8, readout_hidden=4, avg_num_neighbors=8.0,
                   atomic_energy_scales=[0.7, 1.3], atomic_energy_shifts=[-160.0, -5.5])
TINY_MACE_CONFIG = dict(architecture="mace", r_max=3.5, num_interactions=2, channels=4, max_L=1, l_max=2,
                        correlation=2, num_bessel=4, radial_hidden=8, readout_hidden=4, avg_num_neighbors=8.0,
                        atomic_energy_scales=[0.7, 1.3], atomic_energy_shifts=[-160.0, -5.5])


def make_checkpoint(path, dtype="float64", seed=0, type_names=TYPE_NAMES, config=None, ema_seed=None):
    """Write a model file with random weights (and optionally different EMA weights)."""
    from mlip.checkpoint import model_record, save_model_file
    from mlip.nn import build_model

    config = dict(config or TINY_CONFIG)
    torch.manual_seed(seed)
    model = build_model(config, type_names, dtype)
    extra = None
    if ema_seed is not None:
        torch.manual_seed(ema_seed)
        ema = build_model(config, type_names, dtype)
        extra = {"ema_state_dict": {k: v.detach().clone() for k, v in ema.state_dict().items()}}
    save_model_file(str(path), model_record(config, type_names, dtype, model.state_dict()), extra)
    return str(path)


def molecule(seed=0, n=7):
    rng = np.random.default_rng(seed)
    pos = [np.zeros(3)]
    while len(pos) < n:
        cand = pos[rng.integers(len(pos))] + _unit(rng) * rng.uniform(1.6, 2.6)
        if min(np.linalg.norm(cand - p) for p in pos) > 1.5:
            pos.append(cand)
    return Atoms([TYPE_NAMES[i % 2] if i % 3 else "C" for i in range(n)], positions=np.array(pos))


def triclinic(seed=0, a=3.4):
    """A small skewed cell (widths below 2 r_max: atoms see several images of themselves)."""
    rng = np.random.default_rng(seed)
    cell = a * np.array([[1.0, 0.05, -0.03], [0.3, 0.93, 0.02], [-0.2, 0.25, 0.95]])
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0.1], [0.45, 0.0, 0.5], [0.05, 0.5, 0.55], [0.75, 0.25, 0.75]])
    atoms = Atoms(["Si", "C", "Si", "Si", "C"], scaled_positions=frac, cell=cell, pbc=True)
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def _unit(rng):
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def python_model_outputs(model, atoms):
    """Reference: the in-Python Potential on mlip's own graph of ``atoms``."""
    from mlip.data.frames import frames_from_atoms_list
    from mlip.data.graph import TypeMapper, frame_to_graph

    dtype = next(model.parameters()).dtype
    g = frame_to_graph(frames_from_atoms_list([atoms])[0], TypeMapper(model.type_names), model.r_max, dtype)
    out = model(g, compute_forces=True, compute_stress=True)
    return {k: v.detach().to(torch.float64) for k, v in out.items()}, g


def contract_inputs(graph):
    """The plugin's five inputs from an mlip graph (float64 floats, int64 ints)."""
    return {"pos": graph["pos"].to(torch.float64), "edge_index": graph["edge_index"].to(torch.int64),
            "atom_types": graph["atom_types"].to(torch.int64),
            "edge_cell_shift": graph["edge_cell_shift"].to(torch.float64),
            "cell": graph["cell"].to(torch.float64).view(1, 3, 3)}


# ---------------------------------------------------------------------------------------------
# LAMMPS emulation: what pair_nequip_allegro.cpp (pair_style nequip, newton off) builds


def lammps_frame(atoms):
    """Rotate ``atoms`` into LAMMPS' lower-triangular box and wrap positions into it.

    Returns (cell L, wrapped positions, rotation Q with x_lammps = x @ Q)."""
    cell = atoms.cell.array
    q, r = np.linalg.qr(cell.T)
    d = np.diag(np.sign(np.diag(r)))
    q, r = q @ d, d @ r
    lower = r.T
    assert np.allclose(np.triu(lower, 1), 0.0) and np.all(np.diag(lower) > 0)
    x = atoms.positions @ q
    frac = x @ np.linalg.inv(lower)
    frac -= np.floor(frac)
    return lower, frac @ lower, q


def lammps_emulated_inputs(atoms, r_max, lammps_symbols, model_type_names, skin=1.0, seed=0):
    """Build the model input exactly as PairNequIPAllegro<true>::preprocess does.

    LAMMPS side: local atoms in an order unrelated to their tags, ghost atoms (periodic images
    within r_max + skin of the box) with their owner's tag, a full neighbour list (REQ_FULL |
    REQ_GHOST) with cutoff r_max + skin. Plugin side: prune to r^2 <= r_max^2, edge = (i,
    tag2i[tag[j]]), shift = round(inv(cell)^T (x[j] - x[owner])), types through the pair_coeff
    symbol map. Returns (inputs, info) where info maps local slots back to ``atoms``.
    """
    rng = np.random.default_rng(seed)
    periodic = bool(atoms.pbc.all())
    n = len(atoms)
    if periodic:
        lower, x_wrapped, q = lammps_frame(atoms)
    else:  # boundary s s s: a shrink-wrapped orthogonal box, no periodic images
        lo = atoms.positions.min(axis=0) - 0.5
        x_wrapped = atoms.positions - lo
        lower = np.diag(x_wrapped.max(axis=0) + 0.5)
        q = np.eye(3)
    order = rng.permutation(n)                       # local slot i holds atom order[i] of ``atoms``
    x_local = x_wrapped[order]
    tag_local = order + 1                            # LAMMPS tags are 1-based ids
    lmp_type_local = np.array([lammps_symbols.index(atoms[k].symbol) + 1 for k in order])
    cut = r_max + skin

    x_all, tag_all, type_all = [x_local], [tag_local], [lmp_type_local]
    if periodic:
        inv = np.linalg.inv(lower)
        widths = 1.0 / np.linalg.norm(inv, axis=0)   # distances between opposite faces
        reach = [int(math.ceil(cut / w)) for w in widths]
        margin = cut / widths
        for s in itertools.product(*[range(-k, k + 1) for k in reach]):
            if s == (0, 0, 0):
                continue
            xg = x_local + np.asarray(s, dtype=float) @ lower
            frac = xg @ inv
            keep = np.all((frac > -margin) & (frac < 1.0 + margin), axis=1)
            x_all.append(xg[keep])
            tag_all.append(tag_local[keep])
            type_all.append(lmp_type_local[keep])
    x_all = np.concatenate(x_all)
    tag_all = np.concatenate(tag_all)
    type_all = np.concatenate(type_all)
    ntotal = len(x_all)

    # full neighbour list of the local atoms over local + ghost atoms (with the skin)
    firstneigh = []
    for i in range(n):
        d2 = ((x_all - x_all[i]) ** 2).sum(axis=1)
        js = [j for j in np.flatnonzero(d2 < cut * cut) if j != i]
        rng.shuffle(js)
        firstneigh.append(js)

    # --- PairNequIPAllegro<true>::coeff: type map from the pair_coeff symbols
    type_mapper = [model_type_names.index(sym) if sym in model_type_names else -1 for sym in lammps_symbols]
    # --- PairNequIPAllegro<true>::preprocess
    ilist = rng.permutation(n)
    tag2i = {int(tag_local[i]): i for i in ilist}
    cell_inv = np.linalg.inv(lower).T                 # cell_tensor.inverse().transpose(0, 1)
    pos = np.zeros((n, 3))
    types = np.zeros(n, dtype=np.int64)
    edges, shifts = [], []
    for ii in range(ntotal):
        if ii >= n:
            continue                                  # ghosts only contribute as neighbours
        i = ilist[ii]
        pos[i] = x_all[i]
        types[i] = type_mapper[type_all[i] - 1]
        for j in firstneigh[i]:
            rsq = float(((x_all[i] - x_all[j]) ** 2).sum())
            if rsq > r_max * r_max:
                continue
            owner = tag2i[int(tag_all[j])]
            periodic_shift = x_all[j] - x_all[owner]
            shift = np.array([round(float(sum(cell_inv[d, k] * periodic_shift[k] for k in range(3))))
                              for d in range(3)])
            edges.append((i, owner))
            shifts.append(shift)
    inputs = {
        "pos": torch.tensor(pos, dtype=torch.float64),
        "edge_index": torch.tensor(np.array(edges, dtype=np.int64).reshape(-1, 2).T.copy()),
        "atom_types": torch.tensor(types),
        "edge_cell_shift": torch.tensor(np.array(shifts, dtype=np.float64).reshape(-1, 3)),
        "cell": torch.tensor(lower, dtype=torch.float64).unsqueeze(0),
    }
    return inputs, {"order": order, "rotation": q, "cell": lower, "num_ghosts": ntotal - n}


def lammps_outputs(out):
    """What the plugin takes from the model output: eng_vdwl, eatom, f, virial[6]."""
    for key in ("forces", "atomic_energy", "virial"):
        assert out[key].dtype == torch.float64, f"{key} must be float64 (accessor<double>)"
    out = {k: v.detach() for k, v in out.items()}
    ae = out["atomic_energy"]
    assert ae.dim() == 2 and ae.shape[1] == 1
    v = out["virial"]
    assert tuple(v.shape) == (1, 3, 3)
    return {"energy": float(ae.sum()), "eatom": ae[:, 0].numpy(), "forces": out["forces"].numpy(),
            "virial": np.array([v[0, 0, 0], v[0, 1, 1], v[0, 2, 2], v[0, 0, 1], v[0, 0, 2], v[0, 1, 2]])}


# ---------------------------------------------------------------------------------------------
# LAMMPS emulation: what pair_nequip_allegro.cpp (pair_style allegro, newton on) gives each rank


def allegro_rank_inputs(atoms, cutoff, grid, model_type_names, skin=1.0, seed=0):
    """Split a periodic ``atoms`` over ``grid`` = (px, py, pz) MPI ranks as LAMMPS does and build
    each rank's model input as PairNequIPAllegro<false>::preprocess does.

    LAMMPS side: the box (LAMMPS' lower-triangular frame) is cut into equal slabs of fractional
    coordinates; a rank owns the atoms inside its part; its ghosts are all periodic images
    (images of its own atoms included) within ``cutoff + skin`` of its part, counted in
    fractional coordinates over the face-to-face widths as LAMMPS' ghost cutoff is. Plugin side:
    nodes are local atoms (first) and ghosts (in a random order), ``pos`` explicit, edges from
    each local atom to every node within ``cutoff`` (r^2 <= cutoff^2), no cell, no shifts.

    Returns a list of ``(inputs, owner, nlocal)`` per rank (``owner[k]``: the atom of ``atoms``
    that node k is an image of), and the rotation Q (x_lammps = x @ Q).
    """
    rng = np.random.default_rng(seed)
    lower, x_wrapped, q = lammps_frame(atoms)
    inv = np.linalg.inv(lower)
    frac = x_wrapped @ inv
    widths = 1.0 / np.linalg.norm(inv, axis=0)
    margin = (cutoff + skin) / widths
    reach = [int(math.ceil(m)) + 1 for m in margin]
    types = np.array([model_type_names.index(sym) for sym in atoms.get_chemical_symbols()])
    ranks = []
    for g in itertools.product(*[range(k) for k in grid]):
        lo = np.array(g, dtype=float) / grid
        hi = (np.array(g, dtype=float) + 1) / grid
        local = np.flatnonzero(np.all((frac >= lo) & (frac < hi), axis=1))
        ghost_frac, ghost_owner = [], []
        for s in itertools.product(*[range(-k, k + 1) for k in reach]):
            f = frac + np.asarray(s, dtype=float)
            keep = np.all((f >= lo - margin) & (f < hi + margin), axis=1)
            if s == (0, 0, 0):
                keep[local] = False
            ghost_frac.append(f[keep])
            ghost_owner.append(np.flatnonzero(keep))
        ghost_frac, ghost_owner = np.concatenate(ghost_frac), np.concatenate(ghost_owner)
        shuffle = rng.permutation(len(ghost_owner))
        owner = np.concatenate([local, ghost_owner[shuffle]])
        x = np.concatenate([frac[local], ghost_frac[shuffle]]) @ lower
        edges = []
        for i in range(len(local)):
            d2 = ((x - x[i]) ** 2).sum(axis=1)
            edges += [(i, int(j)) for j in np.flatnonzero(d2 <= cutoff * cutoff) if j != i]
        inputs = {"pos": torch.tensor(x, dtype=torch.float64), "atom_types": torch.tensor(types[owner]),
                  "edge_index": torch.tensor(np.array(edges, dtype=np.int64).reshape(-1, 2).T.copy())}
        ranks.append((inputs, owner, len(local)))
    return ranks, q


def allegro_reduce(outputs, ranks, num_atoms):
    """What LAMMPS makes of the ranks' outputs: the sum of local atomic energies, forces on every
    node added to its owner (reverse communication), the virials summed."""
    energy, virial = 0.0, np.zeros((3, 3))
    forces = np.zeros((num_atoms, 3))
    for out, (_, owner, nlocal) in zip(outputs, ranks):
        energy += float(out["atomic_energy"][:nlocal].sum())
        np.add.at(forces, owner, out["forces"].numpy())
        virial += out["virial"][0].numpy()
    return energy, forces, virial


def test_emulated_edges_match_mlip_neighbour_list():
    """The emulated plugin edges are the same (i, j, shift) set as mlip's own neighbour list."""
    from mlip.data.neighbors import neighbor_list

    atoms = triclinic(seed=3)
    r_max = 3.5
    inputs, info = lammps_emulated_inputs(atoms, r_max, ["C", "Si"], TYPE_NAMES)
    assert info["num_ghosts"] > 0
    order = info["order"]
    lower, x_wrapped, _ = lammps_frame(atoms)
    ei, sh = neighbor_list(x_wrapped, lower, np.array([True] * 3), r_max)
    ours = sorted((int(order[i]), int(order[j]), *map(int, s)) for (i, j), s in
                  zip(inputs["edge_index"].T.tolist(), inputs["edge_cell_shift"].numpy()))
    theirs = sorted((int(i), int(j), *map(int, s)) for (i, j), s in zip(ei.T.tolist(), sh))
    assert len(ours) == len(set(ours))
    assert ours == theirs
    # self-images exist in this small cell (an atom is its own neighbour through a shift)
    assert any(e[0] == e[1] for e in ours)
