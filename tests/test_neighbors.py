"""The radius graph equals ASE's reference neighbour list for every pbc combination."""
import itertools

import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list

from mlip.data.neighbors import neighbor_list


def _edge_set(i, j, shifts):
    return sorted(zip(np.asarray(i).tolist(), np.asarray(j).tolist(), map(tuple, np.asarray(shifts).tolist())))


def _random_triclinic(rng, n_atoms, scale):
    cell = np.eye(3) * scale + rng.uniform(-0.35, 0.35, (3, 3)) * scale
    frac = rng.uniform(0, 1, (n_atoms, 3))
    return frac @ cell, cell


@pytest.mark.parametrize("pbc", list(itertools.product([False, True], repeat=3)))
def test_matches_ase_on_random_triclinic_cells(rng, pbc):
    for trial in range(3):
        pos, cell = _random_triclinic(rng, n_atoms=7, scale=4.0)
        r_max = 3.5
        edge_index, shifts = neighbor_list(pos, cell, np.array(pbc), r_max)
        atoms = Atoms("H7", positions=pos, cell=cell, pbc=pbc)
        i, j, S = ase_neighbor_list("ijS", atoms, r_max)
        assert _edge_set(edge_index[0], edge_index[1], shifts) == _edge_set(i, j, S)


def test_cell_smaller_than_cutoff_sees_own_images():
    pos = np.zeros((1, 3))
    cell = np.eye(3) * 2.0
    edge_index, shifts = neighbor_list(pos, cell, np.array([True] * 3), 4.5)
    assert edge_index.shape[1] > 0 and np.all(edge_index == 0)
    vec = shifts @ cell
    dist = np.linalg.norm(vec, axis=1)
    assert np.all(dist > 0) and np.all(dist <= 4.5)
    # every image within the cutoff is present: count lattice points with 0 < |n| * 2 <= 4.5
    grid = np.array(list(itertools.product(range(-3, 4), repeat=3)))
    expected = ((np.linalg.norm(grid * 2.0, axis=1) <= 4.5) & (np.abs(grid).sum(1) > 0)).sum()
    assert len(dist) == expected


def test_isolated_molecule_and_lonely_atom():
    pos = np.array([[0.0, 0, 0], [1.0, 0, 0], [10.0, 0, 0]])
    edge_index, shifts = neighbor_list(pos, np.zeros((3, 3)), np.array([False] * 3), 2.0)
    assert _edge_set(edge_index[0], edge_index[1], shifts) == [(0, 1, (0, 0, 0)), (1, 0, (0, 0, 0))]


def test_edges_sorted_by_centre(rng):
    pos, cell = _random_triclinic(rng, 20, 6.0)
    edge_index, _ = neighbor_list(pos, cell, np.array([True, True, True]), 4.0)
    assert np.all(np.diff(edge_index[0]) >= 0)
