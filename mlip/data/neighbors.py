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
                  source: str = "") -> Tuple[np.ndarray, np.ndarray]:
    """Return ``edge_index`` [2, E] (row 0 centre i, row 1 neighbour j) and integer ``shifts`` [E, 3].

    Works for any combination of pbc flags, triclinic cells and cells smaller than ``r_max``
    (an atom then sees its own periodic images). Self-pairs at zero distance are excluded.
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
    return edge_index[:, order], shifts[order]
