"""The joint energy / forces / stress loss, with masks for structures that lack a label.

Each term is the mean over labelled components of an error function (squared error or Huber)::

    energy:  (E_pred - E_ref) / N_atoms    per structure (eV/atom), or total (eV) if not per atom
    forces:  F_pred - F_ref                per component (eV/A)
    stress:  S_pred - S_ref                per component of the 3x3 tensor (eV/A^3)

and the loss is ``w_E L_E + w_F L_F + w_S L_S``. Energies are compared in float64 whatever the
model dtype, since total energies of large systems exceed float32's meV resolution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Tuple

import torch

from mlip.data import keys as K


@dataclass(frozen=True)
class LossWeights:
    energy: float
    forces: float
    stress: float


def _error(diff: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    if kind == "mse":
        return diff.square()
    # Huber: quadratic below delta, linear above; robust to a few bad labels
    return torch.nn.functional.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=delta)


def _masked_mean(values: torch.Tensor, weights: torch.Tensor, components: int) -> torch.Tensor:
    denom = (weights.sum() * components).clamp_min(1e-12)
    return (values * weights.view(-1, *([1] * (values.dim() - 1)))).sum() / denom


def compute_loss(out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor], weights: LossWeights,
                 energy_per_atom: bool = True, kind: str = "mse", huber_delta: float = 0.01,
                 ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Total loss (scalar) and its terms (detached) for one batch."""
    terms: Dict[str, torch.Tensor] = {}
    total = None
    if weights.energy > 0:
        pred = out[K.TOTAL_ENERGY].to(torch.float64)
        ref = batch[K.REF_ENERGY].to(torch.float64)
        diff = pred - ref
        if energy_per_atom:
            diff = diff / batch[K.NUM_ATOMS].to(torch.float64)
        term = _masked_mean(_error(diff, kind, huber_delta), batch[K.ENERGY_WEIGHT].to(torch.float64), 1)
        terms["energy"] = term.detach()
        total = weights.energy * term
    if weights.forces > 0:
        diff = out[K.FORCES] - batch[K.REF_FORCES].to(out[K.FORCES].dtype)
        term = _masked_mean(_error(diff, kind, huber_delta), batch[K.FORCES_WEIGHT].to(diff.dtype), 3)
        terms["forces"] = term.detach()
        total = weights.forces * term if total is None else total + weights.forces * term
    if weights.stress > 0:
        diff = out[K.STRESS] - batch[K.REF_STRESS].to(out[K.STRESS].dtype)
        term = _masked_mean(_error(diff, kind, huber_delta), batch[K.STRESS_WEIGHT].to(diff.dtype), 9)
        terms["stress"] = term.detach()
        total = weights.stress * term if total is None else total + weights.stress * term
    if total is None:
        raise ValueError("all loss weights are zero")
    return total, terms
