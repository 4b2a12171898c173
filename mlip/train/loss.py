"""The joint loss of energy, forces, stress and the output heads' properties (dipole,
polarizability, generic outputs), with masks for structures that lack a label.

Each term is the mean over labelled components of an error function (squared error or Huber)::

    energy:            (E_pred - E_ref) / N_atoms  per structure (eV/atom), or total (eV) if not per atom
    forces:            F_pred - F_ref              per component (eV/A)
    stress:            S_pred - S_ref              per component of the 3x3 tensor (eV/A^3)
    dipole:            mu_pred - mu_ref            per component (e*A)
    polarizability:    alpha_pred - alpha_ref      per component of the 3x3 tensor (A^3)
    structure_output:  per component of the generic per-structure output (label units)
    atom_output:       per component of the generic per-atom output (label units)

and the loss is ``sum_k w_k L_k`` over the terms with a weight > 0. Energies are compared in
float64 whatever the model dtype, since total energies of large systems exceed float32's meV
resolution.

Balancing (``loss.balance``; default "none"): with "uncertainty" the gradient is that of
``sum_k w_k log L_k``: each term is divided by its own current value (detached), which is the
homoscedastic-uncertainty weighting of Kendall, Gal and Cipolla (2018) with each term's
variance at its optimum for the batch, sigma_k^2 = L_k, so there are no extra parameters and
nothing to checkpoint. It is invariant to the units of every label (rescaling a label adds a
constant to log L_k), so terms in eV, eV/A, e*A and A^3 need no hand-tuned weights; the weights
then set relative priorities (1 = equal). Under DDP the divisors are the terms of the whole
global batch. The loss value reported (training log, validation loss, learning-rate plateau)
stays the plain weighted sum ``sum_k w_k L_k``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from mlip.data import keys as K
from mlip.errors import InputError

BALANCE = ("none", "uncertainty")


@dataclass(frozen=True)
class Term:
    """One loss term: the output field, its reference and weight fields, and the components per
    labelled entry (0: the reference's width, for the generic outputs)."""

    name: str
    pred: str
    ref: str
    weight: str
    components: int


TERMS = (
    Term("energy", K.TOTAL_ENERGY, K.REF_ENERGY, K.ENERGY_WEIGHT, 1),
    Term("forces", K.FORCES, K.REF_FORCES, K.FORCES_WEIGHT, 3),
    Term("stress", K.STRESS, K.REF_STRESS, K.STRESS_WEIGHT, 9),
    Term("dipole", K.DIPOLE, K.REF_DIPOLE, K.DIPOLE_WEIGHT, 3),
    Term("polarizability", K.POLARIZABILITY, K.REF_POLARIZABILITY, K.POLARIZABILITY_WEIGHT, 9),
    Term("structure_output", K.STRUCTURE_OUTPUT, K.REF_STRUCTURE_OUTPUT, K.STRUCTURE_OUTPUT_WEIGHT, 0),
    Term("atom_output", K.ATOM_OUTPUT, K.REF_ATOM_OUTPUT, K.ATOM_OUTPUT_WEIGHT, 0),
)
TERM_NAMES = tuple(t.name for t in TERMS)
HEAD_TERMS = TERM_NAMES[3:]  # the terms of the output heads (mlip.nn.heads)


@dataclass(frozen=True)
class LossWeights:
    energy: float
    forces: float
    stress: float
    dipole: float = 0.0
    polarizability: float = 0.0
    structure_output: float = 0.0
    atom_output: float = 0.0
    balance: str = "none"  # "none" or "uncertainty" (see the module docstring)

    def terms(self) -> Tuple[str, ...]:
        """The terms with a weight > 0, in the order of TERMS."""
        return tuple(name for name in TERM_NAMES if getattr(self, name) > 0)

    def without(self, *names: str) -> "LossWeights":
        """These weights with the terms ``names`` set to 0."""
        from dataclasses import replace

        return replace(self, **{name: 0.0 for name in names})


def stage_loss_weights(loss_cfg: Mapping[str, float], stage_two_cfg: Mapping[str, Optional[float]],
                       stage: int) -> LossWeights:
    """The loss weights of training stage 1 (the ``loss`` section) or 2 (``stage_two``; a stress
    weight of null keeps stage one's). The head terms (dipole, polarizability, generic outputs)
    and the balancing keep the ``loss`` section's values in both stages."""
    heads = {name: float(loss_cfg.get(f"{name}_weight", 0.0)) for name in HEAD_TERMS}
    balance = str(loss_cfg.get("balance", "none"))
    if stage == 2:
        stress = stage_two_cfg["stress_weight"]
        return LossWeights(stage_two_cfg["energy_weight"], stage_two_cfg["forces_weight"],
                           loss_cfg["stress_weight"] if stress is None else stress, balance=balance, **heads)
    return LossWeights(loss_cfg["energy_weight"], loss_cfg["forces_weight"], loss_cfg["stress_weight"],
                       balance=balance, **heads)


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
    A head term needs the model's output (a model without the head is a ValueError).
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
    for term in TERMS[3:]:
        if getattr(weights, term.name) > 0:
            if term.pred not in out:
                raise InputError(f"is {getattr(weights, term.name):g} but the model has no {term.name} output; add "
                                 f"the head to the model section ({_head_key(term.name)}) or set it to 0",
                                 key=f"loss.{term.name}_weight")
            pred = out[term.pred]
            ref = _reference(batch, term, pred)
            comps = term.components or (pred.shape[1] if pred.dim() > 1 else 1)
            sums[term.name] = _masked_sum(_error(pred - ref, kind, huber_delta), batch[term.weight].to(pred.dtype),
                                          comps)
    if not sums:
        raise ValueError("all loss weights are zero")
    return sums


def check_head_weights(loss_cfg: Mapping[str, Any], model_config: Mapping[str, Any]) -> None:
    """InputError for a head term with a positive loss weight whose head the model config lacks
    (to be called with the config, before any data is read)."""
    for name in HEAD_TERMS:
        weight = float(loss_cfg.get(f"{name}_weight", 0.0))
        if weight > 0 and not model_config.get(name):
            raise InputError(f"is {weight:g} but the model has no {name} head; set {_head_key(name)} in the "
                             "model section, or this weight to 0", key=f"loss.{name}_weight")


def _head_key(name: str) -> str:
    return {"dipole": "model.dipole: true", "polarizability": "model.polarizability: true"}.get(
        name, f"model.{name}: IRREPS")


def _reference(batch: Mapping[str, torch.Tensor], term: Term, pred: torch.Tensor) -> torch.Tensor:
    """The reference of a head term in the prediction's dtype; zeros where no structure of the
    batch has one (generic outputs: the label is left out then, its weights are 0)."""
    if term.ref not in batch:
        return torch.zeros_like(pred)
    ref = batch[term.ref].to(pred.dtype)
    if ref.shape != pred.shape:
        raise ValueError(f"{term.name} labels have shape {tuple(ref.shape[1:])} per entry but the model outputs "
                         f"{tuple(pred.shape[1:])}; the labels must have the components of the output irreps")
    return ref


def label_counts(batch: Mapping[str, torch.Tensor], weights: LossWeights) -> Dict[str, float]:
    """The counts of :func:`loss_sums` from the labels alone (known before the forward pass)."""
    counts = {}
    for term in TERMS:
        if getattr(weights, term.name) > 0:
            comps = term.components
            if not comps:  # generic output: the width of its labels (none in the batch: no count)
                ref = batch.get(term.ref)
                comps = int(ref.shape[1]) if ref is not None and ref.dim() > 1 else (1 if ref is not None else 0)
            counts[term.name] = float(batch[term.weight].to(torch.float64).sum()) * comps
    return counts


def compute_loss(out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor], weights: LossWeights,
                 energy_per_atom: bool = True, kind: str = "mse", huber_delta: float = 0.01,
                 counts: Optional[Mapping[str, float]] = None,
                 ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Total loss (scalar) and its terms (detached) for one batch.

    ``counts`` replaces the batch's own label counts (the denominators): with the counts of a
    whole global batch, the losses of its parts add up to the loss of the whole. With
    ``weights.balance == "uncertainty"`` the value is the same but the gradient is that of
    ``sum_k w_k log L_k`` (see the module docstring).
    """
    terms: Dict[str, torch.Tensor] = {}
    total = None
    for name, (num, den) in loss_sums(out, batch, weights, energy_per_atom, kind, huber_delta).items():
        if counts is not None:
            den = torch.as_tensor(float(counts[name]), dtype=num.dtype, device=num.device)
        term = num / den.to(num.dtype).clamp_min(1e-12)
        terms[name] = term
        w = getattr(weights, name)
        total = w * term if total is None else total + w * term
    if weights.balance == "uncertainty":
        total = _balanced(total, terms, weights, counts is not None)
    elif weights.balance != "none":
        raise ValueError(f"unknown loss balance '{weights.balance}'; allowed: {', '.join(BALANCE)}")
    return total, {name: term.detach() for name, term in terms.items()}


def _balanced(plain: torch.Tensor, terms: Mapping[str, torch.Tensor], weights: LossWeights,
              global_batch: bool) -> torch.Tensor:
    """``plain`` in value, with the gradient of sum_k w_k log L_k: sum_k w_k L_k / L_k(detached).
    ``global_batch``: the terms are this process's shares of a global batch (DDP), whose sums
    over the processes are the divisors."""
    values = torch.stack([t.detach().to(torch.float64) for t in terms.values()])
    if global_batch and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(values)
    balanced = None
    for (name, term), value in zip(terms.items(), values):
        # a term without labels in the batch is 0 (and so is its gradient): divide by 1 then
        divisor = torch.where(value > 0, value, torch.ones_like(value)).to(term.dtype)
        part = getattr(weights, name) * term / divisor
        balanced = part if balanced is None else balanced + part
    return balanced + (plain - balanced).detach()
