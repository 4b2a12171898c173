"""Exact resume: training checkpoints (numbered files written atomically, the newest readable one
resumed), what they hold (training_checkpoint / restore_training) and the RNG states.

Files are ``<run>/checkpoints/ckpt-<global step>-e<epoch>.pt``; the ``keep`` newest are kept.
Each is a plain dict (tensors, numbers, strings, lists, dicts) read with
``torch.load(weights_only=True)`` through :func:`mlip.checkpoint.load_file`. A file that does
not load (truncated by a full disk, say) is renamed ``*.corrupt`` and the previous one is used;
when none loads, resuming stops with an error instead of starting over.
"""
from __future__ import annotations

import glob
import os
import random
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from mlip.checkpoint import FORMAT, atomic_save, load_file
from mlip.errors import InputError

_NAME = re.compile(r"^ckpt-(\d+)-e(\d+)\.pt$")
# config entries that must match a checkpoint for a resume to make sense
FIXED_ON_RESUME = ("seed", "dtype", "model", "finetune")
FIXED_DATA_ON_RESUME = ("root", "train_file", "train_index", "valid_file", "valid_fraction", "isolated_atoms_file",
                        "keys", "units", "npz_keys", "type_names", "batch_size", "E0s", "format")
REQUIRED = ("model", "optimizer", "epoch", "step_in_epoch", "global_step", "rng", "config", "statistics")


class CheckpointDir:
    """The checkpoints of one run."""

    def __init__(self, folder: str, keep: int = 2):
        self.folder = folder
        self.keep = max(1, int(keep))

    def path_for(self, global_step: int, epoch: int) -> str:
        return os.path.join(self.folder, f"ckpt-{global_step:010d}-e{epoch:05d}.pt")

    def list(self) -> List[str]:
        """Checkpoint paths, oldest first."""
        paths = [p for p in glob.glob(os.path.join(self.folder, "ckpt-*.pt")) if _NAME.match(os.path.basename(p))]
        return sorted(paths)

    def save(self, obj: Dict[str, Any], global_step: int, epoch: int) -> str:
        """Write atomically (temporary file, fsync, rename), then drop all but the newest ``keep``."""
        path = self.path_for(global_step, epoch)
        atomic_save(obj, path)
        for old in self.list()[:-self.keep]:
            if old != path:
                try:
                    os.unlink(old)
                except FileNotFoundError:
                    pass
        return path

    def load_latest(self, log: Callable[[str], None] = print) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
        """The newest checkpoint that loads and has every training entry, or (None, None) when
        the folder holds none.

        Unreadable newer files are renamed ``*.corrupt``, with a warning naming each and why,
        once an older readable one is found. If no file is readable, nothing is renamed and an
        :class:`InputError` lists them: starting over would silently discard the run.
        """
        # temporary files of a write that was killed midway are never valid checkpoints
        for tmp in glob.glob(os.path.join(self.folder, ".tmp-*")):
            try:
                os.unlink(tmp)
            except OSError:
                pass
        rejected: List[Tuple[str, InputError]] = []
        for path in reversed(self.list()):
            try:
                obj = load_file(path)
                missing = [k for k in REQUIRED if k not in obj]
                if missing:
                    raise InputError(f"a model file, not a training checkpoint (missing {missing})", path)
            except InputError as exc:
                rejected.append((path, exc))
                continue
            for bad, exc in rejected:
                log(f"warning: skipping unreadable checkpoint ({exc}); renamed to {os.path.basename(bad)}.corrupt; "
                    f"resuming from the previous one, {os.path.basename(path)}")
                os.replace(bad, bad + ".corrupt")
            return obj, path
        if rejected:
            reasons = "; ".join(str(exc) for _, exc in rejected)
            raise InputError(f"no readable checkpoint to resume from: {reasons}. Nothing was changed. Put a good "
                             f"checkpoint back, or delete {self.folder} to start this run over from epoch 0",
                             self.folder)
        return None, None


# --- random number generator states as tensors (weights_only-loadable) -----------------------

def rng_state() -> Dict[str, Any]:
    """torch, CUDA, numpy and Python RNG states as tensors and numbers."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _with_defaults(old: Mapping[str, Any], schema: Mapping[str, Any], skip: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """``old`` with the schema's default for every key it lacks (nested sections too)."""
    out = dict(old)
    for key, sub in schema.items():
        if key in skip:
            continue
        if isinstance(sub, dict):
            out[key] = _with_defaults(old.get(key) or {}, sub)
        elif key not in out:
            out[key] = sub.default
    return out


def resume_config_changes(old: Mapping[str, Any], cfg: Mapping[str, Any], run_dir: str, folder: str) -> List[str]:
    """What changed in the config since the checkpoint (``section.key: old -> new``) for the log;
    an InputError when a change would make the resumed run another run (data, model, seed, dtype)."""
    from mlip.train.config import MODEL_SECTION, SCHEMA

    # keys added to the schema since the checkpoint was written read as their defaults, so a
    # run started with an older mlip resumes (e.g. a finetune section: not fine-tuned)
    old = _with_defaults(old, SCHEMA, skip=(MODEL_SECTION,))
    fixed = [k for k in FIXED_ON_RESUME if old.get(k) != cfg.get(k)]
    fixed += [f"data.{k}" for k in FIXED_DATA_ON_RESUME if old["data"].get(k) != cfg["data"].get(k)]
    if fixed:
        raise InputError(f"{run_dir} holds a run whose config differs in {', '.join(fixed)}; "
                         "resuming would not continue that run. Use another output_dir, or delete "
                         f"{folder} to start over")
    changed = []
    for section in cfg:
        if isinstance(cfg[section], dict):
            for key in cfg[section]:
                if old.get(section, {}).get(key) != cfg[section][key]:
                    changed.append(f"{section}.{key}: {old.get(section, {}).get(key)!r} -> {cfg[section][key]!r}")
        elif old.get(section) != cfg[section]:
            changed.append(f"{section}: {old.get(section)!r} -> {cfg[section]!r}")
    return changed


def find_resume(ckpts: CheckpointDir, log: Callable[[str], None], dist: Any, resume: Optional[bool],
                cfg: Mapping[str, Any]) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """The newest checkpoint and its path, or (None, None): found (and corrupt ones set aside)
    by rank 0, read by every rank. All unreadable is an error (see CheckpointDir.load_latest).

    ``resume``: True = a checkpoint must exist, False = none may, None = either. A checkpoint
    whose config differs where it matters is an error; other changes are logged."""
    from mlip.train.distributed import on_main

    found: Dict[str, Any] = {}

    def on_rank0() -> Optional[str]:
        found["obj"], path = ckpts.load_latest(log)
        return path

    path = on_main(on_rank0, dist)
    obj = found.get("obj")
    if path is not None and obj is None:  # another rank: read the file rank 0 chose
        obj = load_file(path)
    run_dir = cfg["output_dir"]
    if obj is None and resume:
        raise InputError(f"--resume given but no checkpoint found in {ckpts.folder}")
    if obj is not None and resume is False:
        raise InputError(f"{run_dir} already holds a run; choose another output_dir or remove it")
    if obj is not None:
        changed = resume_config_changes(obj["config"], cfg, run_dir, ckpts.folder)
        if changed:
            log("config changed since the checkpoint, continuing with: " + "; ".join(changed))
    return obj, path


def training_checkpoint(model_record: Dict[str, Any], ema: Any, optimizer: torch.optim.Optimizer, schedule: Any,
                        state: Any, cfg: Mapping[str, Any], statistics: Mapping[str, Any]) -> Dict[str, Any]:
    """Everything a run needs to continue exactly: the raw weights' record (``model``), EMA
    weights and counter, optimiser, schedule, RNGs, position and history (``state``), config
    and statistics. Plain containers and tensors only (loaded with ``weights_only=True``)."""
    return {
        "format": FORMAT,
        "model": model_record,
        "ema_state_dict": ({k: v.detach().cpu() for k, v in ema.model.state_dict().items()}
                           if ema is not None else None),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "rng": rng_state(),
        **state.state_dict(),
        "config": cfg,
        "statistics": dict(statistics),
    }


def restore_training(obj: Mapping[str, Any], model: torch.nn.Module, ema: Any, optimizer: torch.optim.Optimizer,
                     schedule: Any, state: Any, with_epoch_metrics: bool) -> None:
    """Put a :func:`training_checkpoint` back into the run's objects (RNGs last). A checkpoint
    without EMA entries starts the EMA from its raw weights."""
    model.load_state_dict(obj["model"]["state_dict"])
    if ema is not None:
        if obj.get("ema_state_dict") is not None and obj.get("ema") is not None:
            ema.load_state_dict(obj["ema"], obj["ema_state_dict"])
        else:
            ema.load_state_dict({"num_updates": 0}, obj["model"]["state_dict"])
    optimizer.load_state_dict(obj["optimizer"])
    schedule.load_state_dict(obj["schedule"])
    state.load_state_dict(obj, with_epoch_metrics=with_epoch_metrics)
    set_rng_state(obj["rng"])
