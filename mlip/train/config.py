"""The training config: strict validation against the schema (:mod:`~mlip.train.config_schema`),
defaults, ``--set`` overrides, reading and writing YAML.

A config is one YAML mapping with these sections (every key is optional unless marked)::

    seed, dtype, device, output_dir, allow_tf32     top-level scalars
    data       files, label key names, units, species, batch sizes, E0s
    model      the architecture's hyperparameters (``architecture``, ``r_max``, ...), checked
               against the registered architecture (:func:`mlip.nn.build.check_model_section`);
               NequIP's and mace-torch's names are accepted
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
from typing import Any, Dict, Iterable, List, Mapping, Sequence, Tuple

import yaml

from mlip.errors import InputError
# re-exported: callers read the schema and its constants from here
from mlip.train.config_schema import MODEL_SECTION, MOVED_KEYS, SCHEMA, STAT_MODEL_KEYS, Field  # noqa: F401

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


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
    from mlip.nn.build import check_model_section

    check_model_section(model)  # against the architecture's schema, before any data is read
    lw = cfg["loss"]
    from mlip.train.loss import HEAD_TERMS, check_head_weights

    heads_weighted = any(lw[f"{q}_weight"] > 0 for q in HEAD_TERMS)  # kept in stage two
    if not heads_weighted and not any(lw[f"{q}_weight"] > 0 for q in ("energy", "forces", "stress")):
        raise InputError("all loss weights are zero; set at least one of energy_weight, forces_weight, "
                         "stress_weight (or a head's weight) > 0", key="loss")
    if not cfg["finetune"]["from"]:  # a foundation's model section is its own
        check_head_weights(lw, check_model_section(model)[0])
    st = cfg["stage_two"]
    if st["enabled"] and not (st["energy_weight"] > 0 or st["forces_weight"] > 0 or heads_weighted
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
            lines.extend(_describe_model_section())
        elif isinstance(sub, dict):
            lines.extend(describe(sub, f"{name}."))
        else:
            extra = f" [{', '.join(map(str, sub.choices))}]" if sub.choices else ""
            lines.append(f"{name} = {sub.default!r}{extra}  # {sub.doc}")
    return lines


def _describe_model_section() -> List[str]:
    """model.architecture, then each registered architecture's hyperparameters with defaults."""
    import inspect

    from mlip.nn.build import ARCHITECTURES, DEFAULT_ARCHITECTURE, load_architectures
    from mlip.nn.hyperparameters import hyperparameter_doc

    load_architectures()
    lines = [f"model.architecture = {DEFAULT_ARCHITECTURE!r} [{', '.join(sorted(ARCHITECTURES))}]"]
    for arch in ARCHITECTURES.values():
        params = inspect.signature(arch.model_class.__init__).parameters
        for key in arch.hyperparameters():
            default = params[key].default
            upstream = sorted(k for k, v in arch.aliases.items() if v == key)
            aka = f" (also: {', '.join(upstream)})" if upstream else ""
            lines.append(f"model.{key} = {default!r}  ({arch.name})  # {hyperparameter_doc(arch.name, key)}{aka}")
    return lines


__all__ = ["SCHEMA", "MODEL_SECTION", "MOVED_KEYS", "STAT_MODEL_KEYS", "Field", "validate", "resolve_path",
           "data_files", "parse_override", "apply_overrides", "load_yaml", "load_config", "dump_config", "describe"]
