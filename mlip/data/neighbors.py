"""Radius graphs for molecules and periodic cells, built with vesin (O(N) cell lists).

Edges are directed and both directions are present. For an edge (i, j) with integer cell shift
S, the vector from the centre i to the neighbour j is ``pos[j] - pos[i] + S @ cell``. Keeping S
rather than the vector lets autograd differentiate edge vectors with respect to positions and
to a strain of the cell.
"""
from typing import Tuple

import numpy as np
import vesin

from mlip.errors import InputError


def neighbor_list(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, r_max: float,
                  source: str = "", min_distance: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Return ``edge_index`` [2, E] (row 0 centre i, row 1 neighbour j) and integer ``shifts`` [E, 3].

    Works for any combination of pbc flags, triclinic cells and cells smaller than ``r_max``
    (an atom then sees its own periodic images). Self-pairs at zero distance are excluded.
    ``min_distance`` > 0 (Angstrom): two atoms closer than this are an error naming them
    (:func:`check_min_distance`).
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    cell = np.asarray(cell, dtype=np.float64)
    if not pbc.any():
        cell = np.zeros((3, 3))
    if not np.all(np.isfinite(positions)):
        raise InputError("positions contain NaN or inf", source or None, key="positions")
    calculator = vesin.NeighborList(cutoff=float(r_max), full_list=True)
    try:
        i, j, shifts = calculator.compute(points=positions, box=cell, periodic=pbc.tolist(), quantities="ijS")
    except Exception as exc:
        raise InputError(f"neighbour list failed: {exc}", source or None, key="cell") from None
    edge_index = np.stack([np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)])
    shifts = np.asarray(shifts, dtype=np.int64).reshape(-1, 3)
    # Order by centre atom: memory locality for the scatter, and CSR segments for the kernels.
    order = np.lexsort((edge_index[1], edge_index[0]))
    edge_index, shifts = edge_index[:, order], shifts[order]
    check_min_distance(positions, cell, edge_index, shifts, min_distance, source)
    return edge_index, shifts


MIN_DISTANCE = 0.1  # Angstrom: closer atoms are a broken structure (a duplicated atom), never physics


def check_min_distance(positions: np.ndarray, cell: np.ndarray, edge_index: np.ndarray, shifts: np.ndarray,
                       min_distance: float = MIN_DISTANCE, source: str = "") -> None:
    """Raise :class:`InputError` naming the closest pair of atoms if it is closer than
    ``min_distance`` (Angstrom; 0 turns the check off).

    Two atoms at one position give an edge of length zero, whose direction (and so every
    equivariant feature) is NaN: the model would return NaN energies and forces.
    """
    edge_index = np.asarray(edge_index).reshape(2, -1)
    if min_distance <= 0 or edge_index.shape[1] == 0:
        return
    positions = np.asarray(positions, dtype=np.float64)
    i, j = edge_index
    vectors = positions[j] - positions[i] + np.asarray(shifts, dtype=np.float64).reshape(-1, 3) @ np.asarray(
        cell, dtype=np.float64).reshape(3, 3)
    lengths = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    k = int(np.argmin(lengths))
    if lengths[k] < min_distance:
        image = "" if not np.any(shifts[k]) else f" (periodic image {np.asarray(shifts[k]).tolist()})"
        close = int(np.sum(lengths < min_distance)) // 2 or 1
        more = f"; {close} such pairs" if close > 1 else ""
        raise InputError.at(source, f"atoms {int(i[k])} and {int(j[k])}{image} are {lengths[k]:.3f} A apart (atoms count from 0), closer "
                            f"than the minimum distance {min_distance:g} A (a duplicated atom?){more}; fix the "
                            "structure (the limit is data.min_distance in a config, --min-distance on the command "
                            "line, min_distance in MLIPCalculator)", key="positions")


def edge_pairs(edge_index: np.ndarray, shifts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Group each edge with its reverse: ``(edge_pair [E], pair_edge [P])``.

    The reverse of edge (i, j, S) is (j, i, -S); both have exactly the same length in floating
    point (``r_ji = -r_ij`` is exact), so anything that depends on the length only (the radial
    basis and radial MLP) can be evaluated once per pair. ``edge_pair[e]`` is the pair of edge
    ``e`` (0 <= p < P) and ``pair_edge[p]`` is one edge of pair ``p``. An edge whose reverse is
    missing (e.g. a half list) forms a pair of its own, so the result is always valid.
    """
    edge_index = np.asarray(edge_index, dtype=np.int64).reshape(2, -1)
    shifts = np.rint(np.asarray(shifts)).astype(np.int64).reshape(-1, 3)
    if edge_index.shape[1] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    i, j = edge_index
    # canonical orientation: i < j, or i == j with the first non-zero shift component positive
    nz = shifts != 0
    first = np.argmax(nz, axis=1)
    lead = shifts[np.arange(len(first)), first]
    flip = (i > j) | ((i == j) & (lead < 0))
    sign = np.where(flip, -1, 1)[:, None]
    key = np.column_stack([np.minimum(i, j), np.maximum(i, j), shifts * sign])
    _, pair_edge, edge_pair = np.unique(key, axis=0, return_index=True, return_inverse=True)
    return edge_pair.reshape(-1).astype(np.int64), pair_edge.astype(np.int64)
