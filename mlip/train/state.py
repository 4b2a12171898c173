"""Where a run is and what it has seen: the part of a checkpoint that is not weights.

Exact resume needs every value that changes while training: the position (epoch, batches done
in it, optimiser steps), the partial epoch's error sums, the history of finished epochs and the
best-model bookkeeping. They live here, in one object, saved and restored as one dictionary.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, TextIO

from mlip.train.metrics import HEAD_QUANTITIES, QUANTITIES, ErrorAccumulator

# one row per epoch in history, metrics.csv and wandb
HISTORY_COLUMNS = (["epoch", "stage", "lr", "time_s", "energy_weight", "forces_weight", "stress_weight"]
                   + [f"{split}_{name}" for split in ("train", "valid")
                      for name in ["loss"] + [f"{q}_{k}" for q in QUANTITIES for k in ("mae", "rmse")]]
                   + ["metric", "best"])
# the output heads' weights and errors (mlip.nn.heads): in a row, and appended to metrics.csv,
# only when the run has them (a positive weight; a labelled quantity), so energy-only runs keep
# exactly HISTORY_COLUMNS
HEAD_COLUMNS = ([f"{q}_weight" for q in HEAD_QUANTITIES]
                + [f"{split}_{q}_{k}" for split in ("train", "valid") for q in HEAD_QUANTITIES
                   for k in ("mae", "rmse")])


@dataclass
class TrainingState:
    """The training position and the bookkeeping that goes with it (epochs are 0-based here;
    everything the user reads counts from 1)."""

    epoch: int = 0               # the epoch in progress
    step_in_epoch: int = 0       # batches of it already done
    global_step: int = 0         # optimiser steps since the start of the run
    epoch_acc: ErrorAccumulator = field(default_factory=ErrorAccumulator)  # this epoch's errors so far
    epoch_time: float = 0.0      # seconds spent training this epoch so far
    history: List[Dict[str, float]] = field(default_factory=list)  # one row per finished epoch
    best_metric: float = math.inf
    best_epoch: int = -1
    bad_validations: int = 0     # validations since the last new best
    stopped_early: bool = False
    wandb_id: Optional[str] = None
    train_seconds: float = 0.0   # time in the training loop, all processes of the run, up to the last save

    @property
    def at_start(self) -> bool:
        return self.epoch == 0 and self.step_in_epoch == 0 and self.global_step == 0

    def start_next_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_acc = ErrorAccumulator()
        self.epoch_time = 0.0

    def judge(self, metric: float) -> bool:
        """Count one validation scored ``metric`` (lower is better) for the current epoch; True
        when it is a new best."""
        if metric < self.best_metric:
            self.best_metric, self.best_epoch, self.bad_validations = metric, self.epoch, 0
            return True
        self.bad_validations += 1
        return False

    def add_epoch(self, stage: int, lr: float, weights: Any, train: Mapping[str, float], valid: Mapping[str, float],
                  metric: Optional[float], is_best: bool) -> Dict[str, float]:
        """Append the current epoch's row to the history (missing values NaN) and return it.
        Epochs count from 1 in everything the user reads (log, CSV, plots)."""
        row: Dict[str, float] = {"epoch": self.epoch + 1, "stage": stage, "lr": lr,
                                 "time_s": round(self.epoch_time, 3), "energy_weight": weights.energy,
                                 "forces_weight": weights.forces, "stress_weight": weights.stress}
        row.update({f"train_{k}": v for k, v in train.items()})
        row.update({f"valid_{k}": v for k, v in valid.items()})
        if metric is not None:
            row["metric"] = metric
        row["best"] = int(is_best)
        heads = {k: v for k, v in row.items() if k in HEAD_COLUMNS}
        heads.update({f"{q}_weight": getattr(weights, q) for q in HEAD_QUANTITIES if getattr(weights, q, 0.0) > 0})
        row = {k: row.get(k, math.nan) for k in HISTORY_COLUMNS}
        row.update({k: heads[k] for k in HEAD_COLUMNS if k in heads})
        self.history.append(row)
        return row

    def state_dict(self) -> Dict[str, Any]:
        """The checkpoint entries of this state (names kept from checkpoint format 1)."""
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "epoch_metrics": self.epoch_acc.state_dict(),
            "epoch_time": self.epoch_time,
            "history": [dict(h) for h in self.history],
            "best": {"metric": self.best_metric, "epoch": self.best_epoch, "bad_validations": self.bad_validations,
                     "stopped_early": self.stopped_early},
            "wandb_id": self.wandb_id,
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, obj: Mapping[str, Any], with_epoch_metrics: bool = True) -> None:
        """Restore from a checkpoint. ``with_epoch_metrics``: take the partial epoch's error sums
        (rank 0 only under DDP: its copy holds the sums of all ranks)."""
        self.epoch = int(obj["epoch"])
        self.step_in_epoch = int(obj["step_in_epoch"])
        self.global_step = int(obj["global_step"])
        if with_epoch_metrics:
            self.epoch_acc.load_state_dict(obj["epoch_metrics"])
        self.epoch_time = float(obj.get("epoch_time", 0.0))
        self.history = [dict(h) for h in obj["history"]]
        best = obj["best"]
        self.best_metric, self.best_epoch = float(best["metric"]), int(best["epoch"])
        self.bad_validations = int(best["bad_validations"])
        self.stopped_early = bool(best.get("stopped_early", False))
        self.wandb_id = obj.get("wandb_id")
        self.train_seconds = float(obj.get("train_seconds", 0.0))  # absent before 2026-12-05

    def write_csv(self, fh: TextIO) -> None:
        """The history as metrics.csv: a header of HISTORY_COLUMNS (plus the HEAD_COLUMNS that
        some epoch has), one row per epoch."""
        columns = list(HISTORY_COLUMNS) + [k for k in HEAD_COLUMNS if any(k in h for h in self.history)]
        writer = csv.writer(fh)
        writer.writerow(columns)
        for h in self.history:
            writer.writerow(["" if isinstance(h.get(k), float) and math.isnan(h[k]) else
                             (f"{h[k]:.8g}" if isinstance(h.get(k), float) else h.get(k, ""))
                             for k in columns])


__all__ = ["TrainingState", "HISTORY_COLUMNS", "HEAD_COLUMNS"]
