"""Reading the data a config names, the train/validation split, and batching.

Graphs are built once, in float64 on the CPU (the neighbour list is the costly part); each
batch is collated and cast to the training dtype when it is used. Reference energies stay
float64 on every device, since total energies exceed float32's meV resolution.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch

from mlip.data import keys as K
from mlip.data.frames import Frame, LabelKeys, NpzKeys, Units, read_frames
from mlip.data.graph import Graph, TypeMapper, collate, frame_to_graph
from mlip.errors import InputError
from mlip.train.config import resolve_path


def label_keys(cfg: Mapping[str, Any]) -> LabelKeys:
    k = cfg["data"]["keys"]
    return LabelKeys(energy=k["energy"], forces=k["forces"], stress=k["stress"])


def npz_keys(cfg: Mapping[str, Any]) -> NpzKeys:
    k = cfg["data"]["npz_keys"]
    return NpzKeys(positions=k["positions"], energy=k["energy"], forces=k["forces"], numbers=k["numbers"])


def units_for(cfg: Mapping[str, Any], path: str) -> Optional[Units]:
    """Units from the config; an unset energy unit means eV, or kcal/mol for rMD17 ``.npz``."""
    u = cfg["data"]["units"]
    energy = u["energy"] or ("kcal/mol" if path.endswith(".npz") else "eV")
    return Units(energy=energy, length=u["length"])


def read_config_file(cfg: Mapping[str, Any], path: str, index: str = ":") -> List[Frame]:
    """Read one data file with the config's key names, units and format."""
    resolved = resolve_path(cfg, path)
    return read_frames(resolved, keys=label_keys(cfg), units=units_for(cfg, resolved), index=index,
                       npz_keys=npz_keys(cfg), fmt=cfg["data"]["format"])


def split_indices(n: int, valid_fraction: float, seed: int) -> tuple:
    """A seeded random split of ``range(n)`` into (train, valid) index lists.

    Uses its own generator, so the split depends only on the seed and n.
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = int(round(valid_fraction * n))
    if valid_fraction > 0 and n_valid == 0 and n > 1:
        n_valid = 1
    if n_valid >= n:
        raise InputError(f"valid_fraction {valid_fraction} leaves no training structures out of {n}",
                         key="data.valid_fraction")
    return sorted(perm[n_valid:].tolist()), sorted(perm[:n_valid].tolist())


@dataclass
class GraphSet:
    """Graphs with the frames they came from (for error messages and per-structure output)."""

    name: str
    frames: List[Frame]
    graphs: List[Graph] = field(default_factory=list)
    _has_stress: Optional[bool] = None

    def __len__(self) -> int:
        return len(self.frames)

    def build(self, type_names: Sequence[str], r_max: float) -> "GraphSet":
        mapper = TypeMapper(type_names)
        self.graphs = [frame_to_graph(f, mapper, r_max, torch.float64) for f in self.frames]
        self._has_stress = None
        return self

    def has_label(self, key: str) -> bool:
        return any(bool(g[key].sum() > 0) for g in self.graphs)

    def has_stress(self) -> bool:
        """Whether any structure has a stress label (and a cell to have a stress)."""
        if self._has_stress is None:
            self._has_stress = any(bool(g[K.STRESS_WEIGHT].sum() > 0) and bool(g[K.PBC].any()) for g in self.graphs)
        return self._has_stress


def epoch_permutation(seed: int, epoch: int, n: int) -> List[int]:
    """The order of training structures in ``epoch``: a function of (seed, epoch) only, so a
    resumed run replays the same order without restoring any sampler state."""
    g = torch.Generator()
    g.manual_seed(int(seed) * 1_000_003 + 7919 * (int(epoch) + 1))
    return torch.randperm(n, generator=g).tolist()


def batch_indices(order: Sequence[int], batch_size: int) -> List[List[int]]:
    return [list(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]


def make_batch(graphs: Sequence[Graph], device: torch.device, dtype: torch.dtype) -> Graph:
    """Collate and move to ``device``; float tensors become ``dtype`` except the reference energy."""
    batch = collate(list(graphs))
    out: Graph = {}
    for key, value in batch.items():
        if value.is_floating_point() and key != K.REF_ENERGY:
            value = value.to(dtype)
        out[key] = value.to(device)
    return out


def iterate_batches(graphs: Sequence[Graph], batch_size: int, device: torch.device,
                    dtype: torch.dtype) -> Iterator[tuple]:
    """(indices, batch) in file order: for validation, testing and evaluation."""
    for idx in batch_indices(range(len(graphs)), batch_size):
        yield idx, make_batch([graphs[i] for i in idx], device, dtype)


def describe_sources(frames: Sequence[Frame], idx: Sequence[int], limit: int = 4) -> str:
    names = [frames[i].source for i in idx[:limit]]
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return ", ".join(names) + more


def file_stem(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".extxyz", ".xyz", ".npz", ".traj", ".db", ".json", ".h5"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return os.path.splitext(base)[0]


def data_summary(sets: Dict[str, GraphSet]) -> str:
    parts = []
    for name, s in sets.items():
        atoms = sum(len(f) for f in s.frames)
        parts.append(f"{name} {len(s)} structures ({atoms} atoms)")
    return ", ".join(parts)
