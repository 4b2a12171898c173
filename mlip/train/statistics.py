"""Statistics of the training data that are stored in the model.

* ``E0s`` (eV per species): reference energies that the model adds per atom, from isolated-atom
  structures, from a least-squares fit of total energies on species counts, or given.
* ``energy_scale`` (eV/A x 1 A = eV): the RMS of the training force components. The network's
  per-atom output is multiplied by it, so the network itself works in unit-variance terms.
* ``avg_num_neighbors``: edges per atom within ``r_max``; messages are divided by it.

The three go into the model section as ``atomic_energy_shifts``, ``atomic_energy_scales`` and
``avg_num_neighbors``, which every architecture accepts.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from mlip.data.frames import Frame
from mlip.data.statistics import StreamingStatistics, solve_e0s
from mlip.errors import InputError


@dataclass
class Statistics:
    """What the trainer computed from the data (plain values; JSON- and checkpoint-safe)."""

    type_names: List[str]
    e0s: List[float]             # eV, one per type in type_names order
    e0_method: str               # "isolated", "least_squares" or "given"
    energy_scale: float          # eV (force RMS in eV/A times 1 A)
    avg_num_neighbors: float     # edges per atom
    num_train: int
    num_valid: int

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Statistics":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def e0_map(self) -> Dict[str, float]:
        return dict(zip(self.type_names, self.e0s))

    def model_entries(self) -> Dict[str, Any]:
        """The model-config entries these statistics fill in."""
        return {"avg_num_neighbors": float(self.avg_num_neighbors),
                "atomic_energy_shifts": [float(e) for e in self.e0s],
                "atomic_energy_scales": [float(self.energy_scale)] * len(self.type_names)}


def infer_type_names(frames: Sequence[Frame]) -> List[str]:
    """Chemical symbols present in ``frames``, sorted by atomic number."""
    from ase.data import chemical_symbols

    zs = sorted({int(z) for f in frames for z in np.unique(f.numbers)})
    return [chemical_symbols[z] for z in zs]


def is_isolated_atom(frame: Frame, r_max: float) -> bool:
    """One atom that sees no neighbour (not even its own periodic image) within ``r_max``.

    A one-atom periodic crystal (e.g. a primitive fcc cell) has neighbours and is not isolated.
    """
    if len(frame) != 1:
        return False
    if not frame.pbc.any():
        return True
    from mlip.data.neighbors import neighbor_list

    edge_index, _ = neighbor_list(frame.positions, frame.cell, frame.pbc, r_max, frame.source)
    return edge_index.shape[1] == 0


def split_isolated(frames: Sequence[Frame], r_max: float) -> Tuple[List[Frame], List[Frame]]:
    """(isolated-atom frames, all others)."""
    iso, rest = [], []
    for f in frames:
        (iso if is_isolated_atom(f, r_max) else rest).append(f)
    return iso, rest


def species_counts(frames: Sequence[Frame], type_names: Sequence[str]) -> np.ndarray:
    """[frames, types] number of atoms of each species."""
    from mlip.data.frames import chemical_symbols_to_types

    z_to_t = chemical_symbols_to_types(type_names)
    counts = np.zeros((len(frames), len(type_names)))
    for i, f in enumerate(frames):
        for z, n in zip(*np.unique(f.numbers, return_counts=True)):
            counts[i, z_to_t[int(z)]] = n
    return counts


def e0s_least_squares(frames: Sequence[Frame], type_names: Sequence[str]) -> np.ndarray:
    """Per-species energies (eV) minimising sum over frames of (E - sum_s n_s E0_s)^2, computed
    as ``mlip preprocess`` computes them for HDF5 folders (:mod:`mlip.data.statistics`).

    When compositions are collinear (e.g. one molecule, or one element) the system is rank
    deficient and the minimum-norm solution is returned, with a warning: the model then learns
    the rest, which is fine for training but makes the E0s not physical isolated-atom energies.
    """
    from ase.data import atomic_numbers

    labelled = [f for f in frames if f.energy is not None]
    if not labelled:
        raise InputError("E0s: least_squares needs training structures with energies; none have one",
                         key="data.E0s")
    acc = StreamingStatistics()
    for f in labelled:
        acc.add(f)
    zs = [atomic_numbers[s] for s in type_names]
    missing = [s for s, z in zip(type_names, zs) if acc.species[z] == 0]
    if missing:
        raise InputError(f"E0s: species {missing} never occur in labelled training structures; give "
                         "their E0s as a mapping {symbol: eV}", key="data.E0s")
    solution, rank = solve_e0s(acc.ata[np.ix_(zs, zs)], acc.atb[zs])
    if rank < len(type_names):
        warnings.warn(f"E0s: species counts have rank {rank} < {len(type_names)} species (same composition "
                      "throughout?); using the minimum-norm least-squares E0s", stacklevel=2)
    return solution


def e0s_from_isolated(isolated: Sequence[Frame], type_names: Sequence[str]) -> np.ndarray:
    """E0 of each species from its single-atom structure (the mean if there are several)."""
    from ase.data import chemical_symbols

    sums = {s: [] for s in type_names}
    for f in isolated:
        if f.energy is None:
            continue
        sym = chemical_symbols[int(f.numbers[0])]
        if sym in sums:
            sums[sym].append(f.energy)
    missing = [s for s, v in sums.items() if not v]
    if missing:
        raise InputError(f"E0s: isolated needs a single-atom structure with an energy for every species; "
                         f"missing {missing} (put them in the training file or data.isolated_atoms_file, or "
                         "use E0s: least_squares)", key="data.E0s")
    return np.array([float(np.mean(sums[s])) for s in type_names])


def e0s_given(mapping: Mapping[str, float], type_names: Sequence[str]) -> np.ndarray:
    missing = [s for s in type_names if s not in mapping]
    if missing:
        raise InputError(f"E0s: no energy given for species {missing}", key="data.E0s")
    return np.array([float(mapping[s]) for s in type_names])


def force_rms(frames: Sequence[Frame]) -> Optional[float]:
    """RMS of all force components (eV/A), or None without forces."""
    sq, n = 0.0, 0
    for f in frames:
        if f.forces is not None:
            sq += float(np.sum(f.forces ** 2))
            n += f.forces.size
    return math.sqrt(sq / n) if n else None


def residual_energy_std(frames: Sequence[Frame], type_names: Sequence[str], e0s: np.ndarray) -> Optional[float]:
    """Std of (E - sum E0) / N over labelled frames (eV/atom): the scale when there are no forces."""
    labelled = [f for f in frames if f.energy is not None]
    if len(labelled) < 2:
        return None
    counts = species_counts(labelled, type_names)
    res = (np.array([f.energy for f in labelled]) - counts @ e0s) / counts.sum(1)
    return float(np.std(res))


def average_num_neighbors(graphs: Sequence[Mapping[str, Any]]) -> float:
    """Directed edges per atom over all graphs."""
    edges = sum(int(g["edge_index"].shape[1]) for g in graphs)
    atoms = sum(int(g["num_atoms"].sum()) for g in graphs)
    return edges / atoms if atoms else 1.0


def compute_statistics(train_frames: Sequence[Frame], train_graphs: Sequence[Mapping[str, Any]],
                       type_names: Sequence[str], e0_spec: Union[str, Mapping[str, float]],
                       isolated: Sequence[Frame] = (), num_valid: int = 0) -> Statistics:
    """All statistics from the training split (never the validation or test data)."""
    if isinstance(e0_spec, Mapping):
        e0s, method = e0s_given(e0_spec, type_names), "given"
    elif e0_spec == "isolated":
        e0s, method = e0s_from_isolated(isolated, type_names), "isolated"
    elif e0_spec == "least_squares":
        e0s, method = e0s_least_squares(train_frames, type_names), "least_squares"
    else:
        raise InputError(f"unknown E0s method {e0_spec!r}", key="data.E0s")
    scale = force_rms(train_frames)
    if scale is None:
        scale = residual_energy_std(train_frames, type_names, e0s)
    if scale is None or not math.isfinite(scale) or scale < 1e-6:
        scale = 1.0
    return Statistics(type_names=list(type_names), e0s=[float(e) for e in e0s], e0_method=method,
                      energy_scale=float(scale), avg_num_neighbors=float(average_num_neighbors(train_graphs)),
                      num_train=len(train_frames), num_valid=int(num_valid))


def statistics_from_manifest(manifest: Mapping[str, Any], type_names: Sequence[str],
                             e0_spec: Union[str, Mapping[str, float]], isolated: Sequence[Frame],
                             sample: Callable[[], Tuple[Sequence[Frame], Sequence[Mapping[str, Any]]]],
                             r_max: float, num_train: int, num_valid: int,
                             whole_folder_is_training: bool = True) -> Tuple[Statistics, str]:
    """Statistics of a preprocessed HDF5 folder without a pass over its frames.

    E0s (least squares) and the force RMS come from the streaming pass of ``mlip preprocess``
    (recorded in manifest.json; they cover every frame of the folder). The neighbour count comes
    from the manifest when its graphs were built with this ``r_max``. What the manifest lacks comes
    from ``sample()``: (frames, graphs) of a sample of training structures, called only then.
    When the validation split is taken out of the same folder (``whole_folder_is_training``
    False) the manifest's numbers would include it, so everything comes from the sample, computed
    as for an in-memory file (:func:`compute_statistics`).
    Returns the statistics and a sentence saying where each number came from.
    """
    if not whole_folder_is_training:
        frames, graphs = sample()
        stats_ = compute_statistics(frames, graphs, type_names, e0_spec, isolated, num_valid)
        stats_.num_train = int(num_train)
        return stats_, (f"E0s, energy scale and neighbour count from {len(frames)} sampled training structures "
                        "(the manifest's cover the validation split too)")
    stats = manifest.get("statistics") or {}
    notes = []
    if isinstance(e0_spec, Mapping):
        e0s, method = e0s_given(e0_spec, type_names), "given"
    elif e0_spec == "isolated":
        e0s, method = e0s_from_isolated(isolated, type_names), "isolated"
    elif e0_spec == "least_squares":
        fitted = stats.get("e0_least_squares") or {}
        missing = [s for s in type_names if s not in fitted]
        if missing:
            raise InputError(f"E0s: the manifest has no least-squares E0 for species {missing} (no labelled "
                             "structure contains them); give their E0s as a mapping {symbol: eV}", key="data.E0s")
        e0s, method = np.array([float(fitted[s]) for s in type_names]), "least_squares"
        notes.append("E0s from the manifest (all frames of the folder)")
    else:
        raise InputError(f"unknown E0s method {e0_spec!r}", key="data.E0s")
    scale = stats.get("force_rms")
    if scale is not None:
        notes.append("force RMS from the manifest")
    else:
        frames = sample()[0]
        scale = residual_energy_std(frames, type_names, e0s)
        notes.append(f"energy scale from {len(frames)} sampled structures")
    if scale is None or not math.isfinite(scale) or scale < 1e-6:
        scale = 1.0
    stored_r = manifest.get("graph_r_max")
    if stats.get("avg_num_neighbors") and stored_r is not None and abs(float(stored_r) - r_max) < 1e-12:
        avg = float(stats["avg_num_neighbors"])
        notes.append("neighbour count from the manifest")
    else:
        graphs = sample()[1]
        avg = average_num_neighbors(graphs)
        notes.append(f"neighbour count from {len(graphs)} sampled structures")
    return (Statistics(type_names=list(type_names), e0s=[float(e) for e in e0s], e0_method=method,
                       energy_scale=float(scale), avg_num_neighbors=float(avg), num_train=int(num_train),
                       num_valid=int(num_valid)), "; ".join(notes))
