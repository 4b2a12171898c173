"""What a run writes besides checkpoints: statistics, resolved config, model files, the metrics
CSV, the learning curve and the scores after training (rank 0 only; every write atomic).

A write that fails for lack of room or permission is a :class:`~mlip.errors.StorageError` that
says which checkpoint is still intact and how to go on.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch

from mlip.checkpoint import atomic_file, save_model_file
from mlip.errors import StorageError
from mlip.train.config import dump_config
from mlip.train.evaluation import predict, write_outputs
from mlip.train.metrics import format_table
from mlip.train.state import TrainingState
from mlip.train.statistics import Statistics


class RunFiles:
    """The files of one run directory. ``progress()`` returns (optimiser steps done, path of the
    last good checkpoint or None), for the message of a failed write."""

    def __init__(self, run_dir: str, log: Callable[[str], None], progress: Callable[[], Tuple[int, Optional[str]]]):
        self.run_dir = run_dir
        self.log = log
        self.progress = progress

    def path(self, name: str) -> str:
        return os.path.join(self.run_dir, name)

    def storage_error(self, exc: StorageError) -> StorageError:
        """``exc`` plus what is still intact and how to go on."""
        step, last = self.progress()
        return StorageError(f"{exc}. Training stopped after step {step}; the last good checkpoint "
                            f"{last or '(none yet)'} is intact: make room, then run the same `mlip train` command "
                            "again to resume from it")

    def write_start(self, stats: Statistics, cfg: Mapping[str, Any]) -> None:
        """statistics.json and the resolved config.yaml (every default filled in)."""
        with atomic_file(self.path("statistics.json"), "w") as fh:
            json.dump(stats.to_dict(), fh, indent=1)
        dump_config(cfg, self.path("config.yaml"))

    def save_model(self, name: str, record: Mapping[str, Any], stats: Statistics, info: Mapping[str, Any]) -> str:
        """A model file (``best_model.pt``, ``last_model.pt``): the record plus statistics and ``info``."""
        path = self.path(name)
        try:
            save_model_file(path, record, {"statistics": stats.to_dict(), "training": dict(info)})
        except StorageError as exc:
            raise self.storage_error(exc) from None
        return path

    def write_csv(self, state: TrainingState) -> None:
        """metrics.csv, rewritten whole from the history (a resumed run drops an unfinished row)."""
        try:
            with atomic_file(self.path("metrics.csv"), "w") as fh:
                state.write_csv(fh)
        except StorageError as exc:
            raise self.storage_error(exc) from None

    def learning_curve(self, state: TrainingState, stage_two_epoch: Optional[int]) -> Optional[str]:
        """learning_curve.png; a failure is a warning (a plot must never cost a run)."""
        from mlip.train.plots import learning_curve

        try:
            return learning_curve(state.history, self.path("learning_curve.png"), stage_two_epoch)
        except Exception as exc:
            self.log(f"warning: learning curve not written ({type(exc).__name__}: {exc})")
            return None

    def final_evaluation(self, model_path: str, sets: Sequence[Tuple[str, Any]], device: torch.device,
                         batch_size: int) -> Dict[str, Dict[str, float]]:
        """Score the model file on each (name, graph set): per-structure CSV and parity plots in
        ``test/``, a table of errors in the log."""
        from mlip.checkpoint import load_model

        model = load_model(model_path, device=str(device))
        model.eval()
        rows: Dict[str, Dict[str, float]] = {}
        out_dir = self.path("test")
        for name, gs in sets:
            pred = predict(model, gs.graphs, batch_size, device, gs.has_stress(), sources=gs.sources, keep=True)
            write_outputs(pred, out_dir, name)
            rows[name] = pred.metrics
        if rows:
            self.log(f"errors of {os.path.basename(model_path)} (EMA weights):\n{format_table(rows)}")
        self.log(f"model: {model_path}\nlearning curve: {self.path('learning_curve.png')}\n"
                 f"metrics per epoch: {self.path('metrics.csv')}"
                 + (f"\nparity plots and per-structure errors: {out_dir}" if rows else ""))
        return rows


__all__ = ["RunFiles"]
