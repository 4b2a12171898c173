"""Errors of a model on a set of structures: metrics, a per-structure CSV and parity plots.

Shared by validation during training, the test sets scored after training, and
``mlip evaluate``.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from mlip.data import keys as K
from mlip.data.graph import Graph
from mlip.errors import NonFiniteError
from mlip.train.data import iterate_batches
from mlip.train.loss import LossWeights, loss_sums
from mlip.train.metrics import HEAD_FIELDS, ErrorAccumulator


@dataclass
class Predictions:
    """Per-structure and per-component references and predictions (base units, float64)."""

    metrics: Dict[str, float]
    rows: List[Dict[str, object]] = field(default_factory=list)
    energy: List[np.ndarray] = field(default_factory=lambda: [np.zeros(0), np.zeros(0)])  # per atom
    forces: List[np.ndarray] = field(default_factory=lambda: [np.zeros(0), np.zeros(0)])
    stress: List[np.ndarray] = field(default_factory=lambda: [np.zeros(0), np.zeros(0)])
    # the output heads' quantities the model has (dipole, polarizability, generic outputs):
    # quantity -> [reference, prediction] of every labelled component
    heads: Dict[str, List[np.ndarray]] = field(default_factory=dict)


def _model_dtype(model: torch.nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def evaluated_batches(model: torch.nn.Module, graphs: Sequence[Graph], batch_size: int, device: torch.device,
                      compute_stress: bool, indices: Optional[Sequence[int]] = None,
                      workers: int = 0) -> Iterator[Tuple[List[int], Graph, Dict[str, torch.Tensor]]]:
    """(structure indices, batch, detached outputs) of ``model`` over ``graphs`` in file order
    (or over ``indices``), in the model's dtype: the one evaluation loop of validation, the
    test sets after training and ``mlip evaluate``."""
    dtype = _model_dtype(model)
    for idx, batch in iterate_batches(graphs, batch_size, device, dtype, indices=indices, workers=workers):
        with torch.enable_grad():  # forces and stress are gradients
            out = model(batch, compute_forces=True, compute_stress=compute_stress, training=False)
        yield idx, batch, {k: (v.detach() if torch.is_tensor(v) else v) for k, v in out.items()}


def validation_metrics(model: torch.nn.Module, graphs: Sequence[Graph], batch_size: int, device: torch.device,
                       compute_stress: bool, weights: LossWeights, loss_cfg: Mapping[str, Any],
                       indices: Optional[Sequence[int]] = None, workers: int = 0) -> Tuple[ErrorAccumulator, List[float]]:
    """Error sums of ``model`` on ``graphs`` (or the subset ``indices``: this rank's share under
    DDP) and, per loss term with a weight > 0, [sum, label count, ...]: the set's loss is
    independent of the batching (each term: sum over the set / count of the set)."""
    acc = ErrorAccumulator()
    terms = weights.terms()
    parts = [0.0] * (2 * len(terms))
    # without stress labels a stress weight is dropped rather than read from absent outputs
    w = weights if compute_stress or weights.stress == 0 else weights.without("stress")
    for _, batch, out in evaluated_batches(model, graphs, batch_size, device, compute_stress, indices, workers):
        acc.update(out, batch)
        sums = loss_sums(out, batch, w, loss_cfg["energy_per_atom"], loss_cfg["type"], loss_cfg["huber_delta"])
        for i, name in enumerate(terms):
            if name in sums:
                parts[2 * i] += float(sums[name][0])
                parts[2 * i + 1] += float(sums[name][1])
    return acc, parts


def set_loss(weights: LossWeights, parts: Sequence[float]) -> float:
    """The weighted loss of a whole set from :func:`validation_metrics`' (all-reduced) parts."""
    terms = weights.terms()
    return sum(getattr(weights, name) * parts[2 * i] / max(parts[2 * i + 1], 1e-12) for i, name in enumerate(terms))


def predict(model: torch.nn.Module, graphs: Sequence[Graph], batch_size: int, device: torch.device,
            compute_stress: bool, sources: Optional[Sequence[str]] = None, keep: bool = False) -> Predictions:
    """Run ``model`` over ``graphs`` in file order. With ``keep``, per-structure rows and the
    arrays for parity plots are kept as well. A non-finite prediction is an error naming the
    structure."""
    acc = ErrorAccumulator()
    result = Predictions(metrics={})
    e_ref, e_pred, f_ref, f_pred, s_ref, s_pred = [], [], [], [], [], []
    head_parts: Dict[str, List[List[np.ndarray]]] = {}
    for idx, batch, out in evaluated_batches(model, graphs, batch_size, device, compute_stress):
        _check_finite(out, batch, idx, sources)
        acc.update(out, batch)
        if not keep:
            continue
        heads = _head_values(out, batch)
        for q, (ref, pred, labelled) in heads.items():
            parts = head_parts.setdefault(q, [[], []])
            parts[0].append(ref[labelled].ravel())
            parts[1].append(pred[labelled].ravel())
        n = batch[K.NUM_ATOMS].cpu().numpy()
        e_w = batch[K.ENERGY_WEIGHT].cpu().numpy() > 0
        f_w = batch[K.FORCES_WEIGHT].cpu().numpy() > 0
        s_w = batch[K.STRESS_WEIGHT].cpu().numpy() > 0
        energy = out[K.TOTAL_ENERGY].to(torch.float64).cpu().numpy()
        ref_e = batch[K.REF_ENERGY].to(torch.float64).cpu().numpy()
        forces = out[K.FORCES].to(torch.float64).cpu().numpy()
        ref_f = batch[K.REF_FORCES].to(torch.float64).cpu().numpy()
        stress = out[K.STRESS].to(torch.float64).cpu().numpy() if K.STRESS in out else None
        ref_s = batch[K.REF_STRESS].to(torch.float64).cpu().numpy()
        atom_batch = batch[K.BATCH].cpu().numpy()
        e_ref.append((ref_e / n)[e_w])
        e_pred.append((energy / n)[e_w])
        f_ref.append(ref_f[f_w].ravel())
        f_pred.append(forces[f_w].ravel())
        if stress is not None:
            s_ref.append(ref_s[s_w].ravel())
            s_pred.append(stress[s_w].ravel())
        for b, i in enumerate(idx):
            row: Dict[str, object] = {"index": i, "source": sources[i] if sources is not None else str(i),
                                      "num_atoms": int(n[b])}
            row["energy_ref_eV"] = float(ref_e[b]) if e_w[b] else math.nan
            row["energy_pred_eV"] = float(energy[b])
            row["energy_error_meV_per_atom"] = (1e3 * float(energy[b] - ref_e[b]) / n[b]) if e_w[b] else math.nan
            mask = (atom_batch == b) & f_w
            if mask.any():
                d = forces[mask] - ref_f[mask]
                row["forces_mae_meV_A"] = 1e3 * float(np.mean(np.abs(d)))
                row["forces_rmse_meV_A"] = 1e3 * float(np.sqrt(np.mean(d ** 2)))
            else:
                row["forces_mae_meV_A"] = row["forces_rmse_meV_A"] = math.nan
            if stress is not None and s_w[b]:
                d = stress[b] - ref_s[b]
                row["stress_rmse_meV_A3"] = 1e3 * float(np.sqrt(np.mean(d ** 2)))
            else:
                row["stress_rmse_meV_A3"] = math.nan
            row.update(_head_columns(heads, b, atom_batch))
            result.rows.append(row)
    result.metrics = acc.result()
    if keep:
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
        result.energy = [cat(e_ref), cat(e_pred)]
        result.forces = [cat(f_ref), cat(f_pred)]
        result.stress = [cat(s_ref), cat(s_pred)]
        result.heads = {q: [cat(r), cat(p)] for q, (r, p) in head_parts.items()}
    return result


def _head_values(out: Mapping[str, torch.Tensor], batch: Graph
                 ) -> Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """quantity -> (references, predictions, labelled mask) of the heads the model has (float64
    numpy; per structure, or per atom for ``atom_output``); references are NaN where absent."""
    values: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for q, pred_key, ref_key, weight_key in HEAD_FIELDS:
        if pred_key not in out:
            continue
        pred = out[pred_key].to(torch.float64).cpu().numpy()
        labelled = batch[weight_key].cpu().numpy() > 0
        ref = batch[ref_key].to(torch.float64).cpu().numpy() if ref_key in batch else None
        if ref is None or ref.shape != pred.shape:
            ref, labelled = np.full(pred.shape, np.nan), np.zeros(len(pred), dtype=bool)
        ref = np.where(labelled.reshape(-1, *([1] * (ref.ndim - 1))), ref, np.nan)
        values[q] = (ref, pred, labelled)
    return values


def _head_columns(heads: Mapping[str, Tuple[np.ndarray, np.ndarray, np.ndarray]], b: int,
                  atom_batch: np.ndarray) -> Dict[str, object]:
    """Per-structure CSV columns of the heads the model has: the dipole's components (e*A), the
    isotropic polarizability trace/3 (A^3), RMSEs per component; NaN where unlabelled."""
    row: Dict[str, object] = {}
    if "dipole" in heads:
        ref, pred, labelled = heads["dipole"]
        for k, axis in enumerate("xyz"):
            row[f"dipole_{axis}_ref_eA"] = float(ref[b, k])
            row[f"dipole_{axis}_pred_eA"] = float(pred[b, k])
        row["dipole_error_eA"] = float(np.linalg.norm(pred[b] - ref[b])) if labelled[b] else math.nan
    if "polarizability" in heads:
        ref, pred, labelled = heads["polarizability"]
        row["polarizability_iso_ref_A3"] = float(np.trace(ref[b]) / 3.0)
        row["polarizability_iso_pred_A3"] = float(np.trace(pred[b]) / 3.0)
        row["polarizability_rmse_A3"] = (float(np.sqrt(np.mean((pred[b] - ref[b]) ** 2))) if labelled[b]
                                         else math.nan)
    if "structure_output" in heads:
        ref, pred, labelled = heads["structure_output"]
        for k in range(pred.shape[1]):
            row[f"structure_output_{k}_ref"] = float(ref[b, k])
            row[f"structure_output_{k}_pred"] = float(pred[b, k])
    if "atom_output" in heads:
        ref, pred, labelled = heads["atom_output"]
        mask = (atom_batch == b) & labelled
        row["atom_output_rmse"] = float(np.sqrt(np.mean((pred[mask] - ref[mask]) ** 2))) if mask.any() else math.nan
    return row


def _check_finite(out: Dict[str, torch.Tensor], batch: Graph, idx: Sequence[int],
                  sources: Optional[Sequence[str]]) -> None:
    """Refuse NaN/inf predictions, naming the first structure that has one."""
    bad = ~torch.isfinite(out[K.TOTAL_ENERGY].detach())
    if K.FORCES in out:
        per_atom = (~torch.isfinite(out[K.FORCES].detach())).any(dim=1).to(torch.long)
        bad |= torch.zeros_like(bad, dtype=torch.long).index_add_(0, batch[K.BATCH], per_atom) > 0
    if bool(bad.any()):
        b = int(torch.nonzero(bad)[0])
        name = sources[idx[b]] if sources is not None else f"structure {idx[b]}"
        raise NonFiniteError(f"{name}: the model predicts a non-finite energy or forces for this structure "
                             f"({int(bad.sum())} such in its batch); check the structure and the model")


def write_outputs(pred: Predictions, out_dir: str, name: str) -> Dict[str, str]:
    """Per-structure CSV, metrics JSON and parity PNGs for one data set; returns what was written."""
    from mlip.checkpoint import atomic_file
    from mlip.train.plots import parity_plot

    os.makedirs(out_dir, exist_ok=True)
    written: Dict[str, str] = {}
    csv_path = os.path.join(out_dir, f"{name}_per_structure.csv")
    if pred.rows:
        with atomic_file(csv_path, "w") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(pred.rows[0]))
            writer.writeheader()
            for row in pred.rows:
                writer.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})
        written["csv"] = csv_path
    json_path = os.path.join(out_dir, f"{name}_metrics.json")
    with atomic_file(json_path, "w") as fh:
        json.dump({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in pred.metrics.items()},
                  fh, indent=1)
    written["metrics"] = json_path
    for q, (ref, p) in (("energy", pred.energy), ("forces", pred.forces), ("stress", pred.stress)):
        if len(ref):
            path = parity_plot(ref, p, os.path.join(out_dir, f"{name}_parity_{q}.png"), q, f"{name}: {q}")
            if path:
                written[f"parity_{q}"] = path
    for q, (ref, p) in pred.heads.items():
        if len(ref):
            path = parity_plot(ref, p, os.path.join(out_dir, f"{name}_parity_{q}.png"), q, f"{name}: {q}")
            if path:
                written[f"parity_{q}"] = path
    return written
