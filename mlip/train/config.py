"""The training config: schema, defaults, ``--set`` overrides and strict validation.

A config is one YAML mapping with these sections (every key is optional unless marked)::

    seed, dtype, device, output_dir, allow_tf32     top-level scalars
    data       files, label key names, units, species, batch sizes, E0s
    model      passed to :func:`mlip.nn.build_model` as is (``architecture``, ``r_max``, ...)
    loss       energy/forces/stress weights, energy per atom, mse or huber
    optim      adam/adamw, lr, weight decay, amsgrad, gradient clipping, max_epochs
    schedule   constant, plateau or cosine, with linear warm-up
    ema        exponential moving average of the weights
    stage_two  from an epoch on: new loss weights and learning rate (MACE's "SWA" stage)
    train      validation/checkpoint frequency, early stopping, best-model metric, time budget
    finetune   start from a trained model: freeze parameters, new species (mlip.train.finetune)
    logging    progress bar, wandb

The cutoff ``r_max`` (Angstrom) lives in one place only: ``model.r_max``. The model owns it
(an exported model carries it) and the data graphs are built with the model's value.

Relative file paths are taken relative to ``data.root``, which is itself relative to the
current directory (default ``.``). Validation is strict: an unknown key is an error with a
"did you mean" suggestion, a wrong type or out-of-range value names the key and what is
allowed, and a missing file names its path. All errors are :class:`~mlip.errors.InputError`.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

from mlip.errors import InputError

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class Field:
    """One config value: its kind, default, allowed values or range, and a one-line doc."""

    kind: str                      # int, float, bool, str, choice, path, paths, symbols, e0s, mapping
    default: Any = None
    doc: str = ""
    choices: Tuple[Any, ...] = ()
    low: Optional[float] = None    # inclusive lower bound unless low_open
    high: Optional[float] = None   # inclusive upper bound
    low_open: bool = False
    nullable: bool = False


# ``model`` is a free-form mapping handed to the architecture; everything else is checked here.
MODEL_SECTION = "model"

SCHEMA: Dict[str, Any] = {
    "seed": Field("int", 1234, "seed of weights init, data split and shuffling"),
    "dtype": Field("choice", "float32", "dtype of weights and features", choices=("float32", "float64")),
    "device": Field("choice", "auto", "auto = cuda when available, else cpu", choices=("auto", "cpu", "cuda")),
    "allow_tf32": Field("bool", False, "TF32 matmuls on Ampere+ GPUs (faster, ~1e-3 relative error)"),
    "output_dir": Field("str", "runs/mlip", "run directory: checkpoints, metrics, model, plots"),
    "data": {
        "root": Field("str", ".", "folder that relative data paths are taken from (relative to the cwd)"),
        "train_file": Field("path", None, "training structures: an extxyz/ASE file, an rMD17 .npz, or a "
                            "folder written by `mlip preprocess` (sharded HDF5, read lazily)"),
        "train_index": Field("str", ":", "ASE index string selecting frames of train_file, e.g. '0:500'"),
        "valid_file": Field("path", None, "validation structures; alternative to valid_fraction", nullable=True),
        "valid_fraction": Field("float", 0.1, "fraction of train_file held out for validation (ignored "
                                "when valid_file is set)", low=0.0, high=1.0, low_open=False),
        "test_files": Field("paths", [], "structures to score the best model on after training"),
        "isolated_atoms_file": Field("path", None, "single-atom structures used only for E0s "
                                     "(with E0s: isolated)", nullable=True),
        "format": Field("str", None, "ASE file format when the extension is ambiguous", nullable=True),
        "keys": {
            "energy": Field("str", "energy", "name of the energy label (atoms.info or calculator)"),
            "forces": Field("str", "forces", "name of the forces label (atoms.arrays or calculator)"),
            "stress": Field("str", "stress", "name of the stress label (atoms.info or calculator)"),
        },
        "units": {
            "energy": Field("choice", None, "energy unit of the labels in the files (default: eV, "
                            "and kcal/mol for rMD17 .npz files)",
                            choices=("eV", "meV", "kcal/mol", "kJ/mol", "Hartree"), nullable=True),
            "length": Field("choice", "A", "length unit of positions and cells in the files",
                            choices=("A", "Angstrom", "Bohr", "nm")),
        },
        "npz_keys": {
            "positions": Field("str", "coords", "array of positions [frames, atoms, 3] in a .npz"),
            "energy": Field("str", "energies", "array of energies [frames] in a .npz"),
            "forces": Field("str", "forces", "array of forces [frames, atoms, 3] in a .npz"),
            "numbers": Field("str", "nuclear_charges", "array of atomic numbers in a .npz"),
        },
        "type_names": Field("symbols", None, "chemical symbols the model knows, in type order "
                            "(default: those in the training data, by atomic number)", nullable=True),
        "batch_size": Field("int", 4, "structures per training batch", low=1),
        "valid_batch_size": Field("int", 8, "structures per validation/test batch", low=1),
        "num_workers": Field("int", 0, "DataLoader processes that read HDF5 shards and build graphs ahead "
                             "of the training step (HDF5 folders only; 0 = in the training process)", low=0),
        "skip_corrupt": Field("bool", False, "HDF5 folders: replace an unreadable frame by the next readable "
                              "one (reported once) instead of stopping with an error naming shard and frame"),
        "min_distance": Field("float", 0.1, "two atoms closer than this (Angstrom) are an error naming the "
                              "structure (a duplicated atom gives NaN energies); 0 = no check", low=0.0),
        "allow_partial_labels": Field("bool", False, "accept structures that lack a label whose loss weight is "
                                      "positive (they train on their other labels); by default every training "
                                      "and validation structure must carry each weighted label"),
        "E0s": Field("e0s", "least_squares", "per-species reference energies (eV): 'isolated' (from "
                     "single-atom structures), 'least_squares' (fit to training energies) or "
                     "{symbol: eV}"),
    },
    "loss": {
        "energy_weight": Field("float", 1.0, "weight of the energy term", low=0.0),
        "forces_weight": Field("float", 10.0, "weight of the forces term", low=0.0),
        "stress_weight": Field("float", 0.0, "weight of the stress term", low=0.0),
        "energy_per_atom": Field("bool", True, "energy term on (E_pred - E_ref) / N_atoms"),
        "type": Field("choice", "mse", "per-component error function", choices=("mse", "huber")),
        "huber_delta": Field("float", 0.01, "Huber transition point (label units)", low=0.0, low_open=True),
    },
    "optim": {
        "optimizer": Field("choice", "adam", "optimiser", choices=("adam", "adamw")),
        "lr": Field("float", 0.005, "learning rate", low=0.0, low_open=True),
        "weight_decay": Field("float", 0.0, "weight decay (L2 for adam, decoupled for adamw)", low=0.0),
        "amsgrad": Field("bool", True, "AMSGrad variant"),
        "betas": Field("floats2", [0.9, 0.999], "Adam betas"),
        "clip_grad_norm": Field("float", 10.0, "clip the gradient norm to this (null = off)",
                                low=0.0, low_open=True, nullable=True),
        "max_epochs": Field("int", 100, "number of epochs", low=1),
    },
    "schedule": {
        "type": Field("choice", "plateau", "learning-rate schedule", choices=("constant", "plateau", "cosine")),
        "warmup_epochs": Field("float", 0.0, "linear warm-up from 0 to lr over this many epochs", low=0.0),
        "factor": Field("float", 0.8, "plateau: multiply lr by this on a plateau", low=0.0, high=1.0,
                        low_open=True),
        "patience": Field("int", 10, "plateau: epochs without improvement before reducing", low=0),
        "threshold": Field("float", 1e-4, "plateau: relative improvement that counts", low=0.0),
        "min_lr": Field("float", 0.0, "lower bound of the learning rate", low=0.0),
    },
    "ema": {
        "enabled": Field("bool", True, "validate and save exponential-moving-average weights"),
        "decay": Field("float", 0.99, "EMA decay per step", low=0.0, high=1.0),
    },
    "stage_two": {
        "enabled": Field("bool", False, "switch loss weights and lr from start_epoch on"),
        "start_epoch": Field("int", None, "number of stage-one epochs; stage two starts after them "
                             "(default 75% of max_epochs)",
                             low=0, nullable=True),
        "lr": Field("float", 0.001, "constant learning rate in stage two", low=0.0, low_open=True),
        "energy_weight": Field("float", 1000.0, "energy weight in stage two", low=0.0),
        "forces_weight": Field("float", 10.0, "forces weight in stage two", low=0.0),
        "stress_weight": Field("float", None, "stress weight in stage two (null = keep)", low=0.0,
                               nullable=True),
    },
    "train": {
        "compile": Field("bool", False, "trace energy + forces (+ stress) into one graph and compile it with "
                         "torch.compile/inductor for the training steps (NequIP models; "
                         "the first step of each batch-size pattern compiles, tens of seconds on a CPU). The "
                         "environment variable MLIP_COMPILE_BACKEND picks the torch.compile backend "
                         "(default inductor; 'none' runs the traced graph uncompiled, for debugging)"),
        "valid_every": Field("int", 1, "validate every this many epochs (and at the last one)", low=1),
        "checkpoint_every_steps": Field("int", 0, "also checkpoint every N optimiser steps (0 = per epoch only)",
                                        low=0),
        "keep_checkpoints": Field("int", 2, "number of newest checkpoints kept", low=2),
        "early_stopping_patience": Field("int", None, "stop after this many validations without a new "
                                         "best model (null = never)", low=1, nullable=True),
        "max_time_minutes": Field("float", None, "wall-clock budget of this process's training loop in "
                                  "minutes (null = none): training stops after the batch during which it "
                                  "runs out, then saves a checkpoint, last/best model and runs the final "
                                  "evaluation. Counted from the start of the loop (not data loading, not "
                                  "time of earlier runs that this one resumes)", low=0.0, low_open=True,
                                  nullable=True),
        "best_metric_weights": {
            "energy": Field("float", 1.0, "weight of the energy RMSE (eV/atom) in the selection metric", low=0.0),
            "forces": Field("float", 1.0, "weight of the forces RMSE (eV/A)", low=0.0),
            "stress": Field("float", 0.0, "weight of the stress RMSE (eV/A^3)", low=0.0),
        },
    },
    "finetune": {
        "from": Field("path", None, "model file or training checkpoint to start from (relative to the "
                      "current directory; null = random init); architecture, r_max, avg_num_neighbors and scales come from it", nullable=True),
        "freeze": Field("freeze", [], "parameters not trained: name prefixes (e.g. embedding, "
                        "energy_model.readout) or interaction-layer indices (0 = energy_model.layers.0)"),
        "reset_head": Field("bool", False, "re-initialise the readout parameters (names with 'readout')"),
        "e0s": Field("choice", "keep", "keep: the foundation's E0s for its species, new species from "
                     "data.E0s; data: all E0s from data.E0s", choices=("keep", "data")),
    },
    "logging": {
        "progress_bar": Field("bool", True, "tqdm progress bar over the batches of an epoch"),
        "wandb": Field("bool", False, "log metrics to Weights & Biases"),
        "wandb_project": Field("str", "mlip", "wandb project"),
        "wandb_name": Field("str", None, "wandb run name (default: output_dir's name)", nullable=True),
        "wandb_mode": Field("choice", "offline", "offline unless asked", choices=("offline", "online")),
    },
    MODEL_SECTION: {},
}

# keys users may expect in one place that live in another: a direct hint beats a guess
MOVED_KEYS = {
    ("data", "r_max"): "r_max is set once, in the model section: model.r_max",
    ("optim", "early_stopping_patience"): "use train.early_stopping_patience",
    ("data", "test_file"): "use data.test_files (a path or a list of paths)",
    ("data", "energy_key"): "use data.keys.energy",
    ("data", "forces_key"): "use data.keys.forces",
    ("data", "stress_key"): "use data.keys.stress",
    ("optim", "scheduler"): "use the schedule section: schedule.type",
    ("ema", "ema_decay"): "use ema.decay",
}

# statistics the trainer fills into the model section unless the user gave them
STAT_MODEL_KEYS = ("avg_num_neighbors", "atomic_energy_shifts", "atomic_energy_scales")


def _join(path: Sequence[str]) -> str:
    return ".".join(path)


def _all_paths(schema: Mapping[str, Any], prefix: Tuple[str, ...] = ()) -> List[Tuple[str, ...]]:
    out = []
    for key, sub in schema.items():
        out.append(prefix + (key,))
        if isinstance(sub, dict):
            out.extend(_all_paths(sub, prefix + (key,)))
    return out


def _unknown_key_error(path: Tuple[str, ...], level: Mapping[str, Any]) -> InputError:
    key = path[-1]
    where = _join(path)
    if path in MOVED_KEYS:
        return InputError(f"unknown key; {MOVED_KEYS[path]}", key=where)
    close = difflib.get_close_matches(key, list(level), n=1, cutoff=0.6)
    if close:
        return InputError(f"unknown key; did you mean '{_join(path[:-1] + (close[0],))}'?", key=where)
    # the right key in the wrong section: e.g. `lr` at the top level -> optim.lr
    elsewhere = [p for p in _all_paths(SCHEMA) if p[-1] == key and p != path]
    if not elsewhere:
        names = {p[-1]: p for p in _all_paths(SCHEMA)}
        close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.75)
        elsewhere = [names[c] for c in close]
    if elsewhere:
        return InputError(f"unknown key; did you mean '{_join(elsewhere[0])}'?", key=where)
    return InputError(f"unknown key; allowed here: {', '.join(sorted(level)) or '(none)'}", key=where)


def _type_name(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"


def _check_field(field: Field, value: Any, where: str) -> Any:
    """Return the value converted to its kind, or raise naming the key and what is allowed."""
    if value is None:
        if field.nullable:
            return None
        if field.kind in ("paths",):
            return []
        raise InputError(f"must be set ({field.doc})", key=where)
    kind = field.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise InputError(f"expected true or false, got {value!r} ({_type_name(value)})", key=where)
        return value
    if kind in ("int", "float"):
        # YAML 1.1 reads `1e-3` (no dot) as a string; accept anything that is plainly a number
        if isinstance(value, str) and _NUMBER.match(value.strip()):
            value = float(value) if kind == "float" or not re.match(r"^[+-]?\d+$", value.strip()) else int(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"expected {'an integer' if kind == 'int' else 'a number'}, got {value!r} "
                             f"({_type_name(value)})", key=where)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise InputError(f"expected an integer, got {value!r}", key=where)
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise InputError(f"must be finite, got {value!r}", key=where)
        _check_range(field, value, where)
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise InputError(f"expected a string, got {value!r} ({_type_name(value)})", key=where)
        return value
    if kind == "choice":
        if value not in field.choices or isinstance(value, bool):
            close = difflib.get_close_matches(str(value), [str(c) for c in field.choices], n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise InputError(f"{value!r} is not allowed; allowed values: "
                             f"{', '.join(str(c) for c in field.choices)}{hint}", key=where)
        return value
    if kind == "path":
        if not isinstance(value, str) or not value:
            raise InputError(f"expected a file path, got {value!r} ({_type_name(value)})", key=where)
        return value
    if kind == "paths":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
            raise InputError(f"expected a file path or a list of file paths, got {value!r}", key=where)
        return list(items)
    if kind == "freeze":
        items = value if isinstance(value, list) else [value]
        if not all((isinstance(v, str) and v) or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)
                   for v in items):
            raise InputError(f"expected a list of parameter-name prefixes or layer indices, got {value!r}",
                             key=where)
        return list(items)
    if kind == "floats2":
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                or not all(0.0 <= v < 1.0 for v in value)):
            raise InputError(f"expected two numbers in [0, 1), got {value!r}", key=where)
        return [float(v) for v in value]
    if kind == "symbols":
        from ase.data import atomic_numbers

        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise InputError(f"expected a list of chemical symbols, got {value!r}", key=where)
        bad = [v for v in value if v not in atomic_numbers or v == "X"]
        if bad:
            raise InputError(f"not chemical symbols: {bad}", key=where)
        if len(set(value)) != len(value):
            raise InputError(f"symbols repeated in {value}", key=where)
        return list(value)
    if kind == "e0s":
        if isinstance(value, str):
            allowed = ("isolated", "least_squares")
            if value not in allowed:
                raise InputError(f"{value!r} is not allowed; allowed values: isolated, least_squares, or a "
                                 "mapping {symbol: energy in eV}", key=where)
            return value
        if isinstance(value, dict):
            from ase.data import atomic_numbers

            out = {}
            for sym, e in value.items():
                if sym not in atomic_numbers:
                    raise InputError(f"'{sym}' is not a chemical symbol", key=f"{where}.{sym}")
                if isinstance(e, str) and _NUMBER.match(e.strip()):
                    e = float(e)
                if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e):
                    raise InputError(f"expected an energy in eV, got {e!r}", key=f"{where}.{sym}")
                out[str(sym)] = float(e)
            return out
        raise InputError("expected 'isolated', 'least_squares' or a mapping {symbol: energy in eV}, "
                         f"got {value!r} ({_type_name(value)})", key=where)
    raise AssertionError(f"unknown field kind {kind}")


def _check_range(field: Field, value: float, where: str) -> None:
    low, high = field.low, field.high
    ok_low = low is None or (value > low if field.low_open else value >= low)
    ok_high = high is None or value <= high
    if ok_low and ok_high:
        return
    left = "(" if field.low_open else "["
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    right = "]" if high is not None else ")"
    raise InputError(f"{value!r} is out of range; allowed: {left}{lo}, {hi}{right}", key=where)


def _validate_section(schema: Mapping[str, Any], raw: Any, path: Tuple[str, ...]) -> Dict[str, Any]:
    where = _join(path) if path else "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"expected a mapping of keys, got {raw!r} ({_type_name(raw)})", key=where)
    for key in raw:
        if not isinstance(key, str):
            raise InputError(f"keys must be strings, got {key!r}", key=where)
        if key not in schema:
            raise _unknown_key_error(path + (key,), schema)
    out: Dict[str, Any] = {}
    for key, sub in schema.items():
        sub_path = path + (key,)
        if path == () and key == MODEL_SECTION:
            model = raw.get(key) or {}
            if not isinstance(model, dict):
                raise InputError(f"expected a mapping of model hyperparameters, got {model!r}", key=key)
            out[key] = copy.deepcopy(model)
        elif isinstance(sub, dict):
            out[key] = _validate_section(sub, raw.get(key), sub_path)
        else:
            value = raw[key] if key in raw else copy.deepcopy(sub.default)
            out[key] = _check_field(sub, value, _join(sub_path))
    return out


def validate(raw: Mapping[str, Any], check_files: bool = True) -> Dict[str, Any]:
    """Check a raw config against :data:`SCHEMA` and return it with every default filled in."""
    cfg = _validate_section(SCHEMA, dict(raw) if raw is not None else {}, ())
    data = cfg["data"]
    if not data["train_file"]:
        raise InputError("must be set (the training structures)", key="data.train_file")
    if data["valid_file"] is None and not (0.0 <= data["valid_fraction"] < 1.0):
        raise InputError(f"{data['valid_fraction']!r} is out of range; allowed: [0, 1)", key="data.valid_fraction")
    model = cfg[MODEL_SECTION]
    if "r_max" in model:
        r = model["r_max"]
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0:
            raise InputError(f"expected a cutoff radius > 0 in Angstrom, got {r!r}", key="model.r_max")
    for key in ("type_names", "num_types"):
        if key in model:
            raise InputError("species are set in data.type_names (default: from the training data)",
                             key=f"model.{key}")
    lw = cfg["loss"]
    if not any(lw[f"{q}_weight"] > 0 for q in ("energy", "forces", "stress")):
        raise InputError("all loss weights are zero; set at least one of energy_weight, forces_weight, "
                         "stress_weight > 0", key="loss")
    st = cfg["stage_two"]
    if st["enabled"] and not (st["energy_weight"] > 0 or st["forces_weight"] > 0
                              or (st["stress_weight"] if st["stress_weight"] is not None else lw["stress_weight"]) > 0):
        raise InputError("all stage-two loss weights are zero", key="stage_two")
    if st["enabled"] and st["start_epoch"] is None:
        st["start_epoch"] = int(0.75 * cfg["optim"]["max_epochs"])
    ft = cfg["finetune"]
    if not ft["from"] and (ft["freeze"] or ft["reset_head"]):
        raise InputError("freeze and reset_head need a model to start from: set finetune.from", key="finetune")
    # a start_epoch beyond max_epochs is allowed (quick runs with --set optim.max_epochs=N);
    # the trainer says that stage two will not run
    if check_files:
        for key, path in data_files(cfg):
            if not os.path.exists(path):
                raise InputError("file not found", path, key=key)
    return cfg


def resolve_path(cfg: Mapping[str, Any], path: str) -> str:
    """A data path as the trainer opens it: absolute, or relative to ``data.root``."""
    path = os.path.expanduser(path)
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(os.path.expanduser(cfg["data"]["root"]), path))


def data_files(cfg: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """(config key, resolved path) of every file the config names."""
    data = cfg["data"]
    out = [("data.train_file", resolve_path(cfg, data["train_file"]))]
    for key in ("valid_file", "isolated_atoms_file"):
        if data[key]:
            out.append((f"data.{key}", resolve_path(cfg, data[key])))
    for i, p in enumerate(data["test_files"]):
        out.append((f"data.test_files[{i}]", resolve_path(cfg, p)))
    if cfg.get("finetune", {}).get("from"):
        out.append(("finetune.from", os.path.expanduser(cfg["finetune"]["from"])))
    return out


def parse_override(text: str) -> Tuple[List[str], Any]:
    """``section.key=value`` -> (["section", "key"], value parsed as YAML)."""
    if "=" not in text:
        raise InputError(f"--set expects section.key=value, got {text!r}")
    key, _, value = text.partition("=")
    parts = [p.strip() for p in key.strip().split(".")]
    if not all(parts):
        raise InputError(f"--set expects section.key=value, got {text!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise InputError(f"--set {key}: value is not valid YAML ({exc})") from None
    return parts, parsed


def apply_overrides(raw: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Apply ``--set`` overrides to a raw config (validation comes after, so typos are caught)."""
    cfg = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = cfg
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                prefix = ".".join(parts[:i + 1])
                raise InputError(f"--set {'.'.join(parts)}: '{prefix}' is not a section", key=prefix)
            node = nxt
        node[parts[-1]] = value
    return cfg


def load_yaml(path: str) -> Dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load``; errors name the file and line."""
    if not os.path.exists(path):
        raise InputError("file not found", path)
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {exc}".replace("\n", " "), path) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"expected a YAML mapping of sections, got {_type_name(raw)}", path)
    return raw


def load_config(path: str, overrides: Iterable[str] = (), check_files: bool = True) -> Dict[str, Any]:
    """Read, override and validate a config file. Errors name the file."""
    raw = apply_overrides(load_yaml(path), overrides)
    try:
        return validate(raw, check_files=check_files)
    except InputError as exc:
        if exc.path is None:
            raise InputError(str(exc), path) from None
        raise


def dump_config(cfg: Mapping[str, Any], path: str) -> None:
    """Write the resolved config (all defaults filled in) as YAML, atomically."""
    from mlip.checkpoint import atomic_file

    text = yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=None)
    with atomic_file(path, "w") as fh:
        fh.write("# resolved mlip training config: every default filled in\n")
        fh.write(text)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def describe(schema: Mapping[str, Any] = SCHEMA, prefix: str = "") -> List[str]:
    """Every key with its default and doc, one per line (for ``mlip train --show-keys``)."""
    lines = []
    for key, sub in schema.items():
        name = f"{prefix}{key}"
        if key == MODEL_SECTION and not prefix:
            lines.append(f"{name}.*  (architecture hyperparameters, passed to the model as is)")
        elif isinstance(sub, dict):
            lines.extend(describe(sub, f"{name}."))
        else:
            extra = f" [{', '.join(map(str, sub.choices))}]" if sub.choices else ""
            lines.append(f"{name} = {sub.default!r}{extra}  # {sub.doc}")
    return lines

