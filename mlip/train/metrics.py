"""MAE and RMSE of energy per atom (eV/atom), total energy (eV), forces (eV/A, per component) and
stress (eV/A^3, per component), accumulated over batches; only labelled entries count.

A model with output heads (:mod:`mlip.nn.heads`) adds the dipole (e*A, per component), the
polarizability (A^3, per component) and the generic outputs (label units, per component):
:data:`HEAD_QUANTITIES`. They are reported only where something was labelled, so the results
(and the metrics files) of energy-only models keep exactly the quantities in :data:`QUANTITIES`.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional

import torch

from mlip.data import keys as K

QUANTITIES = ("energy", "energy_total", "forces", "stress")
# (quantity, output field, reference field, weight field) of the output heads' quantities
HEAD_FIELDS = (("dipole", K.DIPOLE, K.REF_DIPOLE, K.DIPOLE_WEIGHT),
               ("polarizability", K.POLARIZABILITY, K.REF_POLARIZABILITY, K.POLARIZABILITY_WEIGHT),
               ("structure_output", K.STRUCTURE_OUTPUT, K.REF_STRUCTURE_OUTPUT, K.STRUCTURE_OUTPUT_WEIGHT),
               ("atom_output", K.ATOM_OUTPUT, K.REF_ATOM_OUTPUT, K.ATOM_OUTPUT_WEIGHT))
HEAD_QUANTITIES = tuple(q for q, _, _, _ in HEAD_FIELDS)
UNITS = {"energy": "eV/atom", "energy_total": "eV", "forces": "eV/A", "stress": "eV/A^3", "dipole": "e*A",
         "polarizability": "A^3", "structure_output": "label units", "atom_output": "label units"}
# displayed in milli-units, as the MACE/NequIP literature reports them
DISPLAY = {"energy": ("meV/atom", 1e3), "energy_total": ("meV", 1e3), "forces": ("meV/A", 1e3),
           "stress": ("meV/A^3", 1e3), "dipole": ("me*A", 1e3), "polarizability": ("A^3", 1.0),
           "structure_output": ("label units", 1.0), "atom_output": ("label units", 1.0)}


class ErrorAccumulator:
    """Sums of |error|, error^2 and counts per quantity; ``state_dict`` is plain floats (resumable)."""

    def __init__(self) -> None:
        # abs, sq, count; the head quantities too (the same keys on every DDP rank)
        self.sums: Dict[str, list] = {q: [0.0, 0.0, 0.0] for q in QUANTITIES + HEAD_QUANTITIES}
        self.loss_sum = 0.0
        self.loss_count = 0

    def add_loss(self, loss: float, weight: int = 1) -> None:
        self.loss_sum += float(loss) * weight
        self.loss_count += weight

    def _add(self, q: str, err: torch.Tensor, weight: torch.Tensor) -> None:
        err = err.detach().to(torch.float64)
        w = weight.detach().to(torch.float64).reshape(-1, *([1] * (err.dim() - 1))).expand_as(err)
        s = self.sums[q]
        s[0] += float((err.abs() * w).sum())
        s[1] += float((err.square() * w).sum())
        s[2] += float(w.sum())

    def update(self, out: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        """Add one batch of predictions ``out`` against the labels in ``batch``."""
        n = batch[K.NUM_ATOMS].to(torch.float64)
        e_err = out[K.TOTAL_ENERGY].detach().to(torch.float64) - batch[K.REF_ENERGY].to(torch.float64)
        self._add("energy", e_err / n, batch[K.ENERGY_WEIGHT])
        self._add("energy_total", e_err, batch[K.ENERGY_WEIGHT])
        if K.FORCES in out:
            self._add("forces", out[K.FORCES].detach() - batch[K.REF_FORCES].to(out[K.FORCES].dtype),
                      batch[K.FORCES_WEIGHT])
        if K.STRESS in out:
            self._add("stress", out[K.STRESS].detach() - batch[K.REF_STRESS].to(out[K.STRESS].dtype),
                      batch[K.STRESS_WEIGHT])
        for q, pred, ref, weight in HEAD_FIELDS:
            if pred in out and ref in batch and q in self.sums:
                p = out[pred].detach()
                r = batch[ref].to(p.dtype)
                if r.shape == p.shape:
                    self._add(q, p - r, batch[weight])

    def result(self) -> Dict[str, float]:
        """``{quantity}_mae``, ``{quantity}_rmse`` (base units; NaN when nothing was labelled) and
        ``loss``; the head quantities only when something was labelled."""
        out: Dict[str, float] = {}
        for q, (a, s, c) in self.sums.items():
            if q in HEAD_QUANTITIES and not c:
                continue
            out[f"{q}_mae"] = a / c if c else math.nan
            out[f"{q}_rmse"] = math.sqrt(s / c) if c else math.nan
        out["loss"] = self.loss_sum / self.loss_count if self.loss_count else math.nan
        return out

    def state_dict(self) -> Dict[str, object]:
        return {"sums": {q: list(v) for q, v in self.sums.items()}, "loss_sum": self.loss_sum,
                "loss_count": self.loss_count}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        # a checkpoint written before the head quantities existed lacks them: zeros
        self.sums = {q: [0.0, 0.0, 0.0] for q in QUANTITIES + HEAD_QUANTITIES}
        self.sums.update({q: [float(x) for x in v] for q, v in state["sums"].items()})
        self.loss_sum = float(state["loss_sum"])
        self.loss_count = int(state["loss_count"])


def weighted_metric(metrics: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """sum_q w_q RMSE_q over quantities with a weight and a value: the best-model criterion."""
    total, used = 0.0, False
    for q, w in weights.items():
        v = metrics.get(f"{q}_rmse", math.nan)
        if w > 0 and not math.isnan(v):
            total += w * v
            used = True
    return total if used else metrics.get("loss", math.nan)


def format_errors(metrics: Mapping[str, float]) -> str:
    """'E 1.2 F 34.5 S 0.6' in meV units, skipping quantities without labels."""
    parts = []
    for q, label in (("energy", "E"), ("forces", "F"), ("stress", "S")):
        v = metrics.get(f"{q}_rmse", math.nan)
        if not math.isnan(v):
            parts.append(f"{label} {v * DISPLAY[q][1]:.4g}")
    # the heads' quantities, when labelled: with their units (the log's header names E, F, S only)
    for q, label in (("dipole", "mu"), ("polarizability", "alpha"), ("structure_output", "out"),
                     ("atom_output", "atom_out")):
        v = metrics.get(f"{q}_rmse", math.nan)
        if not math.isnan(v):
            parts.append(f"{label} {v * DISPLAY[q][1]:.4g} {DISPLAY[q][0]}")
    return " ".join(parts)


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """A text table: one row per data set, MAE and RMSE of each quantity in meV units."""
    header = ["set"]
    cols = []
    for q in QUANTITIES + HEAD_QUANTITIES:
        unit, _ = DISPLAY[q]
        if any(not math.isnan(r.get(f"{q}_mae", math.nan)) for r in rows.values()):
            cols.append(q)
            header += [f"{q} MAE [{unit}]", f"{q} RMSE [{unit}]"]
    lines = [header]
    for name, r in rows.items():
        line = [name]
        for q in cols:
            f = DISPLAY[q][1]
            for kind in ("mae", "rmse"):
                v = r.get(f"{q}_{kind}", math.nan)
                line.append("-" if math.isnan(v) else f"{v * f:.3f}")
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    out = [fmt(lines[0]), "  ".join("-" * w for w in widths)]
    out += [fmt(r) for r in lines[1:]]
    return "\n".join(out)


def nan_if_none(x: Optional[float]) -> float:
    return math.nan if x is None else float(x)
