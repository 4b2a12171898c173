"""Build a :class:`Potential` from a plain config dict; architectures register themselves here."""

import contextlib
from typing import Any, Callable, Dict, List, Mapping, Union

import torch

from mlip.nn.potential import Potential

ARCHITECTURES: Dict[str, Callable[..., torch.nn.Module]] = {}


def register_architecture(name: str):
    def deco(builder):
        ARCHITECTURES[name] = builder
        return builder
    return deco


@register_architecture("nequip")
def _build_nequip(num_types: int, **hp) -> torch.nn.Module:
    from mlip.nn.nequip import NequIPModel
    return NequIPModel(num_types=num_types, **hp)


def _load_optional_architectures() -> None:
    # MACE lives in its own module; importing it registers "mace"
    with contextlib.suppress(ImportError):
        import mlip.nn.mace  # noqa: F401


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
    _load_optional_architectures()
    cfg = dict(model_config)
    arch = cfg.pop("architecture", "nequip")
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{arch}'; available: {sorted(ARCHITECTURES)}")
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    with default_dtype(dtype):
        energy_model = ARCHITECTURES[arch](num_types=len(type_names), **cfg)
    return Potential(energy_model, type_names, float(cfg.get("r_max", 5.0)))
