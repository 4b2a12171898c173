"""The data of one training run: species, train/validation split, graphs and statistics.

One object for both sources a config may name:

* ASE/npz files: every frame read, split (``data.valid_file`` or a seeded ``valid_fraction``),
  every graph built once and held in memory;
* a folder of HDF5 shards (``mlip preprocess``): frames stay on disk and are read per batch;
  the split is by index, statistics come from the manifest's streaming pass (plus a seeded
  sample of training frames where it has none), so start-up does not read every frame.

Statistics (E0s in eV, force-RMS energy scale in eV/A, average neighbour count) always come
from the training split only; a resumed run takes the checkpoint's, a fine-tuning run the
foundation model's scale and neighbour count with E0s for the extended species list.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from mlip.errors import InputError
from mlip.train import data as D
from mlip.train import finetune as FT
from mlip.train.labels import check_coverage, format_coverage, weighted_labels
from mlip.train.statistics import Statistics, compute_statistics, infer_type_names, split_isolated

GraphSource = Union[D.GraphSet, D.HDF5GraphSet]
DEFAULT_R_MAX = 5.0  # what mlip.nn.build_model uses when model.r_max is not given


def run_r_max(cfg: Mapping[str, Any], resume: Optional[Mapping[str, Any]] = None,
              foundation: Optional[Mapping[str, Any]] = None) -> float:
    """The cutoff (Angstrom) the graphs are built with: the model's, wherever it comes from
    (the checkpoint being resumed, the foundation model, else the config's model section)."""
    if resume is not None:
        config = resume["model"]["config"]
    elif foundation is not None:
        config = foundation["config"]
    else:
        config = cfg["model"]
    return float(config.get("r_max", DEFAULT_R_MAX))


class TrainingData:
    """Species, splits and statistics of a run, read as the config says.

    ``resume``: the checkpoint being resumed (its species and statistics are kept), else None;
    ``foundation``: the model record being fine-tuned, else None. ``on_main(fn)`` runs ``fn``
    on rank 0 and hands its result to every rank (statistics are computed once).
    """

    def __init__(self, cfg: Mapping[str, Any], r_max: float, log: Callable[[str], None],
                 on_main: Callable[[Callable[[], Any]], Any], resume: Optional[Mapping[str, Any]] = None,
                 foundation: Optional[Mapping[str, Any]] = None):
        self.cfg, self.dcfg, self.r_max = cfg, cfg["data"], float(r_max)
        self.log = log
        self._resume, self._foundation = resume, foundation
        self.type_names: List[str] = []
        self.isolated: List[Any] = []
        self.train_set: GraphSource
        self.valid_set: GraphSource
        dcfg = self.dcfg
        isolated = D.read_config_file(cfg, dcfg["isolated_atoms_file"]) if dcfg["isolated_atoms_file"] else []
        if D.is_hdf5_folder(D.resolve_path(cfg, dcfg["train_file"])):
            compute, finetune_frames = self._read_hdf5(isolated)
        else:
            compute, finetune_frames = self._read_files(isolated)
        for path in dcfg["test_files"]:
            # parsed now (and dropped), so that a broken test file is reported before training,
            # not after it; scored at the end (test_sets)
            D.read_config_file(cfg, path)
        log(f"data: {D.data_summary({'train': self.train_set, 'valid': self.valid_set})}; "
            f"species {self.type_names}; r_max {self.r_max} A")
        self.stats = self._statistics(compute, finetune_frames, on_main)
        e0 = ", ".join(f"{s} {e:.6g}" for s, e in self.stats.e0_map().items())
        log(f"statistics: E0s ({self.stats.e0_method}) [eV] {e0}; energy scale (force RMS) "
            f"{self.stats.energy_scale:.4g} eV/A; avg neighbours {self.stats.avg_num_neighbors:.4g}")
        self._resume = self._foundation = None  # free memory

    # --- species and splits --------------------------------------------------------------------

    def _choose_type_names(self, inferred: Callable[[], List[str]]) -> List[str]:
        """Resume: the checkpoint's; fine-tuning: the foundation's plus new ones; else config or data."""
        if self._resume is not None:
            return list(self._resume["model"]["type_names"])
        if self._foundation is not None:
            return FT.union_type_names(self._foundation["type_names"], self.dcfg["type_names"] or inferred())
        return list(self.dcfg["type_names"] or inferred())

    def _read_files(self, isolated: List[Any]):
        """ASE/npz files: every graph built once and held in memory."""
        cfg, dcfg, r_max = self.cfg, self.dcfg, self.r_max
        frames = D.read_config_file(cfg, dcfg["train_file"], dcfg["train_index"])
        found_isolated, frames = split_isolated(frames, r_max)
        isolated = found_isolated + isolated
        if not frames:
            raise InputError("no training structures (besides isolated atoms)", D.resolve_path(cfg, dcfg["train_file"]))
        if dcfg["valid_file"]:
            if D.is_hdf5_folder(D.resolve_path(cfg, dcfg["valid_file"])):
                raise InputError("an HDF5 folder as valid_file needs an HDF5 folder as train_file too",
                                 key="data.valid_file")
            train_frames = frames
            valid_frames = split_isolated(D.read_config_file(cfg, dcfg["valid_file"]), r_max)[1]
        else:
            tr, va = D.split_indices(len(frames), dcfg["valid_fraction"], cfg["seed"])
            train_frames, valid_frames = [frames[i] for i in tr], [frames[i] for i in va]
        self.type_names = type_names = self._choose_type_names(lambda: infer_type_names(train_frames + valid_frames))
        self.isolated = isolated
        self.train_set = D.GraphSet("train", train_frames)
        self.valid_set = D.GraphSet("valid", valid_frames)
        self.check_labels()  # before the neighbour lists, the costly part
        self.train_set.build(type_names, r_max, dcfg["min_distance"])
        self.valid_set.build(type_names, r_max, dcfg["min_distance"])

        def compute() -> Statistics:
            return compute_statistics(train_frames, self.train_set.graphs, type_names, dcfg["E0s"], isolated,
                                      num_valid=len(valid_frames))

        return compute, lambda: train_frames

    def _read_hdf5(self, isolated: List[Any]):
        """A folder of HDF5 shards: frames stay on disk; statistics from the manifest."""
        import numpy as np

        from mlip.data.hdf5 import HDF5Dataset, read_manifest
        from mlip.train.statistics import statistics_from_manifest

        cfg, dcfg, r_max = self.cfg, self.dcfg, self.r_max
        train_path = D.resolve_path(cfg, dcfg["train_file"])
        if dcfg["train_index"] != ":":
            raise InputError("selects frames of an ASE file; an HDF5 folder is used whole (write a folder "
                             "with the frames you want using `mlip preprocess`)", key="data.train_index")
        manifest = read_manifest(train_path)
        valid_path = D.resolve_path(cfg, dcfg["valid_file"]) if dcfg["valid_file"] else None
        valid_manifest = None
        if valid_path is not None and D.is_hdf5_folder(valid_path):
            valid_manifest = read_manifest(valid_path)

        def inferred() -> List[str]:
            from ase.data import atomic_numbers

            symbols = set((manifest.get("statistics") or {}).get("species", {}))
            if valid_manifest is not None:
                symbols |= set((valid_manifest.get("statistics") or {}).get("species", {}))
            return sorted(symbols, key=lambda s: atomic_numbers[s])

        self.type_names = type_names = self._choose_type_names(inferred)
        self.isolated = isolated

        def dataset(path: str) -> HDF5Dataset:
            return HDF5Dataset(path, type_names, r_max, torch.float64, skip_corrupt=dcfg["skip_corrupt"],
                               min_distance=dcfg["min_distance"])

        train_data = dataset(train_path)
        if valid_path is None:
            tr, va = D.split_indices(len(train_data), dcfg["valid_fraction"], cfg["seed"])
            self.train_set = D.HDF5GraphSet("train", train_data, tr)
            self.valid_set = D.HDF5GraphSet("valid", train_data, va)
        else:
            self.train_set = D.HDF5GraphSet("train", train_data)
            if valid_manifest is not None:
                self.valid_set = D.HDF5GraphSet("valid", dataset(valid_path))
            else:
                frames = split_isolated(D.read_config_file(cfg, dcfg["valid_file"]), r_max)[1]
                self.valid_set = D.GraphSet("valid", frames)
        self.check_labels()
        if isinstance(self.valid_set, D.GraphSet):
            self.valid_set.build(type_names, r_max, dcfg["min_distance"])

        @functools.lru_cache(maxsize=1)
        def sample(limit: int = 1000):
            """A seeded sample of training frames and graphs, for what the manifest lacks."""
            rng = np.random.default_rng(cfg["seed"])
            picks = np.sort(rng.choice(len(self.train_set), size=min(limit, len(self.train_set)), replace=False))
            frames = [train_data.read_frame(int(self.train_set.indices[i])) for i in picks]
            graphs = [self.train_set.graphs[int(i)] for i in picks]
            return frames, graphs

        def compute() -> Statistics:
            stats, where = statistics_from_manifest(manifest, type_names, dcfg["E0s"], isolated, sample, r_max,
                                                    num_train=len(self.train_set), num_valid=len(self.valid_set),
                                                    whole_folder_is_training=valid_path is not None)
            self.log(f"statistics of {train_path}: {where}")
            return stats

        return compute, lambda: sample()[0]

    def check_labels(self) -> None:
        """Log which structures carry which labels; a label with a positive loss weight that a
        split lacks is an error naming the key looked for (and the first structure without it)."""
        cfg, dcfg = self.cfg, self.dcfg
        weights = weighted_labels(cfg["loss"], cfg["stage_two"])
        splits = [("train", self.train_set, dcfg["train_file"]),
                  ("validation", self.valid_set, dcfg["valid_file"] or dcfg["train_file"])]
        coverage = [(name, s.coverage(), D.resolve_path(cfg, path)) for name, s, path in splits if len(s)]
        self.log("labels: " + "; ".join(f"{name} {format_coverage(c)}" for name, c, _ in coverage))
        for name, c, path in coverage:
            check_coverage(name, c, weights, D.label_key_names(cfg, path), path, dcfg["allow_partial_labels"])

    # --- statistics ----------------------------------------------------------------------------

    def _statistics(self, compute: Callable[[], Statistics], finetune_frames: Callable[[], Sequence[Any]],
                    on_main: Callable[[Callable[[], Any]], Any]) -> Statistics:
        if self._resume is not None:
            return Statistics.from_dict(self._resume["statistics"])
        if self._foundation is not None:
            return on_main(lambda: self._finetune_statistics(finetune_frames()))

        # computed once, on rank 0, and broadcast: one set of numbers by construction
        def on_rank0() -> Statistics:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                stats = compute()
            for w in caught:
                self.log(f"warning: {w.message}")
            return stats

        return on_main(on_rank0)

    def _finetune_statistics(self, train_frames: Sequence[Any]) -> Statistics:
        """E0s for the extended species list; scale and neighbour count of the foundation model."""
        f = self._foundation
        fcfg = f["config"]
        old = list(f["type_names"])
        old_e0s = fcfg.get("atomic_energy_shifts", 0.0)
        if not isinstance(old_e0s, (list, tuple)):
            old_e0s = [float(old_e0s)] * len(old)
        e0s, method = FT.e0s_for(old, old_e0s, self.type_names, self.dcfg["E0s"],
                                 self.cfg["finetune"]["e0s"], train_frames, self.isolated)
        scales = fcfg.get("atomic_energy_scales", 1.0)
        scale = float(sum(scales) / len(scales)) if isinstance(scales, (list, tuple)) and scales else float(scales)
        new = [s for s in self.type_names if s not in old]
        self.log(f"fine-tuning {self.cfg['finetune']['from']}: species {old}" +
                 (f" + new {new}" if new else "") + "; keeping its avg_num_neighbors and energy scales")
        return Statistics(type_names=list(self.type_names), e0s=[float(e) for e in e0s], e0_method=method,
                          energy_scale=scale, avg_num_neighbors=float(fcfg.get("avg_num_neighbors", 1.0)),
                          num_train=len(train_frames), num_valid=len(self.valid_set))

    # --- after training ------------------------------------------------------------------------

    def test_sets(self) -> List[Tuple[str, GraphSource]]:
        """The sets scored after training: validation (when not empty), then each test file."""
        sets: List[Tuple[str, GraphSource]] = []
        if len(self.valid_set):
            sets.append(("valid", self.valid_set))
        for path in self.dcfg["test_files"]:
            name = D.file_stem(path)
            frames = D.read_config_file(self.cfg, path)
            sets.append((name, D.GraphSet(name, frames).build(self.type_names, self.r_max,
                                                              self.dcfg["min_distance"])))
        return sets


__all__ = ["TrainingData", "GraphSource", "run_r_max"]
