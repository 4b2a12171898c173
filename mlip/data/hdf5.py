"""Sharded HDF5 storage for large data sets, read lazily with bounded memory.

A data set is a folder with ``manifest.json`` (shard list, frame counts, statistics) and
shards ``shard_00000.h5``, ... Each shard stores its frames as flat, chunked arrays:

    positions [A, 3] f8, numbers [A] i2, forces [A, 3] f8 (NaN rows where missing),
    atom_ptr [F+1] i8 (frame f owns atoms atom_ptr[f]:atom_ptr[f+1]),
    cell [F, 3, 3] f8, pbc [F, 3] bool, energy [F] f8 (NaN: missing), stress [F, 3, 3] f8 (NaN: missing)
    only in shards where some frame has them: total_charge [F] f8 (e), dipole [F, 3] f8 (e*A),
    polarizability [F, 3, 3] f8 (A^3), NaN where missing; a shard without the dataset (all
    older shards) reads as "label absent" for every frame (total charge: neutral)
    optionally a precomputed radius graph: edge_index [2, Ed] i4 (frame-local), edge_shift [Ed, 3] i1,
    edge_ptr [F+1] i8, with the cutoff in the shard attribute ``graph_r_max``.

Values are in mlip units (eV, Angstrom, eV/A, eV/A^3, e, e*A, A^3). The generic outputs
(``structure_output``, ``atom_output``) have a model-dependent width and are not stored: train
them from extxyz/ASE files. Only ``atom_ptr``/``edge_ptr`` of every
shard are held in memory (16 bytes a frame); frames are read on demand, and each DataLoader
worker opens its own file handles.
"""
import json
import os
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from mlip.data.frames import Frame
from mlip.data.graph import Graph, TypeMapper, frame_to_graph
from mlip.data.neighbors import MIN_DISTANCE, neighbor_list
from mlip.data.statistics import StreamingStatistics  # noqa: F401  (also imported from here)
from mlip.errors import InputError

MANIFEST = "manifest.json"
FORMAT = "mlip-hdf5-1"


@dataclass(frozen=True)
class StoredField:
    """One per-atom or per-frame array of a shard: the :class:`~mlip.data.frames.Frame`
    attribute it holds, its dtype and per-item shape. A label that a frame lacks is stored
    as NaN and read back as None."""

    name: str                  # the Frame attribute and the dataset's name
    per: str                   # "atom": concatenated over frames (atom_ptr); "frame": stacked
    dtype: str                 # numpy dtype on disk
    shape: Tuple[int, ...]     # shape of one atom's / one frame's value
    label: bool = False        # may be missing (NaN on disk, None in the Frame)
    # written only when some frame of the shard has it; a shard without the dataset (e.g. one
    # written before the label existed) reads as "absent" for all its frames
    sparse: bool = False


# the one declaration of what a shard holds; writing and reading both loop over it
STORED_FIELDS = (
    StoredField("positions", "atom", "f8", (3,)),
    StoredField("numbers", "atom", "i2", ()),
    StoredField("forces", "atom", "f8", (3,), label=True),
    StoredField("cell", "frame", "f8", (3, 3)),
    StoredField("pbc", "frame", "bool", (3,)),
    StoredField("energy", "frame", "f8", (), label=True),
    StoredField("stress", "frame", "f8", (3, 3), label=True),
    StoredField("total_charge", "frame", "f8", (), label=True, sparse=True),
    StoredField("dipole", "frame", "f8", (3,), label=True, sparse=True),
    StoredField("polarizability", "frame", "f8", (3, 3), label=True, sparse=True),
)


def _stored_value(frame: Frame, field: StoredField) -> np.ndarray:
    """What a frame stores for ``field`` (NaN for a missing label; a zero cell when not periodic)."""
    value = getattr(frame, field.name)
    if field.name == "cell" and not frame.pbc.any():
        value = np.zeros((3, 3))
    if value is None:
        shape = ((len(frame),) if field.per == "atom" else ()) + field.shape
        value = np.full(shape, np.nan)
    return np.asarray(value)


def _frame_values(h5, a: int, b: int, local: int) -> Dict[str, object]:
    """Frame attributes read from a shard: atoms a:b, frame ``local``; missing labels None."""
    values: Dict[str, object] = {}
    for field in STORED_FIELDS:
        if field.sparse and field.name not in h5:
            values[field.name] = None  # not in this shard (or a shard older than the label)
            continue
        value = h5[field.name][a:b] if field.per == "atom" else h5[field.name][local]
        if field.label and np.isnan(value).any():
            value = None
        elif field.name in ("energy", "total_charge"):
            value = float(value)
        elif field.name == "numbers":
            value = value.astype(np.int64)
        elif field.name == "pbc":
            value = value.astype(bool)
        values[field.name] = value
    return values


def write_shards(frames: Iterable[Frame], out_dir: str, frames_per_shard: int = 10000,
                 graph_r_max: Optional[float] = None, source: str = "",
                 min_distance: float = MIN_DISTANCE) -> Dict[str, object]:
    """Stream frames into shards and write the manifest; returns the manifest.

    With ``graph_r_max`` the radius graph of every frame is stored too (and the average
    neighbour count is part of the statistics). Two atoms closer than ``min_distance``
    (Angstrom) are an error naming the frame, before anything of it is written.
    """
    import h5py

    os.makedirs(out_dir, exist_ok=True)
    stats = StreamingStatistics()
    shards: List[Dict[str, object]] = []

    def empty_buffer() -> Dict[str, List[np.ndarray]]:
        return {name: [] for name in [f.name for f in STORED_FIELDS] + ["edge_index", "edge_shift"]}

    buf = empty_buffer()

    def flush():
        nonlocal buf
        if not buf["positions"]:
            return
        name = f"shard_{len(shards):05d}.h5"
        tmp = os.path.join(out_dir, f".{name}.tmp")
        sizes = np.array([len(n) for n in buf["numbers"]])
        with h5py.File(tmp, "w") as h5:
            h5.attrs["format"] = FORMAT
            for field in STORED_FIELDS:
                if field.sparse and all(np.isnan(v).all() for v in buf[field.name]):
                    continue  # no frame of this shard has it: reads back as absent
                if field.per == "atom":  # flat over atoms, chunked: frames are read as slices
                    h5.create_dataset(field.name, data=np.concatenate(buf[field.name]).astype(field.dtype),
                                      chunks=True)
                else:
                    h5.create_dataset(field.name, data=np.stack(buf[field.name]).astype(field.dtype))
            h5.create_dataset("atom_ptr", data=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
            if graph_r_max is not None:
                h5.attrs["graph_r_max"] = float(graph_r_max)
                edges = np.array([e.shape[1] for e in buf["edge_index"]])
                h5.create_dataset("edge_index", data=np.concatenate(buf["edge_index"], axis=1).astype(np.int32),
                                  chunks=True)
                h5.create_dataset("edge_shift", data=np.concatenate(buf["edge_shift"]).astype(np.int8), chunks=True)
                h5.create_dataset("edge_ptr", data=np.concatenate([[0], np.cumsum(edges)]).astype(np.int64))
        os.replace(tmp, os.path.join(out_dir, name))  # a shard appears whole or not at all
        shards.append({"file": name, "frames": len(buf["positions"])})
        buf = empty_buffer()

    for frame in frames:
        if graph_r_max is None and min_distance > 0:
            # a short-range list just for the check (a cell list with bins of ~1 A stays small)
            neighbor_list(frame.positions, frame.cell, frame.pbc, max(min_distance, 1.0), frame.source, min_distance)
        for field in STORED_FIELDS:
            buf[field.name].append(_stored_value(frame, field))
        num_edges = None
        if graph_r_max is not None:
            edge_index, shifts = neighbor_list(frame.positions, frame.cell, frame.pbc, graph_r_max, frame.source,
                                               min_distance)
            if np.abs(shifts).max(initial=0) > 127:
                raise InputError("cell shift beyond int8 range; is the cell tiny compared with r_max?", frame.source)
            buf["edge_index"].append(edge_index)
            buf["edge_shift"].append(shifts)
            num_edges = edge_index.shape[1]
        stats.add(frame, num_edges)
        if len(buf["positions"]) >= frames_per_shard:
            flush()
    flush()
    if not shards:
        raise InputError("no structures to write", source or None)
    manifest = {"format": FORMAT, "shards": shards, "graph_r_max": graph_r_max, "statistics": stats.result(),
                "source": source}
    tmp = os.path.join(out_dir, f".{MANIFEST}.tmp")
    with open(tmp, "w") as fh:
        json.dump(manifest, fh, indent=1)
    os.replace(tmp, os.path.join(out_dir, MANIFEST))
    return manifest


def read_manifest(path: str) -> Dict[str, object]:
    file = os.path.join(path, MANIFEST) if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise InputError(f"no {MANIFEST} (write one with `mlip preprocess`)", path)
    with open(file) as fh:
        try:
            manifest = json.load(fh)
        except json.JSONDecodeError as exc:
            raise InputError(f"manifest is not valid JSON ({exc})", file) from None
    if manifest.get("format") != FORMAT:
        raise InputError(f"not an mlip HDF5 data set (format {manifest.get('format')!r})", file)
    return manifest


class HDF5Dataset(Dataset):
    """Map-style dataset over the shards of one or more preprocessed folders.

    ``skip_corrupt``: a frame that cannot be read is an error naming shard and index (default);
    with True it is reported once on stderr and replaced by the next readable frame.
    """

    def __init__(self, folders: Sequence[str], type_names: Sequence[str], r_max: float,
                 dtype: torch.dtype = torch.float64, skip_corrupt: bool = False,
                 min_distance: float = MIN_DISTANCE):
        import h5py  # noqa: F401  (fail early if missing)

        self.min_distance = float(min_distance)
        self.type_mapper = TypeMapper(type_names)
        self.r_max = float(r_max)
        self.dtype = dtype
        self.skip_corrupt = skip_corrupt
        self.shard_paths: List[str] = []
        counts: List[int] = []
        self.graph_r_max: List[Optional[float]] = []
        for folder in ([folders] if isinstance(folders, str) else folders):
            manifest = read_manifest(folder)
            base = folder if os.path.isdir(folder) else os.path.dirname(folder)
            for shard in manifest["shards"]:
                path = os.path.join(base, shard["file"])
                if not os.path.exists(path):
                    raise InputError("shard listed in the manifest is missing", path)
                self.shard_paths.append(path)
                counts.append(int(shard["frames"]))
                self.graph_r_max.append(manifest.get("graph_r_max"))
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._files: Dict[int, object] = {}
        self._pid = os.getpid()
        self._ptrs: Dict[int, Dict[str, np.ndarray]] = {}
        self._reported: set = set()
        self._info: Optional[Dict[str, np.ndarray]] = None

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _file(self, shard: int):
        import h5py

        if self._pid != os.getpid():  # forked DataLoader worker: never share HDF5 handles
            self._files, self._ptrs, self._pid = {}, {}, os.getpid()
        if shard not in self._files:
            path = self.shard_paths[shard]
            try:
                h5 = h5py.File(path, "r", rdcc_nbytes=1 << 20)
                ptrs = {"atom_ptr": h5["atom_ptr"][()]}
                if "edge_ptr" in h5:
                    ptrs["edge_ptr"] = h5["edge_ptr"][()]
            except Exception as exc:
                raise InputError(f"cannot open shard ({type(exc).__name__}: {_first_line(exc)})", path) from None
            self._files[shard], self._ptrs[shard] = h5, ptrs
        return self._files[shard], self._ptrs[shard]

    def frame_info(self) -> Dict[str, np.ndarray]:
        """Per-frame sizes and label flags of every frame, read once from the small per-frame
        datasets (no positions): ``num_atoms`` [F] i4, ``has_energy``, ``has_forces``,
        ``has_stress``, ``has_dipole``, ``has_polarizability`` and ``periodic`` [F] bool. About
        10 bytes a frame."""
        if self._info is None:
            parts: Dict[str, List[np.ndarray]] = {k: [] for k in ("num_atoms", "has_energy", "has_forces",
                                                                  "has_stress", "has_dipole",
                                                                  "has_polarizability", "periodic")}
            for shard in range(len(self.shard_paths)):
                h5, ptrs = self._file(shard)
                try:
                    ptr = ptrs["atom_ptr"]
                    sizes = np.diff(ptr)
                    energy = h5["energy"][()]
                    stress = h5["stress"][()].reshape(len(energy), 9)
                    pbc = h5["pbc"][()]
                    # a frame's forces are all present or all NaN: its first row decides
                    first_fx = h5["forces"][:, 0][ptr[:-1][sizes > 0]] if sizes.any() else np.zeros(0)
                    # sparse labels: absent from a shard where no frame has them
                    has_sparse = {name: (~np.isnan(h5[name][()].reshape(len(energy), -1)).any(axis=1)
                                         if name in h5 else np.zeros(len(energy), dtype=bool))
                                  for name in ("dipole", "polarizability")}
                except Exception as exc:
                    raise InputError(f"cannot read the per-frame labels ({type(exc).__name__}: "
                                     f"{_first_line(exc)})", self.shard_paths[shard]) from None
                if not (len(energy) == len(sizes) == len(stress) == len(pbc)):
                    raise InputError("per-frame arrays disagree in length (truncated shard?)", self.shard_paths[shard])
                has_forces = np.zeros(len(sizes), dtype=bool)
                has_forces[sizes > 0] = ~np.isnan(first_fx)
                parts["num_atoms"].append(sizes.astype(np.int32))
                parts["has_energy"].append(~np.isnan(energy))
                parts["has_forces"].append(has_forces)
                parts["has_stress"].append(~np.isnan(stress).any(axis=1))
                for name, flags in has_sparse.items():
                    parts[f"has_{name}"].append(flags)
                parts["periodic"].append(pbc.any(axis=1))
            self._info = {k: np.concatenate(v) for k, v in parts.items()}
        return self._info

    def source(self, index: int) -> str:
        """``shard_path:frame`` of a frame, for messages and per-structure outputs."""
        shard, local = self.locate(index)
        return f"{self.shard_paths[shard]}:{local}"

    def locate(self, index: int):
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return shard, int(index - self.offsets[shard])

    def read_frame(self, index: int) -> Frame:
        shard, local = self.locate(index)
        h5, ptrs = self._file(shard)
        a, b = int(ptrs["atom_ptr"][local]), int(ptrs["atom_ptr"][local + 1])
        try:
            frame = Frame(**_frame_values(h5, a, b, local), source=f"{self.shard_paths[shard]}:{local}")
        except Exception as exc:
            raise InputError(f"cannot read frame ({type(exc).__name__}: {_first_line(exc)})",
                             self.shard_paths[shard], local) from None
        if b <= a or not np.all(np.isfinite(frame.positions)):
            raise InputError("frame has no atoms or non-finite positions", self.shard_paths[shard], local, "positions")
        return frame

    def __getitem__(self, index: int) -> Graph:
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            try:
                return self._graph(i)
            except InputError as exc:
                if not self.skip_corrupt:
                    raise
                if str(exc) not in self._reported:
                    self._reported.add(str(exc))
                    import sys
                    print(f"mlip: skipping unreadable frame: {exc}", file=sys.stderr)
        raise InputError("no readable frame in any shard", self.shard_paths[0])

    def _graph(self, index: int) -> Graph:
        frame = self.read_frame(index)
        shard, local = self.locate(index)
        stored = self.graph_r_max[shard]
        if stored is not None and abs(stored - self.r_max) < 1e-12:
            h5, ptrs = self._file(shard)
            a, b = int(ptrs["edge_ptr"][local]), int(ptrs["edge_ptr"][local + 1])
            edge_index = h5["edge_index"][:, a:b].astype(np.int64)
            shifts = h5["edge_shift"][a:b].astype(np.int64)
            return frame_to_graph(frame, self.type_mapper, self.r_max, self.dtype, edges=(edge_index, shifts),
                                  min_distance=self.min_distance)
        return frame_to_graph(frame, self.type_mapper, self.r_max, self.dtype, min_distance=self.min_distance)

    def __getstate__(self):  # DataLoader workers (spawn) get no open handles
        state = dict(self.__dict__)
        state["_files"], state["_ptrs"] = {}, {}
        state["_info"] = None  # workers read frames; the flags are the trainer's business
        return state


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def iter_frames(paths: Sequence[str], **read_kwargs) -> Iterator[Frame]:
    """Frames of several files one file at a time (memory: one file's frames)."""
    from mlip.data.frames import read_frames

    for path in paths:
        yield from read_frames(path, **read_kwargs)
