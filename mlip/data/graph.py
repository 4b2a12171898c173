"""Frames -> graphs (flat dicts of tensors) and batching of many graphs into one.

A batch concatenates nodes, offsets edge indices by the number of atoms before each structure
and records the structure of every atom in ``batch``. Missing labels become zeros with a zero
weight, so one loss formula covers partly labelled data.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from mlip.data import keys as K
from mlip.data.frames import Frame, chemical_symbols_to_types
from mlip.data.neighbors import MIN_DISTANCE, check_min_distance, edge_pairs, neighbor_list
from mlip.errors import InputError

Graph = Dict[str, torch.Tensor]


class TypeMapper:
    """Chemical symbols, in declared order, <-> type indices used by the model."""

    def __init__(self, type_names: Sequence[str]):
        self.type_names = list(type_names)
        self.z_to_type = chemical_symbols_to_types(self.type_names)
        table = np.full(119, -1, dtype=np.int64)
        for z, t in self.z_to_type.items():
            table[z] = t
        self._table = table

    def __call__(self, numbers: np.ndarray, source: str = "") -> np.ndarray:
        types = self._table[np.asarray(numbers)]
        if (types < 0).any():
            from ase.data import chemical_symbols
            bad = sorted({chemical_symbols[z] for z in np.asarray(numbers)[types < 0]})
            path, _, frame = source.rpartition(":")
            raise InputError(f"species {bad} not in type_names {self.type_names}",
                             path or None, int(frame) if frame.isdigit() else None, "numbers")
        return types


def frame_to_graph(frame: Frame, type_mapper: TypeMapper, r_max: float,
                   dtype: torch.dtype = torch.float64, edges: Optional[tuple] = None,
                   min_distance: float = MIN_DISTANCE) -> Graph:
    """Build the radius graph of one frame and pack it, with its labels, as tensors.

    ``edges``: a precomputed (edge_index, shifts) for this ``r_max`` (e.g. from an HDF5 shard).
    Two atoms closer than ``min_distance`` (Angstrom) are an error naming them (0: no check).
    """
    if edges is None:
        edges = neighbor_list(frame.positions, frame.cell, frame.pbc, r_max, frame.source, min_distance)
    else:
        check_min_distance(frame.positions, frame.cell, edges[0], edges[1], min_distance, frame.source)
    edge_index, shifts = edges
    edge_pair, pair_edge = edge_pairs(edge_index, shifts)
    n = len(frame)
    cell = frame.cell if frame.pbc.any() else np.zeros((3, 3))
    g: Graph = {
        K.POSITIONS: torch.as_tensor(frame.positions, dtype=dtype),
        K.ATOM_TYPES: torch.as_tensor(type_mapper(frame.numbers, frame.source)),
        K.CELL: torch.as_tensor(cell, dtype=dtype).unsqueeze(0),
        K.PBC: torch.as_tensor(frame.pbc).view(1, 3),
        K.EDGE_INDEX: torch.as_tensor(edge_index),
        K.EDGE_CELL_SHIFT: torch.as_tensor(shifts, dtype=dtype),
        K.EDGE_PAIR: torch.as_tensor(edge_pair),
        K.PAIR_EDGE: torch.as_tensor(pair_edge),
        K.BATCH: torch.zeros(n, dtype=torch.long),
        K.NUM_ATOMS: torch.tensor([n], dtype=torch.long),
        K.REF_ENERGY: torch.tensor([frame.energy if frame.energy is not None else 0.0], dtype=dtype),
        K.ENERGY_WEIGHT: torch.tensor([1.0 if frame.energy is not None else 0.0], dtype=dtype),
        K.REF_FORCES: torch.as_tensor(frame.forces if frame.forces is not None else np.zeros((n, 3)), dtype=dtype),
        K.FORCES_WEIGHT: torch.full((n,), 1.0 if frame.forces is not None else 0.0, dtype=dtype),
        K.REF_STRESS: torch.as_tensor(frame.stress if frame.stress is not None else np.zeros((3, 3)),
                                      dtype=dtype).unsqueeze(0),
        K.STRESS_WEIGHT: torch.tensor([1.0 if frame.stress is not None else 0.0], dtype=dtype),
        K.TOTAL_CHARGE: torch.tensor([frame.total_charge or 0.0], dtype=dtype),
        K.REF_DIPOLE: torch.as_tensor(frame.dipole if frame.dipole is not None else np.zeros(3),
                                      dtype=dtype).view(1, 3),
        K.DIPOLE_WEIGHT: torch.tensor([1.0 if frame.dipole is not None else 0.0], dtype=dtype),
        K.REF_POLARIZABILITY: torch.as_tensor(frame.polarizability if frame.polarizability is not None
                                              else np.zeros((3, 3)), dtype=dtype).view(1, 3, 3),
        K.POLARIZABILITY_WEIGHT: torch.tensor([1.0 if frame.polarizability is not None else 0.0], dtype=dtype),
        K.STRUCTURE_OUTPUT_WEIGHT: torch.tensor([1.0 if frame.structure_output is not None else 0.0], dtype=dtype),
        K.ATOM_OUTPUT_WEIGHT: torch.full((n,), 1.0 if frame.atom_output is not None else 0.0, dtype=dtype),
    }
    # generic outputs: the label's width is the file's, so a frame without one carries none
    # (collate fills in zeros of the others' shape, with weight 0)
    if frame.structure_output is not None:
        g[K.REF_STRUCTURE_OUTPUT] = torch.as_tensor(frame.structure_output, dtype=dtype).view(1, -1)
    if frame.atom_output is not None:
        g[K.REF_ATOM_OUTPUT] = torch.as_tensor(frame.atom_output, dtype=dtype).view(n, -1)
    return g


def collate(graphs: Sequence[Graph]) -> Graph:
    """Concatenate graphs into one batch, as :data:`mlip.data.keys.FIELDS` declares each field:
    along its ``cat_dim``, with values that index atoms / edges / pairs / structures offset by
    the counts of the graphs before. An optional field that some graph lacks is left out; a
    ``fill_missing`` field (a generic label) that some graphs lack is zeros for them."""
    if len(graphs) == 1:
        return dict(graphs[0])
    sizes = {"atom": [int(g[K.NUM_ATOMS].sum()) for g in graphs],
             "edge": [int(g[K.EDGE_INDEX].shape[1]) for g in graphs],
             "structure": [int(g[K.NUM_ATOMS].shape[0]) for g in graphs]}
    if all(K.PAIR_EDGE in g for g in graphs):
        sizes["pair"] = [int(g[K.PAIR_EDGE].shape[0]) for g in graphs]
    out: Graph = {}
    keys = list(graphs[0])
    keys += [k for k in dict.fromkeys(k for g in graphs[1:] for k in g)
             if k not in graphs[0] and K.FIELDS[k].fill_missing]
    for key in keys:
        spec = K.FIELDS[key]
        if spec.optional and not all(key in g for g in graphs):
            continue
        if spec.fill_missing:
            like = next(g[key] for g in graphs if key in g)
            if any(key in g and g[key].shape[1:] != like.shape[1:] for g in graphs):
                widths = sorted({tuple(g[key].shape[1:]) for g in graphs if key in g})
                raise InputError(f"the {key} labels of the structures in one batch differ in width {widths}: "
                                 "every structure's label must have the components of the model's output")
            parts = [g[key] if key in g else like.new_zeros((sizes[spec.per][i], *like.shape[1:]))
                     for i, g in enumerate(graphs)]
            out[key] = torch.cat(parts, dim=spec.cat_dim)
            continue
        parts = [g[key] for g in graphs]
        if spec.index_of is not None:
            offsets = np.cumsum([0] + sizes[spec.index_of][:-1]).tolist()
            parts = [p + off for p, off in zip(parts, offsets)]
        out[key] = torch.cat(parts, dim=spec.cat_dim)
    return out


def to_device(graph: Mapping[str, torch.Tensor], device: torch.device | str,
              dtype: Optional[torch.dtype] = None) -> Graph:
    """Move a graph (or batch) to ``device``; floating tensors are cast to ``dtype`` when given,
    except fields declared ``float64`` (the reference energy: total energies exceed float32's
    meV resolution)."""
    out = {}
    for key, value in graph.items():
        if dtype is not None and value.is_floating_point() and not (key in K.FIELDS and K.FIELDS[key].float64):
            value = value.to(dtype)
        out[key] = value.to(device, non_blocking=True)
    return out


def graphs_from_frames(frames: List[Frame], type_mapper: TypeMapper, r_max: float,
                       dtype: torch.dtype = torch.float64) -> List[Graph]:
    return [frame_to_graph(f, type_mapper, r_max, dtype) for f in frames]
