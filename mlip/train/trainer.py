"""The training loop: data and statistics, model, optimiser, schedule, EMA, checkpoints, resume.

A run directory (``output_dir``) holds::

    config.yaml          the resolved config (every default filled in)
    statistics.json      E0s (eV), energy scale, average neighbour count, split sizes
    log.txt              the lines printed to the terminal
    metrics.csv          one row per epoch: loss and MAE/RMSE of energy per atom (eV/atom), total
                         energy (eV), forces (eV/A), stress (eV/A^3) on train and validation
    checkpoints/         ckpt-<step>-e<epoch>.pt: everything needed to continue exactly
    best_model.pt        EMA weights of the epoch with the best weighted validation metric
    last_model.pt        EMA weights at the end of training
    learning_curve.png   loss and RMSEs per epoch
    test/                per-structure CSV, metrics and parity plots of each test file

Exact resume: the order of structures in an epoch is a function of (seed, epoch), a checkpoint
stores the number of batches already done in the current epoch plus every state that changes
(weights, optimiser, schedule, EMA, RNGs, partial epoch metrics, history), so a resumed run
repeats the uninterrupted one bit for bit on the CPU.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

from mlip.checkpoint import FORMAT, atomic_file, ensure_writable_dir, model_record, save_model_file
from mlip.errors import InputError, StorageError, TrainingDiverged
from mlip.nn.build import (ARCHITECTURES, DEFAULT_ARCHITECTURE, canonical_model_config, get_architecture,
                             model_config_error)
from mlip.train import data as D
from mlip.train import distributed as dist_utils
from mlip.train import finetune as FT
from mlip.train.checkpoints import CheckpointDir, rng_state, seed_everything, set_rng_state
from mlip.train.config import MODEL_SECTION, dump_config
from mlip.train.distributed import reduce_accumulator, resolve_device
from mlip.train.ema import EMA
from mlip.train.evaluation import predict, write_outputs
from mlip.train.labels import check_coverage, format_coverage, weighted_labels
from mlip.train.loss import LossWeights, compute_loss, loss_sums
from mlip.train.metrics import ErrorAccumulator, QUANTITIES, format_errors, format_table, weighted_metric
from mlip.train.run_log import Logger, WandbLogger
from mlip.train.schedule import LRSchedule
from mlip.train.statistics import Statistics, compute_statistics, infer_type_names, split_isolated

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_R_MAX = 5.0  # what mlip.nn.build_model uses when model.r_max is not given

# config entries that must match a checkpoint for a resume to make sense
_FIXED_ON_RESUME = ("seed", "dtype", MODEL_SECTION, "finetune")
_FIXED_DATA = ("root", "train_file", "train_index", "valid_file", "valid_fraction", "isolated_atoms_file",
               "keys", "units", "npz_keys", "type_names", "batch_size", "E0s", "format")

HISTORY_COLUMNS = (["epoch", "stage", "lr", "time_s", "energy_weight", "forces_weight", "stress_weight"]
                   + [f"{split}_{name}" for split in ("train", "valid")
                      for name in ["loss"] + [f"{q}_{k}" for q in QUANTITIES for k in ("mae", "rmse")]]
                   + ["metric", "best"])


class Trainer:
    """One training run from a validated config (see :mod:`mlip.train.config`)."""

    def __init__(self, cfg: Dict[str, Any], resume: Optional[bool] = None, echo: bool = True):
        """``resume``: True = must resume, None = resume when the run directory has a checkpoint,
        False = refuse to start over an existing run."""
        self.cfg = cfg
        self.run_dir = cfg["output_dir"]
        # under torchrun: one process per GPU (or CPU share); rank 0 alone writes files
        self.dist, dist_device = dist_utils.setup(cfg["device"])
        self.is_main = self.dist.is_main
        ensure_writable_dir(self.run_dir)  # before any data is read
        self.log = Logger(os.path.join(self.run_dir, "log.txt") if self.is_main else None, echo and self.is_main)
        self.ckpts = CheckpointDir(os.path.join(self.run_dir, "checkpoints"), cfg["train"]["keep_checkpoints"])
        self.device = dist_device if dist_device is not None else resolve_device(cfg["device"])
        self.dtype = DTYPES[cfg["dtype"]]
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = bool(cfg["allow_tf32"])
            torch.backends.cudnn.allow_tf32 = bool(cfg["allow_tf32"])
        self.progress_bar = bool(cfg["logging"]["progress_bar"]) and echo and self.is_main
        if self.dist.enabled:
            self.log(f"distributed: {self.dist.world_size} processes ({self.dist.backend}), global batch "
                     f"{cfg['data']['batch_size']} structures split over them")
        self._load_resume()
        if self._resume_obj is None and resume:
            raise InputError(f"--resume given but no checkpoint found in {self.ckpts.folder}")
        if self._resume_obj is not None and resume is False:
            raise InputError(f"{self.run_dir} already holds a run; choose another output_dir or remove it")
        if self._resume_obj is not None:
            self._check_resume_config(self._resume_obj["config"])
        seed_everything(cfg["seed"])
        self.foundation = None
        if cfg["finetune"]["from"] and self._resume_obj is None:
            self.foundation = FT.load_foundation(os.path.expanduser(cfg["finetune"]["from"]))
        self._setup_data()
        self._setup_model()
        self._setup_optim()
        self.stopped_early = False
        self.out_of_time = False
        self._t_start: Optional[float] = None
        self.last_checkpoint: Optional[str] = None
        self.wandb: Optional[WandbLogger] = None
        if self._resume_obj is not None:
            self._load_state(self._resume_obj)
            self.last_checkpoint = self._resume_path
        self._resume_obj = None  # free memory

    # --- set-up -------------------------------------------------------------------------------

    def _load_resume(self) -> None:
        """The newest checkpoint: found (and corrupt ones set aside) by rank 0, read by every rank.
        A folder whose checkpoints are all unreadable is an error (see CheckpointDir.load_latest)."""
        found: Dict[str, Any] = {}

        def on_main() -> Optional[str]:
            found["obj"], path = self.ckpts.load_latest(self.log)
            return path

        path = self._on_main(on_main)
        obj = found.get("obj")
        if path is not None and obj is None:
            from mlip.checkpoint import load_file

            obj = load_file(path)
        self._resume_obj, self._resume_path = obj, path

    def _on_main(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0, its result (or its InputError) on every rank."""
        if not self.dist.enabled:
            return fn()
        result: Any = None
        if self.is_main:
            try:
                result = ("ok", fn())
            except InputError as exc:
                result = ("error", exc)
        result = dist_utils.broadcast_object(result, self.dist)
        if result[0] == "error":
            raise result[1]
        return result[1]

    def _r_max(self) -> float:
        if self._resume_obj is not None:
            config = self._resume_obj["model"]["config"]
        elif self.foundation is not None:
            config = self.foundation["config"]
        else:
            config = self.cfg[MODEL_SECTION]
        return float(config.get("r_max", DEFAULT_R_MAX))

    def _check_resume_config(self, old: Mapping[str, Any]) -> None:
        cfg = self.cfg
        from mlip.train.config import SCHEMA

        # runs from before the finetune section existed were not fine-tuned
        old = dict(old, finetune=old.get("finetune", {k: f.default for k, f in SCHEMA["finetune"].items()}))
        fixed = [k for k in _FIXED_ON_RESUME if old.get(k) != cfg.get(k)]
        fixed += [f"data.{k}" for k in _FIXED_DATA if old["data"].get(k) != cfg["data"].get(k)]
        if fixed:
            raise InputError(f"{self.run_dir} holds a run whose config differs in {', '.join(fixed)}; "
                             "resuming would not continue that run. Use another output_dir, or delete "
                             f"{self.ckpts.folder} to start over")
        changed = []
        for section in cfg:
            if isinstance(cfg[section], dict):
                for key in cfg[section]:
                    if old.get(section, {}).get(key) != cfg[section][key]:
                        changed.append(f"{section}.{key}: {old.get(section, {}).get(key)!r} -> {cfg[section][key]!r}")
            elif old.get(section) != cfg[section]:
                changed.append(f"{section}: {old.get(section)!r} -> {cfg[section]!r}")
        if changed:
            self.log("config changed since the checkpoint, continuing with: " + "; ".join(changed))

    def _setup_data(self) -> None:
        cfg, dcfg = self.cfg, self.cfg["data"]
        r_max = self._r_max()
        self.r_max = r_max
        isolated = D.read_config_file(cfg, dcfg["isolated_atoms_file"]) if dcfg["isolated_atoms_file"] else []
        if D.is_hdf5_folder(D.resolve_path(cfg, dcfg["train_file"])):
            compute, finetune_frames = self._setup_hdf5_data(isolated)
        else:
            compute, finetune_frames = self._setup_file_data(isolated)
        for path in dcfg["test_files"]:
            # parsed now (and dropped), so that a broken test file is reported before training,
            # not after it; scored at the end (final_evaluation)
            D.read_config_file(cfg, path)
        self.log(f"data: {D.data_summary({'train': self.train_set, 'valid': self.valid_set})}; "
                 f"species {self.type_names}; r_max {r_max} A")
        if self._resume_obj is not None:
            self.stats = Statistics.from_dict(self._resume_obj["statistics"])
        elif self.foundation is not None:
            self.stats = self._on_main(lambda: self._finetune_statistics(finetune_frames(), self.isolated,
                                                                         len(self.valid_set)))
        else:
            # computed once, on rank 0, and broadcast: one set of numbers by construction
            def on_main() -> Statistics:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    stats = compute()
                for w in caught:
                    self.log(f"warning: {w.message}")
                return stats

            self.stats = self._on_main(on_main)
        e0 = ", ".join(f"{s} {e:.6g}" for s, e in self.stats.e0_map().items())
        self.log(f"statistics: E0s ({self.stats.e0_method}) [eV] {e0}; energy scale (force RMS) "
                 f"{self.stats.energy_scale:.4g} eV/A; avg neighbours {self.stats.avg_num_neighbors:.4g}")
        if self.is_main:
            with atomic_file(os.path.join(self.run_dir, "statistics.json"), "w") as fh:
                json.dump(self.stats.to_dict(), fh, indent=1)
            dump_config(self.cfg, os.path.join(self.run_dir, "config.yaml"))

    def _type_names(self, inferred: Callable[[], List[str]]) -> List[str]:
        """Resume: the checkpoint's; fine-tuning: the foundation's plus new ones; else config or data."""
        dcfg = self.cfg["data"]
        if self._resume_obj is not None:
            return list(self._resume_obj["model"]["type_names"])
        if self.foundation is not None:
            return FT.union_type_names(self.foundation["type_names"], dcfg["type_names"] or inferred())
        return list(dcfg["type_names"] or inferred())

    def _setup_file_data(self, isolated: List[Any]):
        """ASE/npz files: every graph built once and held in memory."""
        cfg, dcfg, r_max = self.cfg, self.cfg["data"], self.r_max
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
        self.type_names = type_names = self._type_names(lambda: infer_type_names(train_frames + valid_frames))
        self.isolated = isolated
        self.train_set = D.GraphSet("train", train_frames)
        self.valid_set = D.GraphSet("valid", valid_frames)
        self._check_labels()  # before the neighbour lists, the costly part
        self.train_set.build(type_names, r_max, dcfg["min_distance"])
        self.valid_set.build(type_names, r_max, dcfg["min_distance"])

        def compute() -> Statistics:
            return compute_statistics(train_frames, self.train_set.graphs, type_names, dcfg["E0s"], isolated,
                                      num_valid=len(valid_frames))

        return compute, lambda: train_frames

    def _setup_hdf5_data(self, isolated: List[Any]):
        """A folder of HDF5 shards (``mlip preprocess``): frames stay on disk and are read per batch.

        Statistics come from the manifest's streaming pass (and a sample where it has none), so
        start-up does not read every frame; the validation split is by index.
        """
        import numpy as np

        from mlip.data.hdf5 import HDF5Dataset, read_manifest
        from mlip.train.statistics import statistics_from_manifest

        cfg, dcfg, r_max = self.cfg, self.cfg["data"], self.r_max
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

        self.type_names = type_names = self._type_names(inferred)
        self.isolated = isolated
        dataset = HDF5Dataset(train_path, type_names, r_max, torch.float64, skip_corrupt=dcfg["skip_corrupt"],
                              min_distance=dcfg["min_distance"])
        if valid_path is None:
            tr, va = D.split_indices(len(dataset), dcfg["valid_fraction"], cfg["seed"])
            self.train_set = D.HDF5GraphSet("train", dataset, tr)
            self.valid_set = D.HDF5GraphSet("valid", dataset, va)
        else:
            self.train_set = D.HDF5GraphSet("train", dataset)
            if valid_manifest is not None:
                self.valid_set = D.HDF5GraphSet("valid", HDF5Dataset(valid_path, type_names, r_max, torch.float64,
                                                                     skip_corrupt=dcfg["skip_corrupt"],
                                                                     min_distance=dcfg["min_distance"]))
            else:
                frames = split_isolated(D.read_config_file(cfg, dcfg["valid_file"]), r_max)[1]
                self.valid_set = D.GraphSet("valid", frames)
        self._check_labels()
        if isinstance(self.valid_set, D.GraphSet):
            self.valid_set.build(type_names, r_max, dcfg["min_distance"])

        @functools.lru_cache(maxsize=1)
        def sample(limit: int = 1000):
            """A seeded sample of training frames and graphs, for what the manifest lacks."""
            rng = np.random.default_rng(cfg["seed"])
            picks = np.sort(rng.choice(len(self.train_set), size=min(limit, len(self.train_set)), replace=False))
            frames = [dataset.read_frame(int(self.train_set.indices[i])) for i in picks]
            graphs = [self.train_set.graphs[int(i)] for i in picks]
            return frames, graphs

        def compute() -> Statistics:
            stats, where = statistics_from_manifest(manifest, type_names, dcfg["E0s"], isolated, sample, r_max,
                                                    num_train=len(self.train_set), num_valid=len(self.valid_set),
                                                    whole_folder_is_training=valid_path is not None)
            self.log(f"statistics of {train_path}: {where}")
            return stats

        return compute, lambda: sample()[0]

    def _check_labels(self) -> None:
        """Log which structures carry which labels; a label with a positive loss weight that a
        split lacks is an error naming the key looked for (and the first structure without it)."""
        cfg, dcfg = self.cfg, self.cfg["data"]
        weights = weighted_labels(cfg["loss"], cfg["stage_two"])
        splits = [("train", self.train_set, dcfg["train_file"]),
                  ("validation", self.valid_set, dcfg["valid_file"] or dcfg["train_file"])]
        coverage = [(name, s.coverage(), D.resolve_path(cfg, path)) for name, s, path in splits if len(s)]
        self.log("labels: " + "; ".join(f"{name} {format_coverage(c)}" for name, c, _ in coverage))
        for name, c, path in coverage:
            check_coverage(name, c, weights, D.label_key_names(cfg, path), path, dcfg["allow_partial_labels"])

    def _finetune_statistics(self, train_frames, isolated, num_valid: int) -> Statistics:
        """E0s for the extended species list; scale and neighbour count of the foundation model."""
        f = self.foundation
        fcfg = f["config"]
        old = list(f["type_names"])
        old_e0s = fcfg.get("atomic_energy_shifts", 0.0)
        if not isinstance(old_e0s, (list, tuple)):
            old_e0s = [float(old_e0s)] * len(old)
        e0s, method = FT.e0s_for(old, old_e0s, self.type_names, self.cfg["data"]["E0s"],
                                 self.cfg["finetune"]["e0s"], train_frames, isolated)
        scales = fcfg.get("atomic_energy_scales", 1.0)
        scale = float(sum(scales) / len(scales)) if isinstance(scales, (list, tuple)) and scales else float(scales)
        new = [s for s in self.type_names if s not in old]
        self.log(f"fine-tuning {self.cfg['finetune']['from']}: species {old}" +
                 (f" + new {new}" if new else "") + "; keeping its avg_num_neighbors and energy scales")
        return Statistics(type_names=list(self.type_names), e0s=[float(e) for e in e0s], e0_method=method,
                          energy_scale=scale, avg_num_neighbors=float(fcfg.get("avg_num_neighbors", 1.0)),
                          num_train=len(train_frames), num_valid=int(num_valid))

    def _setup_model(self) -> None:
        from mlip.nn import build_model

        try:  # NequIP's and MACE's names of the hyperparameters are read as mlip's
            user_model, notes = canonical_model_config(self.cfg[MODEL_SECTION])
        except ValueError as exc:
            raise model_config_error(exc, self.cfg[MODEL_SECTION]) from None
        for note in notes:
            self.log(note)
        if self._resume_obj is not None:
            self.model_config = dict(self._resume_obj["model"]["config"])
        elif self.foundation is not None:
            FT.check_model_section(user_model, self.foundation["config"])
            self.model_config = FT.finetune_model_config(self.foundation, self.type_names, self.stats.e0s)
            for key, value in user_model.items():
                if key in FT.RUNTIME_MODEL_KEYS:
                    self.model_config[key] = value
        else:
            self.model_config = dict(user_model)
            for key, value in self.stats.model_entries().items():
                if key in user_model:
                    self.log(f"model.{key} given in the config: not replaced by the computed statistic")
                else:
                    self.model_config[key] = value
        try:
            model = build_model(self.model_config, self.type_names, self.dtype)
        except (TypeError, ValueError) as exc:
            raise model_config_error(exc, self.model_config) from None
        if abs(float(model.r_max) - self.r_max) > 1e-12:
            raise InputError(f"the model's r_max {model.r_max} differs from the one the graphs were built with "
                             f"({self.r_max}); set model.r_max explicitly", key="model.r_max")
        ft = self.cfg["finetune"]
        if self.foundation is not None:
            fresh = {k: v.clone() for k, v in model.state_dict().items()}
            with torch.no_grad():
                report = FT.transfer_weights(model, self.foundation["state_dict"], len(self.foundation["type_names"]),
                                             len(self.type_names))
            self.log(f"fine-tuning: {len(report['copied'])} tensors copied, {len(report['species_rows'])} with "
                     "new species rows freshly initialised" + (f" ({', '.join(report['species_rows'])})"
                                                               if report["species_rows"] else ""))
            if ft["reset_head"]:
                names = FT.reset_head(model, fresh)
                self.log(f"fine-tuning: readout re-initialised ({', '.join(names)})")
            self.foundation = None  # free memory
        if ft["freeze"]:
            frozen = FT.freeze_parameters(model, ft["freeze"])
            self.log(f"fine-tuning: {len(frozen)} parameter tensors frozen ({', '.join(frozen)})")
        self.model = model.to(self.device)
        n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.log(f"model: {self.model_config.get('architecture', DEFAULT_ARCHITECTURE)}, {n_params} trained parameters, "
                 f"{self.cfg['dtype']}, device {self.device}")
        if self.device.type == "cpu":
            # build (first use on this machine, ~10 s) or load the fused CPU kernels now, before any
            # timing or time budget starts
            from mlip.ops.cpu_message import load_cpu_kernel
            reason = load_cpu_kernel()
            self.log("CPU kernels: fused C++ message step" if reason is None
                     else f"CPU kernels: not available ({reason}); plain torch")
        self.train_model: Callable[..., Dict[str, torch.Tensor]] = self.model
        self.sync_gradients = False  # True: all-reduce gradients by hand (compiled step under torchrun)
        if self.cfg["train"]["compile"]:
            arch = get_architecture(self.model_config.get("architecture", DEFAULT_ARCHITECTURE))
            if not arch.supports_compile:
                able = sorted(a.name for a in ARCHITECTURES.values() if a.supports_compile)
                raise InputError(f"not supported for architecture '{arch.name}' (supported: {', '.join(able)}); "
                                 "its forward pass cannot be traced into one graph", key="train.compile")
            from mlip.nn.compiled import CompiledPotential

            backend = os.environ.get("MLIP_COMPILE_BACKEND", "inductor")
            self.train_model = CompiledPotential(self.model, backend=None if backend == "none" else backend)
            self.log("train.compile: training steps run a traced and compiled graph (the first step of each "
                     "batch-size pattern compiles it)")
            # the compiled step bypasses a DDP wrapper's forward, whose hooks would sync the
            # gradients: start from rank 0's weights and average the gradients explicitly
            dist_utils.broadcast_parameters(self.model, self.dist)
            self.sync_gradients = self.dist.enabled
        elif self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # forces are autograd.grad(create_graph=True) w.r.t. positions inside forward; the
            # parameters get their gradients only in the loss's backward, where DDP's hooks fire
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.ema = EMA(self.model, self.cfg["ema"]["decay"]) if self.cfg["ema"]["enabled"] else None

    def _setup_optim(self) -> None:
        o = self.cfg["optim"]
        params = [p for p in self.model.parameters() if p.requires_grad]
        cls = torch.optim.AdamW if o["optimizer"] == "adamw" else torch.optim.Adam
        self.optimizer = cls(params, lr=o["lr"], betas=tuple(o["betas"]), weight_decay=o["weight_decay"],
                             amsgrad=o["amsgrad"])
        self.batches_per_epoch = math.ceil(len(self.train_set) / self.cfg["data"]["batch_size"])
        st = self.cfg["stage_two"]
        self.schedule = LRSchedule(self.cfg["schedule"], o["lr"], self.batches_per_epoch, o["max_epochs"],
                                   st["start_epoch"] if st["enabled"] else None, st["lr"])
        # training position and the state that goes with it
        self.epoch = 0            # the epoch in progress (0-based)
        self.step_in_epoch = 0    # batches of it already done
        self.global_step = 0
        self.epoch_acc = ErrorAccumulator()
        self.epoch_time = 0.0
        self.history: List[Dict[str, float]] = []
        self.best_metric = math.inf
        self.best_epoch = -1
        self.bad_validations = 0
        self.wandb_id: Optional[str] = None

    # --- checkpoint state -----------------------------------------------------------------------

    def _record(self, state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
        return model_record(self.model_config, self.type_names, self.cfg["dtype"], state_dict)

    def _eval_model(self) -> torch.nn.Module:
        return self.ema.model if self.ema is not None else self.model

    def checkpoint_state(self) -> Dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self._record(self.model.state_dict()),
            "ema_state_dict": ({k: v.detach().cpu() for k, v in self.ema.model.state_dict().items()}
                               if self.ema is not None else None),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "epoch_metrics": self.epoch_acc.state_dict(),
            "epoch_time": self.epoch_time,
            "history": [dict(h) for h in self.history],
            "best": {"metric": self.best_metric, "epoch": self.best_epoch, "bad_validations": self.bad_validations,
                     "stopped_early": self.stopped_early},
            "wandb_id": self.wandb_id,
            "config": self.cfg,
            "statistics": self.stats.to_dict(),
        }

    def _storage_error(self, exc: StorageError) -> StorageError:
        """``exc`` plus what is still intact and how to go on."""
        last = self.last_checkpoint or "(none yet)"
        return StorageError(f"{exc}. Training stopped after step {self.global_step}; the last good checkpoint "
                            f"{last} is intact: make room, then run the same `mlip train` command again to resume "
                            "from it")

    def save_checkpoint(self) -> str:
        """Rank 0 writes; every rank must call this (the partial epoch metrics are gathered first)."""
        self._gather_epoch_metrics()
        if self.is_main:
            try:
                self.last_checkpoint = self.ckpts.save(self.checkpoint_state(), self.global_step, self.epoch)
            except StorageError as exc:
                raise self._storage_error(exc) from None
        else:
            self.last_checkpoint = self.ckpts.path_for(self.global_step, self.epoch)
        return self.last_checkpoint

    def _gather_epoch_metrics(self) -> None:
        """Sum the ranks' metric accumulators into rank 0's (the others restart from zero), so
        that rank 0's copy, which checkpoints store, holds the whole partial epoch."""
        if not self.dist.enabled:
            return
        self.epoch_acc = reduce_accumulator(self.epoch_acc, self.dist, keep=self.is_main)

    def _load_state(self, obj: Mapping[str, Any]) -> None:
        self.model.load_state_dict(obj["model"]["state_dict"])
        if self.ema is not None:
            if obj.get("ema_state_dict") is not None and obj.get("ema") is not None:
                self.ema.load_state_dict(obj["ema"], obj["ema_state_dict"])
            else:
                self.ema.load_state_dict({"num_updates": 0}, obj["model"]["state_dict"])
        self.optimizer.load_state_dict(obj["optimizer"])
        self.schedule.load_state_dict(obj["schedule"])
        self.epoch = int(obj["epoch"])
        self.step_in_epoch = int(obj["step_in_epoch"])
        self.global_step = int(obj["global_step"])
        if self.is_main:  # rank 0's accumulator holds the sums of all ranks (see save_checkpoint)
            self.epoch_acc.load_state_dict(obj["epoch_metrics"])
        self.epoch_time = float(obj.get("epoch_time", 0.0))
        self.history = [dict(h) for h in obj["history"]]
        best = obj["best"]
        self.best_metric, self.best_epoch = float(best["metric"]), int(best["epoch"])
        self.bad_validations = int(best["bad_validations"])
        self.stopped_early = bool(best.get("stopped_early", False))
        self.wandb_id = obj.get("wandb_id")
        set_rng_state(obj["rng"])
        self.log(f"resumed from {self._resume_path}: epoch {self.epoch}, batch {self.step_in_epoch}/"
                 f"{self.batches_per_epoch}, step {self.global_step}")
        # the CSV may hold a row for an epoch the checkpoint had not finished: rewrite it from history
        if self.is_main:
            self._write_csv()

    # --- the loop -----------------------------------------------------------------------------

    def stage(self, epoch: int) -> int:
        s2 = self.schedule.stage_two_epoch
        return 2 if s2 is not None and epoch >= s2 else 1

    def loss_weights(self, epoch: int) -> LossWeights:
        lc, st = self.cfg["loss"], self.cfg["stage_two"]
        if self.stage(epoch) == 2:
            return LossWeights(st["energy_weight"], st["forces_weight"],
                               lc["stress_weight"] if st["stress_weight"] is None else st["stress_weight"])
        return LossWeights(lc["energy_weight"], lc["forces_weight"], lc["stress_weight"])

    def _loss(self, weights: LossWeights):
        lc = self.cfg["loss"]
        return lambda out, batch, counts=None: compute_loss(out, batch, weights, lc["energy_per_atom"], lc["type"],
                                                            lc["huber_delta"], counts=counts)

    def _time_is_up(self) -> bool:
        budget = self.cfg["train"]["max_time_minutes"]
        return (budget is not None and self._t_start is not None
                and time.perf_counter() - self._t_start > 60.0 * budget)

    def _diverged(self, what: str, idx: List[int]) -> TrainingDiverged:
        where = self.last_checkpoint or "(none yet: the run diverged before its first checkpoint)"
        return TrainingDiverged(
            f"training stopped: {what} at epoch {self.epoch}, batch {self.step_in_epoch + 1}/{self.batches_per_epoch} "
            f"(step {self.global_step + 1}; structures {D.describe_sources(self.train_set.sources, idx)}). "
            f"The weights were not updated with this batch. Last good checkpoint: {where}. "
            "Try a lower optim.lr, a smaller optim.clip_grad_norm or loss weights, float64, or check these "
            "structures' labels; `mlip train` resumes from that checkpoint.")

    def train_epoch(self) -> None:
        cfg = self.cfg
        weights = self.loss_weights(self.epoch)
        loss_fn = self._loss(weights)
        need_stress = weights.stress > 0 and self.train_set.has_stress()
        clip = cfg["optim"]["clip_grad_norm"]
        every = cfg["train"]["checkpoint_every_steps"]
        order = D.epoch_permutation(cfg["seed"], self.epoch, len(self.train_set))
        batches = D.batch_indices(order, cfg["data"]["batch_size"])
        params = [p for p in self.model.parameters() if p.requires_grad]
        # this rank's share of each remaining global batch; a rank left without structures (last
        # batch smaller than the world) runs one structure with zero weight, so that it takes
        # part in the gradient all-reduce
        remaining = batches[self.step_in_epoch:]
        to_load = ([dist_utils.shard(idx, self.dist) or idx[:1] for idx in remaining] if self.dist.enabled
                   else remaining)
        stream = D.collated_batches(self.train_set.graphs, to_load, cfg["data"]["num_workers"])
        bar = None
        if self.progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=len(batches), initial=self.step_in_epoch, leave=False, dynamic_ncols=True,
                       desc=f"epoch {self.epoch}", file=sys.stderr)
        self.model.train()
        t0 = time.perf_counter()
        try:
            while self.step_in_epoch < len(batches):
                idx = batches[self.step_in_epoch]
                lr = self.schedule.lr(self.epoch, self.global_step)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                batch = D.to_device(next(stream), self.device, self.dtype)
                if self.dist.enabled:
                    # this rank's loss is its part of the global batch's loss: sums over its
                    # structures / label counts of the whole batch (known from labels alone)
                    local = dist_utils.shard(idx, self.dist)
                    counts = self.train_set.label_counts(idx, weights)
                    out = self.train_model(batch, compute_forces=True, compute_stress=need_stress, training=True)
                    loss, _ = loss_fn(out, batch, counts)
                    if not local:
                        loss = loss * 0.0
                    # one all-reduce: the batch's loss and whether any rank ran out of time
                    loss_value, time_up = dist_utils.all_reduce_sum([float(loss.detach()), float(self._time_is_up())],
                                                                    self.dist)
                    time_up = time_up > 0
                    # DDP averages the ranks' gradients: scale so that their sum is what counts
                    backward_loss = loss * self.dist.world_size
                else:
                    local = idx
                    out = self.train_model(batch, compute_forces=True, compute_stress=need_stress, training=True)
                    loss, _ = loss_fn(out, batch)
                    loss_value = float(loss.detach())
                    time_up = self._time_is_up()
                    backward_loss = loss
                if not math.isfinite(loss_value):
                    raise self._diverged(f"the loss is {loss_value}", idx)
                self.optimizer.zero_grad(set_to_none=True)
                backward_loss.backward()
                if self.sync_gradients:
                    dist_utils.average_gradients(params, self.dist)
                # the norm is needed anyway to catch inf/NaN gradients before they reach the weights
                norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else math.inf)
                if not math.isfinite(float(norm)):
                    raise self._diverged(f"the gradient norm is {float(norm)}", idx)
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update(self.model)
                self.global_step += 1
                self.step_in_epoch += 1
                if local:
                    self.epoch_acc.update(out, batch)
                if self.is_main:
                    self.epoch_acc.add_loss(loss_value, len(idx))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss_value:.4g}", lr=f"{lr:.2g}", refresh=False)
                if time_up:
                    self.out_of_time = True
                    break
                if every and self.global_step % every == 0 and self.step_in_epoch < len(batches):
                    self.epoch_time += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.save_checkpoint()
        finally:
            stream.close()  # stops DataLoader workers still reading ahead
            if bar is not None:
                bar.close()
        self.epoch_time += time.perf_counter() - t0

    def validate(self, weights: LossWeights) -> Dict[str, float]:
        """Errors of the EMA (or plain) model on the validation set; the loss is that of the whole
        set (each term: sum over the set / label count of the set), independent of the batching.
        Under DDP each rank scores every world_size-th structure and the sums are all-reduced."""
        if not len(self.valid_set):
            return {}
        lc = self.cfg["loss"]
        model = self._eval_model()
        model.eval()
        need_stress = self.valid_set.has_stress()
        mine = dist_utils.shard(range(len(self.valid_set)), self.dist)
        acc = ErrorAccumulator()
        terms = [n for n in ("energy", "forces", "stress") if getattr(weights, n) > 0]
        loss_parts = [0.0] * (2 * len(terms))
        for _, batch in D.iterate_batches(self.valid_set.graphs, self.cfg["data"]["valid_batch_size"], self.device,
                                          self.dtype, indices=mine, workers=self.cfg["data"]["num_workers"]):
            with torch.enable_grad():  # forces and stress are gradients
                out = model(batch, compute_forces=True, compute_stress=need_stress, training=False)
            out = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in out.items()}
            acc.update(out, batch)
            w = weights if need_stress or weights.stress == 0 else LossWeights(weights.energy, weights.forces, 0.0)
            sums = loss_sums(out, batch, w, lc["energy_per_atom"], lc["type"], lc["huber_delta"])
            for i, name in enumerate(terms):
                if name in sums:
                    loss_parts[2 * i] += float(sums[name][0])
                    loss_parts[2 * i + 1] += float(sums[name][1])
        acc = reduce_accumulator(acc, self.dist, keep=True)
        loss_parts = dist_utils.all_reduce_sum(loss_parts, self.dist)
        metrics = acc.result()
        metrics["loss"] = sum(getattr(weights, name) * loss_parts[2 * i] / max(loss_parts[2 * i + 1], 1e-12)
                              for i, name in enumerate(terms))
        return metrics

    def end_epoch(self) -> bool:
        """Validate, log, track the best model; returns False when training should stop."""
        cfg = self.cfg
        epoch, max_epochs = self.epoch, cfg["optim"]["max_epochs"]
        weights = self.loss_weights(epoch)
        self._gather_epoch_metrics()
        # every rank needs the totals: the best-model choice and the schedule depend on them
        train_metrics = reduce_accumulator(self.epoch_acc, self.dist, keep=True).result()
        do_valid = len(self.valid_set) > 0 and ((epoch + 1) % cfg["train"]["valid_every"] == 0
                                                or epoch + 1 == max_epochs)
        valid_metrics = self.validate(weights) if do_valid else {}
        # epochs are counted from 1 in everything the user reads (log, CSV, plots)
        row: Dict[str, float] = {"epoch": epoch + 1, "stage": self.stage(epoch),
                                 "lr": self.optimizer.param_groups[0]["lr"], "time_s": round(self.epoch_time, 3),
                                 "energy_weight": weights.energy, "forces_weight": weights.forces,
                                 "stress_weight": weights.stress}
        row.update({f"train_{k}": v for k, v in train_metrics.items()})
        row.update({f"valid_{k}": v for k, v in valid_metrics.items()})
        selection = cfg["train"]["best_metric_weights"]
        judged = valid_metrics if do_valid else (train_metrics if not len(self.valid_set) else None)
        is_best = False
        if judged is not None:
            metric = weighted_metric(judged, selection)
            row["metric"] = metric
            if metric < self.best_metric:
                self.best_metric, self.best_epoch, is_best = metric, epoch, True
                self.bad_validations = 0
                if self.is_main:
                    self._save_model_file("best_model.pt", {"epoch": epoch, "metric": metric, "metrics": judged})
            else:
                self.bad_validations += 1
            if self.schedule.end_epoch(epoch, judged.get("loss", metric)):
                self.log(f"plateau: learning rate reduced to {self.schedule.plateau_lr:.3g}")
        row["best"] = int(is_best)
        row = {k: row.get(k, math.nan) for k in HISTORY_COLUMNS}
        self.history.append(row)
        if self.is_main:
            self._write_csv()
        if self.wandb is not None:
            self.wandb.log(row)
        line = (f"epoch {epoch + 1:>4d}/{max_epochs}  loss {train_metrics['loss']:.4g}  "
                f"train {format_errors(train_metrics)}")
        if valid_metrics:
            line += f"  valid {format_errors(valid_metrics)}"
        line += f"  lr {row['lr']:.3g}  {self.epoch_time:.1f}s" + ("  *best" if is_best else "")
        self.log(line)
        # move on to the next epoch before the checkpoint, so that resuming starts there
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_acc = ErrorAccumulator()
        self.epoch_time = 0.0
        keep_going = self.epoch < max_epochs
        patience = cfg["train"]["early_stopping_patience"]
        if keep_going and patience is not None and self.bad_validations >= patience:
            st = self.schedule.stage_two_epoch
            if st is not None and self.epoch < st:
                self.log(f"no improvement for {patience} validations: starting stage two now (epoch {self.epoch})")
                self.schedule.stage_two_epoch = self.epoch
                self.bad_validations = 0
            else:
                self.log(f"early stopping: no improvement for {patience} validations")
                self.stopped_early = True
                keep_going = False
        self.save_checkpoint()
        if epoch % 10 == 9 and self.is_main:
            self.write_learning_curve()
        return keep_going

    def fit(self) -> Dict[str, Any]:
        """Train to ``optim.max_epochs`` (or early stopping); returns where the results are."""
        cfg = self.cfg
        self._t_start = time.perf_counter()
        if cfg["logging"]["wandb"] and self.is_main:
            self.wandb = WandbLogger(cfg, self.run_dir, self.wandb_id)
            self.wandb_id = self.wandb.id
        max_epochs = cfg["optim"]["max_epochs"]
        st = self.schedule.stage_two_epoch
        if st is not None and st >= max_epochs:
            self.log(f"warning: stage_two.start_epoch {st} >= optim.max_epochs {max_epochs}: stage two will not run")
        if self.epoch == 0 and self.step_in_epoch == 0 and self.global_step == 0:
            self.log(f"training {max_epochs} epochs of {self.batches_per_epoch} batches; errors are RMSE: "
                     "E meV/atom, F meV/A, S meV/A^3")
            self.save_checkpoint()
        keep_going = self.epoch < max_epochs and not self.stopped_early
        if not keep_going:
            self.log(f"nothing to train: the run in {self.run_dir} has finished "
                     f"({'early stopping' if self.stopped_early else f'{self.epoch} epochs'}); raise "
                     "optim.max_epochs to continue it")
        try:
            while keep_going:
                st = self.schedule.stage_two_epoch
                if st is not None and self.epoch == st and self.step_in_epoch == 0:
                    w = self.loss_weights(self.epoch)
                    self.log(f"stage two from epoch {self.epoch + 1}: lr {cfg['stage_two']['lr']:.3g}, loss weights "
                             f"energy {w.energy:g} forces {w.forces:g} stress {w.stress:g}")
                self.train_epoch()
                if self.step_in_epoch >= self.batches_per_epoch:
                    keep_going = self.end_epoch()
                if self.out_of_time:
                    budget = cfg["train"]["max_time_minutes"]
                    self.log(f"time budget of {budget:g} min reached after step {self.global_step} (epoch "
                             f"{self.epoch + (1 if self.step_in_epoch else 0)}, batch {self.step_in_epoch}/"
                             f"{self.batches_per_epoch}): stopping; `mlip train` on this run directory continues")
                    if self.step_in_epoch:
                        self.save_checkpoint()  # the exact position inside the epoch, for a resume
                    keep_going = False
        finally:
            if self.is_main:
                self.write_learning_curve()
            if self.wandb is not None:
                self.wandb.finish()
        last = os.path.join(self.run_dir, "last_model.pt")
        best = os.path.join(self.run_dir, "best_model.pt")
        results: Dict[str, Dict[str, float]] = {}
        if self.is_main:
            self._save_model_file("last_model.pt", {"epoch": self.epoch - 1, "global_step": self.global_step})
            if not os.path.exists(best):
                best = last
            results = self.final_evaluation(best)
        dist_utils.barrier(self.dist)
        if not os.path.exists(best):
            best = last
        return {"best_model": best, "last_model": last, "run_dir": self.run_dir, "results": results,
                "best_epoch": self.best_epoch, "checkpoint": self.last_checkpoint,
                "stopped_by_time": self.out_of_time, "global_step": self.global_step}

    # --- outputs ------------------------------------------------------------------------------

    def _save_model_file(self, name: str, info: Mapping[str, Any]) -> str:
        path = os.path.join(self.run_dir, name)
        weights = self._eval_model().state_dict()
        try:
            save_model_file(path, self._record(weights), {"statistics": self.stats.to_dict(),
                                                          "training": dict(info)})
        except StorageError as exc:
            raise self._storage_error(exc) from None
        return path

    def _write_csv(self) -> None:
        try:
            with atomic_file(os.path.join(self.run_dir, "metrics.csv"), "w") as fh:
                self._write_rows(fh)
        except StorageError as exc:
            raise self._storage_error(exc) from None

    def _write_rows(self, fh) -> None:
        writer = csv.writer(fh)
        writer.writerow(HISTORY_COLUMNS)
        for h in self.history:
            writer.writerow(["" if isinstance(h.get(k), float) and math.isnan(h[k]) else
                             (f"{h[k]:.8g}" if isinstance(h.get(k), float) else h.get(k, ""))
                             for k in HISTORY_COLUMNS])

    def write_learning_curve(self) -> Optional[str]:
        from mlip.train.plots import learning_curve

        try:
            return learning_curve(self.history, os.path.join(self.run_dir, "learning_curve.png"),
                                  self.schedule.stage_two_epoch if self.cfg["stage_two"]["enabled"] else None)
        except Exception as exc:  # a plot must never cost a run
            self.log(f"warning: learning curve not written ({type(exc).__name__}: {exc})")
            return None

    def final_evaluation(self, model_path: str) -> Dict[str, Dict[str, float]]:
        """Score the best model on the validation set and every test file; print a table."""
        from mlip.checkpoint import load_model

        model = load_model(model_path, device=str(self.device))
        model.eval()
        bs = self.cfg["data"]["valid_batch_size"]
        rows: Dict[str, Dict[str, float]] = {}
        out_dir = os.path.join(self.run_dir, "test")
        sets = []
        if len(self.valid_set):
            sets.append(("valid", self.valid_set))
        for path in self.cfg["data"]["test_files"]:
            frames = D.read_config_file(self.cfg, path)
            sets.append((D.file_stem(path), D.GraphSet(D.file_stem(path), frames).build(
                self.type_names, self.r_max, self.cfg["data"]["min_distance"])))
        for name, gs in sets:
            pred = predict(model, gs.graphs, bs, self.device, gs.has_stress(), sources=gs.sources, keep=True)
            write_outputs(pred, out_dir, name)
            rows[name] = pred.metrics
        if rows:
            self.log(f"errors of {os.path.basename(model_path)} (EMA weights):\n{format_table(rows)}")
        self.log(f"model: {model_path}\nlearning curve: {os.path.join(self.run_dir, 'learning_curve.png')}\n"
                 f"metrics per epoch: {os.path.join(self.run_dir, 'metrics.csv')}"
                 + (f"\nparity plots and per-structure errors: {out_dir}" if rows else ""))
        return rows


def train(cfg: Dict[str, Any], resume: Optional[bool] = None, echo: bool = True) -> Dict[str, Any]:
    """Run (or continue) the training described by a validated config (under torchrun: this
    process's part of it; the process group is closed at the end)."""
    try:
        return Trainer(cfg, resume=resume, echo=echo).fit()
    finally:
        dist_utils.cleanup()
