"""Build a :class:`Potential` from a plain config dict; architectures register themselves here.

The registry is the one place that knows the model families: config checks, checkpoints,
fine-tuning, compilation and the CLI ask it (:func:`get_architecture`) instead of naming them.
"""

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Tuple, Union

import torch

from mlip.errors import InputError
from mlip.nn.potential import Potential

DEFAULT_ARCHITECTURE = "nequip"  # what a model section without ``architecture`` means

# Version of the hyperparameters' defaults. Model records store the version they were written
# under (:func:`mlip.checkpoint.model_record`); when a default changes, this goes up by one and
# the architecture lists the key's former default in ``former_defaults``, so that a record
# written before the change (whose config does not name the key) still means what it meant.
MODEL_DEFAULTS_VERSION = 2


@dataclass(frozen=True)
class FormerDefault:
    """``key`` meant ``value(config)`` in records written before defaults version ``changed_in``."""

    changed_in: int
    key: str
    value: Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class Architecture:
    """One model family: the energy-model class and what the rest of mlip may do with it.

    The class's ``__init__`` takes ``num_types`` and keyword hyperparameters; those keywords are
    the architecture's model-config keys.
    """

    name: str
    model_class: type
    supports_compile: bool = False   # one traced graph for train.compile / CompiledPotential
    # upstream (NequIP / MACE) key -> mlip key, or a function of the value -> {mlip key: value}
    aliases: Mapping[str, Union[str, Callable[[Any], Dict[str, Any]]]] = field(default_factory=dict)
    former_defaults: Tuple[FormerDefault, ...] = ()

    def build(self, num_types: int, **hyperparameters: Any) -> torch.nn.Module:
        return self.model_class(num_types=num_types, **hyperparameters)

    def hyperparameters(self) -> Tuple[str, ...]:
        """The model-config keys this architecture accepts (besides ``architecture``)."""
        names = inspect.signature(self.model_class.__init__).parameters
        return tuple(n for n in names if n not in ("self", "num_types"))


ARCHITECTURES: Dict[str, Architecture] = {}


def register_architecture(name: str, supports_compile: bool = False,
                          aliases: Mapping[str, Union[str, Callable[[Any], Dict[str, Any]]]] = None,
                          former_defaults: Tuple[FormerDefault, ...] = ()):
    """Class decorator: register an energy-model class as the architecture ``name``; ``aliases``
    lets users write the upstream names of its hyperparameters; ``former_defaults`` keeps the
    meaning of records written before a default changed (see :data:`MODEL_DEFAULTS_VERSION`)."""
    def deco(cls):
        ARCHITECTURES[name] = Architecture(name, cls, supports_compile, dict(aliases or {}), tuple(former_defaults))
        return cls
    return deco


def config_under_current_defaults(config: Mapping[str, Any], defaults_version: int) -> Dict[str, Any]:
    """A model config written under ``defaults_version``, with the former default of every key
    whose default has changed since then written out, so that today's builder reads it as it
    was meant. Keys the config names are kept as they are."""
    out = dict(config)
    arch = get_architecture(out.get("architecture", DEFAULT_ARCHITECTURE))
    for former in arch.former_defaults:
        if defaults_version < former.changed_in and former.key not in out:
            out[former.key] = former.value(config)
    return out


def canonical_model_config(model_config: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """``model_config`` with upstream key names (NequIP's ``num_features``, MACE's ``max_ell``, ...)
    replaced by mlip's, and one note per replacement. Naming one setting twice is a ValueError."""
    config = dict(model_config)
    arch = get_architecture(config.get("architecture", DEFAULT_ARCHITECTURE))
    notes = []
    for key in [k for k in config if k in arch.aliases and k not in arch.hyperparameters()]:
        target = arch.aliases[key]
        value = config.pop(key)
        replaced = {target: value} if isinstance(target, str) else target(value)
        for name, new in replaced.items():
            if name in config:
                raise ValueError(f"model.{key} and model.{name} set the same hyperparameter; keep one")
            config[name] = new
        notes.append(f"model.{key} read as " + ", ".join(f"model.{n}: {v!r}" for n, v in replaced.items())
                     + " (mlip's name)")
    return config, notes


def radial_mlp_widths(widths: Any) -> Dict[str, Any]:
    """MACE's ``radial_MLP: [64, 64, 64]`` as mlip's ``radial_hidden: 64, radial_depth: 3``."""
    if isinstance(widths, str):
        import ast

        widths = ast.literal_eval(widths)
    widths = [int(w) for w in widths]
    if not widths or len(set(widths)) != 1:
        raise ValueError(f"radial_MLP {widths}: mlip's radial MLPs have equal hidden widths (radial_hidden, "
                         "radial_depth)")
    return {"radial_hidden": widths[0], "radial_depth": len(widths)}


def load_architectures() -> None:
    """Import the modules that register the shipped architectures (each registers on import)."""
    import mlip.nn.nequip  # noqa: F401

    with contextlib.suppress(ImportError):
        import mlip.nn.mace  # noqa: F401


def get_architecture(name: str) -> Architecture:
    """The registered architecture ``name``; ValueError naming the available ones otherwise."""
    load_architectures()
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{name}'; available: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name]


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_model(model_config: Mapping[str, Any], type_names: List[str], dtype: Union[torch.dtype, str] = torch.float32,
                ) -> Potential:
    """``model_config`` holds ``architecture`` (default "nequip") and that architecture's
    hyperparameters, including ``r_max`` (Angstrom). Parameters are created in ``dtype``;
    per-species energy shifts stay float64 (isolated-atom energies need the precision)."""
    cfg, _ = canonical_model_config(model_config)
    arch = get_architecture(cfg.pop("architecture", DEFAULT_ARCHITECTURE))
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    with default_dtype(dtype):
        energy_model = arch.build(len(type_names), **cfg)
    return Potential(energy_model, type_names, float(cfg.get("r_max", 5.0)))


def check_model_section(model_config: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """Check a config's model section against its architecture's schema without building it
    (so a wrong key is reported before any data is read): the architecture exists, every key
    (in mlip's or an upstream name) is one of its hyperparameters, and values of hyperparameters
    whose default is a bool, int, float or str have that kind. Returns the section in mlip's
    names and the notes of :func:`canonical_model_config`; errors are InputErrors naming
    ``model.<key>``."""
    try:
        config, notes = canonical_model_config(model_config)
    except ValueError as exc:
        raise model_config_error(exc, model_config) from None
    arch = get_architecture(config.get("architecture", DEFAULT_ARCHITECTURE))
    params = inspect.signature(arch.model_class.__init__).parameters
    for key, value in config.items():
        if key == "architecture":
            continue
        if key not in params or key in ("self", "num_types"):
            raise model_config_error(TypeError(f"unexpected keyword argument '{key}'"), config)
        default = params[key].default
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(type(default))
        if kind is None or value is None:
            continue
        ok = (isinstance(value, bool) if isinstance(default, bool) else
              isinstance(value, int) and not isinstance(value, bool) if isinstance(default, int) else
              isinstance(value, (int, float)) and not isinstance(value, bool) if isinstance(default, float) else
              isinstance(value, str))
        if not ok:
            raise InputError(f"expected {kind}, got {value!r} ({type(value).__name__})", key=f"model.{key}")
    return config, notes


def model_config_error(exc: Exception, model_config: Mapping[str, Any]) -> InputError:
    """Turn a builder's TypeError/ValueError into a config error naming the model key."""
    import re

    text = str(exc)
    m = re.search(r"unexpected keyword argument '(\w+)'", text)
    if m:
        key = m.group(1)
        known = _architecture_keys(model_config.get("architecture", DEFAULT_ARCHITECTURE))
        import difflib

        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean 'model.{close[0]}'?" if close else (
            f"; allowed: {', '.join(sorted(known))}" if known else "")
        return InputError(f"unknown key{hint}", key=f"model.{key}")
    if "architecture" in text:
        return InputError(text, key="model.architecture")
    return InputError(f"cannot build the model: {text}", key="model")


def _architecture_keys(arch: str) -> List[str]:
    """The model-config keys an architecture accepts ([] for an unknown one)."""
    try:
        return ["architecture", *get_architecture(arch).hyperparameters()]
    except ValueError:
        return []
