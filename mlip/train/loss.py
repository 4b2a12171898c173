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
from typing import Dict, Mapping, Optional, Tuple

import torch

from mlip.data import keys as K


@dataclass(frozen=True)
class LossWeights:
    energy: float
    forces: float
    stress: float


def stage_loss_weights(loss_cfg: Mapping[str, float], stage_two_cfg: Mapping[str, Optional[float]],
                       stage: int) -> LossWeights:
    """The loss weights of training stage 1 (the ``loss`` section) or 2 (``stage_two``; a stress
    weight of null keeps stage one's)."""
    if stage == 2:
        stress = stage_two_cfg["stress_weight"]
        return LossWeights(stage_two_cfg["energy_weight"], stage_two_cfg["forces_weight"],
                           loss_cfg["stress_weight"] if stress is None else stress)
    return LossWeights(loss_cfg["energy_weight"], loss_cfg["forces_weight"], loss_cfg["stress_weight"])


def _error(diff: torch.Tensor, kind: str, delta: float) -> torch.Tensor:
    if kind == "mse":
        return diff.square()
    # Huber: quadratic below delta, linear above; robust to a few bad labels
    return torch.nn.functional.huber_loss(diff, torch.zeros_like(diff), reduction="none", delta=delta)


def _masked_sum(values: torch.Tensor, weights: torch.Tensor, components: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sum of weighted errors, number of labelled components): the mean is their ratio."""
    num = (values * weights.view(-1, *([1] * (values.dim() - 1)))).sum()
    return num, weights.sum() * components


def loss_sums(out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor], weights: LossWeights,
              energy_per_atom: bool = True, kind: str = "mse", huber_delta: float = 0.01,
              ) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """Per term with a weight > 0: (sum of per-component errors, count of labelled components).

    Each term of the loss is ``sum / count``. Split over several processes, the sums stay per
    process while the counts are summed over all of them (see :func:`compute_loss`'s ``counts``).
    """
    sums: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
    if weights.energy > 0:
        pred = out[K.TOTAL_ENERGY].to(torch.float64)
        ref = batch[K.REF_ENERGY].to(torch.float64)
        diff = pred - ref
        if energy_per_atom:
            diff = diff / batch[K.NUM_ATOMS].to(torch.float64)
        sums["energy"] = _masked_sum(_error(diff, kind, huber_delta), batch[K.ENERGY_WEIGHT].to(torch.float64), 1)
    if weights.forces > 0:
        diff = out[K.FORCES] - batch[K.REF_FORCES].to(out[K.FORCES].dtype)
        sums["forces"] = _masked_sum(_error(diff, kind, huber_delta), batch[K.FORCES_WEIGHT].to(diff.dtype), 3)
    if weights.stress > 0:
        diff = out[K.STRESS] - batch[K.REF_STRESS].to(out[K.STRESS].dtype)
        sums["stress"] = _masked_sum(_error(diff, kind, huber_delta), batch[K.STRESS_WEIGHT].to(diff.dtype), 9)
    if not sums:
        raise ValueError("all loss weights are zero")
    return sums


def label_counts(batch: Mapping[str, torch.Tensor], weights: LossWeights) -> Dict[str, float]:
    """The counts of :func:`loss_sums` from the labels alone (known before the forward pass)."""
    counts = {}
    for term, key, comps in (("energy", K.ENERGY_WEIGHT, 1), ("forces", K.FORCES_WEIGHT, 3),
                             ("stress", K.STRESS_WEIGHT, 9)):
        if getattr(weights, term) > 0:
            counts[term] = float(batch[key].to(torch.float64).sum()) * comps
    return counts


def compute_loss(out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor], weights: LossWeights,
                 energy_per_atom: bool = True, kind: str = "mse", huber_delta: float = 0.01,
                 counts: Optional[Mapping[str, float]] = None,
                 ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Total loss (scalar) and its terms (detached) for one batch.

    ``counts`` replaces the batch's own label counts (the denominators): with the counts of a
    whole global batch, the losses of its parts add up to the loss of the whole.
    """
    terms: Dict[str, torch.Tensor] = {}
    total = None
    for name, (num, den) in loss_sums(out, batch, weights, energy_per_atom, kind, huber_delta).items():
        if counts is not None:
            den = torch.as_tensor(float(counts[name]), dtype=num.dtype, device=num.device)
        term = num / den.to(num.dtype).clamp_min(1e-12)
        terms[name] = term.detach()
        w = getattr(weights, name)
        total = w * term if total is None else total + w * term
    return total, terms
