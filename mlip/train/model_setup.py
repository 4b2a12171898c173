"""The model of a training run: its config, weights (fresh, fine-tuned or resumed) and how the
training step calls it (plain, DDP-wrapped, or traced and compiled).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

from mlip.errors import InputError
from mlip.nn.build import (ARCHITECTURES, DEFAULT_ARCHITECTURE, canonical_model_config, get_architecture,
                             model_config_error)
from mlip.train import distributed as dist_utils
from mlip.train import finetune as FT
from mlip.train.config import MODEL_SECTION
from mlip.train.statistics import Statistics


def run_model_config(cfg: Mapping[str, Any], stats: Statistics, log: Callable[[str], None],
                     resume: Optional[Mapping[str, Any]] = None,
                     foundation: Optional[Mapping[str, Any]] = None,
                     type_names: Optional[List[str]] = None) -> Dict[str, Any]:
    """The model config a run builds its model from, in mlip's key names.

    Resume: the checkpoint's. Fine-tuning: the foundation's, with its species list extended and
    the runtime keys (kernel choice) of the user's section. Otherwise the user's section with
    the computed statistics filled in where the user gave none.
    """
    try:  # NequIP's and MACE's names of the hyperparameters are read as mlip's
        user_model, notes = canonical_model_config(cfg[MODEL_SECTION])
    except ValueError as exc:
        raise model_config_error(exc, cfg[MODEL_SECTION]) from None
    for note in notes:
        log(note)
    if resume is not None:
        return dict(resume["model"]["config"])
    if foundation is not None:
        FT.check_model_section(user_model, foundation["config"])
        config = FT.finetune_model_config(foundation, type_names, stats.e0s)
        for key, value in user_model.items():
            if key in FT.RUNTIME_MODEL_KEYS:
                config[key] = value
        return config
    config = dict(user_model)
    for key, value in stats.model_entries().items():
        if key in user_model:
            log(f"model.{key} given in the config: not replaced by the computed statistic")
        else:
            config[key] = value
    return config


def build_run_model(model_config: Mapping[str, Any], type_names: List[str], dtype: torch.dtype, r_max: float,
                    finetune: Mapping[str, Any], log: Callable[[str], None],
                    foundation: Optional[Mapping[str, Any]] = None) -> torch.nn.Module:
    """Build the :class:`~mlip.nn.Potential`; copy a foundation's weights and freeze what the
    ``finetune`` section says. ``r_max`` (Angstrom) is the one the graphs were built with."""
    from mlip.nn import build_model

    try:
        model = build_model(model_config, type_names, dtype)
    except (TypeError, ValueError) as exc:
        raise model_config_error(exc, model_config) from None
    if abs(float(model.r_max) - r_max) > 1e-12:
        raise InputError(f"the model's r_max {model.r_max} differs from the one the graphs were built with "
                         f"({r_max}); set model.r_max explicitly", key="model.r_max")
    if foundation is not None:
        fresh = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            report = FT.transfer_weights(model, foundation["state_dict"], len(foundation["type_names"]),
                                         len(type_names))
        log(f"fine-tuning: {len(report['copied'])} tensors copied, {len(report['species_rows'])} with "
            "new species rows freshly initialised" + (f" ({', '.join(report['species_rows'])})"
                                                       if report["species_rows"] else ""))
        if finetune["reset_head"]:
            names = FT.reset_head(model, fresh)
            log(f"fine-tuning: readout re-initialised ({', '.join(names)})")
    if finetune["freeze"]:
        frozen = FT.freeze_parameters(model, finetune["freeze"])
        log(f"fine-tuning: {len(frozen)} parameter tensors frozen ({', '.join(frozen)})")
    return model


def load_kernels(device: torch.device, log: Callable[[str], None]) -> None:
    """Build (first use on this machine, ~10 s) or load the fused CPU kernels now, before any
    timing or time budget starts."""
    if device.type != "cpu":
        return
    from mlip.ops.cpu_message import load_cpu_kernel

    reason = load_cpu_kernel()
    log("CPU kernels: fused C++ message step" if reason is None
        else f"CPU kernels: not available ({reason}); plain torch")


@dataclass
class StepModel:
    """What the training step calls: ``forward`` (the model, a DDP wrapper or a compiled graph)
    and whether gradients must be all-reduced by hand (a compiled step under torchrun)."""

    forward: Callable[..., Dict[str, torch.Tensor]]
    sync_gradients: bool = False


def step_model(model: torch.nn.Module, model_config: Mapping[str, Any], compile: bool, dist: Any,
               device: torch.device, log: Callable[[str], None]) -> StepModel:
    """Wrap ``model`` for the training step: compiled (``train.compile``), DDP, or as it is."""
    if compile:
        arch = get_architecture(model_config.get("architecture", DEFAULT_ARCHITECTURE))
        if not arch.supports_compile:
            able = sorted(a.name for a in ARCHITECTURES.values() if a.supports_compile)
            raise InputError(f"not supported for architecture '{arch.name}' (supported: {', '.join(able)}); "
                             "its forward pass cannot be traced into one graph", key="train.compile")
        from mlip.nn.compiled import CompiledPotential

        backend = os.environ.get("MLIP_COMPILE_BACKEND", "inductor")
        compiled = CompiledPotential(model, backend=None if backend == "none" else backend)
        log("train.compile: training steps run a traced and compiled graph (the first step of each "
            "batch-size pattern compiles it)")
        # the compiled step bypasses a DDP wrapper's forward, whose hooks would sync the
        # gradients: start from rank 0's weights and average the gradients explicitly
        dist_utils.broadcast_parameters(model, dist)
        return StepModel(compiled, sync_gradients=dist.enabled)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # forces are autograd.grad(create_graph=True) w.r.t. positions inside forward; the
        # parameters get their gradients only in the loss's backward, where DDP's hooks fire
        return StepModel(DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None))
    return StepModel(model)


def describe_model(model: torch.nn.Module, model_config: Mapping[str, Any], dtype: str,
                   device: torch.device) -> str:
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (f"model: {model_config.get('architecture', DEFAULT_ARCHITECTURE)}, {n_params} trained parameters, "
            f"{dtype}, device {device}")


__all__ = ["run_model_config", "build_run_model", "load_kernels", "StepModel", "step_model", "describe_model"]
