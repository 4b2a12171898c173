"""Reading the data a config names, the train/validation split, and batching.

Graphs are built once, in float64 on the CPU (the neighbour list is the costly part); each
batch is collated and cast to the training dtype when it is used. Reference energies stay
float64 on every device, since total energies exceed float32's meV resolution.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, Dict, Iterator, List, Mapping, Optional

import numpy as np
import torch

from mlip.data import keys as K
from mlip.data.frames import Frame, LabelKeys, NpzKeys, Units, read_frames
from mlip.data.graph import Graph, TypeMapper, collate, frame_to_graph, to_device
from mlip.data.hdf5 import MANIFEST, HDF5Dataset
from mlip.data.neighbors import MIN_DISTANCE
from mlip.errors import InputError
from mlip.train.config import resolve_path
from mlip.train.labels import Coverage, coverage_from_flags, coverage_of_frames
from mlip.train.loss import LossWeights, label_counts


# labels whose file names data.keys may set; the others are looked up by LabelKeys' defaults
# (atoms.info["charge"], ["dipole"], ["polarizability"], ["structure_output"], arrays["atom_output"])
_LABEL_KEY_FIELDS = ("energy", "forces", "stress", "total_charge", "dipole", "polarizability", "structure_output",
                     "atom_output")


def label_keys(cfg: Mapping[str, Any]) -> LabelKeys:
    k = cfg["data"]["keys"]
    return LabelKeys(**{name: k[name] for name in _LABEL_KEY_FIELDS if name in k})


def label_key_names(cfg: Mapping[str, Any], path: str) -> Dict[str, str]:
    """label -> the name it is looked up by in ``path`` (for messages): the config's data.keys,
    data.npz_keys for an ``.npz``, the label itself for an HDF5 folder (named at preprocessing)."""
    defaults = {name: getattr(LabelKeys(), name) for name in _LABEL_KEY_FIELDS}
    if path.endswith(".npz"):
        k = cfg["data"]["npz_keys"]
        return {**defaults, "energy": k["energy"], "forces": k["forces"], "stress": "stress"}
    if is_hdf5_folder(path):
        return {name: name for name in _LABEL_KEY_FIELDS}
    return {name: getattr(label_keys(cfg), name) for name in _LABEL_KEY_FIELDS}


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

    def build(self, type_names: Sequence[str], r_max: float, min_distance: float = MIN_DISTANCE) -> "GraphSet":
        mapper = TypeMapper(type_names)
        self.graphs = [frame_to_graph(f, mapper, r_max, torch.float64, min_distance=min_distance)
                       for f in self.frames]
        self._has_stress = None
        return self

    def has_stress(self) -> bool:
        """Whether any structure has a stress label (and a cell to have a stress)."""
        if self._has_stress is None:
            self._has_stress = any(bool(g[K.STRESS_WEIGHT].sum() > 0) and bool(g[K.PBC].any()) for g in self.graphs)
        return self._has_stress

    def coverage(self) -> Dict[str, Coverage]:
        """How many structures carry each label (from the frames: no graph needed)."""
        return coverage_of_frames(self.frames)

    @property
    def sources(self) -> List[str]:
        return [f.source for f in self.frames]

    def num_atoms(self) -> int:
        return sum(len(f) for f in self.frames)

    def label_counts(self, idx: Sequence[int], weights: LossWeights) -> Dict[str, float]:
        """The loss denominators of the structures ``idx`` (see mlip.train.loss.label_counts)."""
        counts: Dict[str, float] = {}
        for i in idx:
            for k, v in label_counts(self.graphs[i], weights).items():
                counts[k] = counts.get(k, 0.0) + v
        return counts


class LazyGraphs(Sequence):
    """The graphs of some frames of an HDF5 data set, read (and built) on access.

    A view: slicing gives another view, so that nothing is loaded until an item is asked for.
    Usable as a map-style torch Dataset (DataLoader workers each open their own shard handles).
    """

    def __init__(self, dataset: HDF5Dataset, indices: np.ndarray):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return LazyGraphs(self.dataset, self.indices[i])
        return self.dataset[int(self.indices[i])]


class _SourceNames(Sequence):
    def __init__(self, dataset: HDF5Dataset, indices: np.ndarray):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset.source(int(self.indices[i]))


class HDF5GraphSet:
    """Frames ``indices`` of a preprocessed HDF5 folder (``mlip preprocess``), read lazily.

    Memory: the shard pointers and per-frame label flags (about 24 bytes a frame); graphs are
    read and built when a batch asks for them, in DataLoader workers when ``data.num_workers`` > 0.
    """

    def __init__(self, name: str, dataset: HDF5Dataset, indices: Optional[Sequence[int]] = None):
        self.name = name
        self.dataset = dataset
        self.indices = np.arange(len(dataset), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        info = dataset.frame_info()
        self._atoms = info["num_atoms"][self.indices].astype(np.int64)
        self._energy = info["has_energy"][self.indices]
        self._forces = info["has_forces"][self.indices]
        self._stress = info["has_stress"][self.indices]
        self._dipole = info["has_dipole"][self.indices]
        self._polarizability = info["has_polarizability"][self.indices]
        self._periodic = info["periodic"][self.indices]
        self.graphs = LazyGraphs(dataset, self.indices)
        self.sources = _SourceNames(dataset, self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def has_stress(self) -> bool:
        return bool(np.any(self._stress & self._periodic))

    def num_atoms(self) -> int:
        return int(self._atoms.sum())

    def coverage(self) -> Dict[str, Coverage]:
        """How many structures carry each label (from the flags: no frame is read)."""
        return coverage_from_flags({"energy": self._energy, "forces": self._forces, "stress": self._stress,
                                    "dipole": self._dipole, "polarizability": self._polarizability},
                                   self._periodic, self.sources)

    def label_counts(self, idx: Sequence[int], weights: LossWeights) -> Dict[str, float]:
        """As GraphSet.label_counts, from the flags alone (no frame is read)."""
        idx = np.asarray(idx, dtype=np.int64)
        counts: Dict[str, float] = {}
        if weights.energy > 0:
            counts["energy"] = float(self._energy[idx].sum())
        if weights.forces > 0:
            counts["forces"] = 3.0 * float((self._atoms[idx] * self._forces[idx]).sum())
        if weights.stress > 0:
            counts["stress"] = 9.0 * float(self._stress[idx].sum())
        if weights.dipole > 0:
            counts["dipole"] = 3.0 * float(self._dipole[idx].sum())
        if weights.polarizability > 0:
            counts["polarizability"] = 9.0 * float(self._polarizability[idx].sum())
        for name in ("structure_output", "atom_output"):  # not stored in HDF5 folders
            if getattr(weights, name) > 0:
                counts[name] = 0.0
        return counts


def is_hdf5_folder(path: str) -> bool:
    """A folder written by ``mlip preprocess`` (or the path of its manifest.json)."""
    return (os.path.isdir(path) and os.path.exists(os.path.join(path, MANIFEST))) or os.path.basename(path) == MANIFEST


def epoch_permutation(seed: int, epoch: int, n: int) -> List[int]:
    """The order of training structures in ``epoch``: a function of (seed, epoch) only, so a
    resumed run replays the same order without restoring any sampler state."""
    g = torch.Generator()
    g.manual_seed(int(seed) * 1_000_003 + 7919 * (int(epoch) + 1))
    return torch.randperm(n, generator=g).tolist()


def batch_indices(order: Sequence[int], batch_size: int) -> List[List[int]]:
    return [list(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]


def collated_batches(graphs: Sequence[Graph], index_batches: Sequence[Sequence[int]],
                     workers: int = 0) -> Iterator[Graph]:
    """The collated batches ``graphs[idx]`` for each ``idx`` of ``index_batches``, in order.

    Graphs read from disk (:class:`LazyGraphs`) are read and built by ``workers`` DataLoader
    processes ahead of use when ``workers`` > 0; graphs held in memory are collated directly.
    """
    if workers > 0 and isinstance(graphs, LazyGraphs) and len(index_batches):
        from torch.utils.data import DataLoader

        loader = DataLoader(graphs, batch_sampler=[list(i) for i in index_batches], collate_fn=collate,
                            num_workers=workers, prefetch_factor=2)
        try:
            yield from loader
        except InputError as exc:
            # the DataLoader re-raises a worker's error with the worker's traceback as its text:
            # hand on the one line the worker raised
            raise InputError(_worker_message(str(exc))) from None
        return
    for idx in index_batches:
        yield collate([graphs[i] for i in idx])


def _worker_message(text: str) -> str:
    """The original message of an InputError re-raised by a DataLoader worker."""
    prefix = f"{InputError.__module__}.{InputError.__qualname__}: "
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return lines[-1][len(prefix):] if lines else text.strip().splitlines()[-1]


def iterate_batches(graphs: Sequence[Graph], batch_size: int, device: torch.device,
                    dtype: torch.dtype, indices: Optional[Sequence[int]] = None,
                    workers: int = 0) -> Iterator[tuple]:
    """(indices, batch) in file order (or over ``indices``): validation, testing, evaluation."""
    batches = batch_indices(range(len(graphs)) if indices is None else indices, batch_size)
    for idx, batch in zip(batches, collated_batches(graphs, batches, workers)):
        yield idx, to_device(batch, device, dtype)


def describe_sources(sources: Sequence[str], idx: Sequence[int], limit: int = 4) -> str:
    names = [sources[i] for i in idx[:limit]]
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return ", ".join(names) + more


def file_stem(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    for ext in (".extxyz", ".xyz", ".npz", ".traj", ".db", ".json", ".h5"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return os.path.splitext(base)[0]


def data_summary(sets: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} {len(s)} structures ({s.num_atoms()} atoms)" for name, s in sets.items())
