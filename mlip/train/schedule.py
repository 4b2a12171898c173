"""Learning-rate schedules: constant, reduce-on-plateau and cosine, each with linear warm-up,
and a constant rate in stage two.

The rate is a pure function of the global step and a little plateau state (plain numbers),
so it is recomputed identically after a resume. A run with a time budget may instead pass the
fraction of the budget used (``progress``): it counts as that fraction of all ``max_epochs``
steps when that is further than the step count, so warm-up and the cosine end where the
budget does.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional


class LRSchedule:
    """``lr(epoch, global_step)`` per optimiser step; ``end_epoch(metric)`` after validation."""

    def __init__(self, cfg: Mapping[str, Any], base_lr: float, steps_per_epoch: int, max_epochs: int,
                 stage_two_epoch: Optional[int] = None, stage_two_lr: Optional[float] = None):
        self.kind = cfg["type"]
        self.base_lr = float(base_lr)
        self.min_lr = float(cfg["min_lr"])
        self.factor = float(cfg["factor"])
        self.patience = int(cfg["patience"])
        self.threshold = float(cfg["threshold"])
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.warmup_steps = int(round(float(cfg["warmup_epochs"]) * self.steps_per_epoch))
        self.max_epochs = int(max_epochs)
        self.stage_two_epoch = stage_two_epoch
        self.stage_two_lr = stage_two_lr
        # plateau state
        self.plateau_lr = self.base_lr
        self.best = math.inf
        self.bad_epochs = 0

    def lr(self, epoch: int, global_step: int, progress: Optional[float] = None) -> float:
        """The rate of the step after ``global_step`` steps, in ``epoch``. ``progress``: the
        fraction of a time budget used (None: the schedule follows steps alone)."""
        if self.stage_two_epoch is not None and epoch >= self.stage_two_epoch:
            return float(self.stage_two_lr)
        if progress is not None:
            global_step = max(global_step, int(min(1.0, progress) * self.max_epochs * self.steps_per_epoch))
        warm = min(1.0, (global_step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.kind == "plateau":
            return max(self.min_lr, self.plateau_lr) * warm
        if self.kind == "cosine":
            if warm < 1.0:
                return self.base_lr * warm
            # anneal to min_lr at the end of stage one (or of training)
            end_epoch = self.stage_two_epoch if self.stage_two_epoch is not None else self.max_epochs
            total = max(1, end_epoch * self.steps_per_epoch - self.warmup_steps)
            t = min(1.0, (global_step - self.warmup_steps) / total)
            return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * t))
        return self.base_lr * warm

    def end_epoch(self, epoch: int, metric: float) -> bool:
        """Feed a validation metric (plateau only); returns True when the lr was reduced."""
        if self.kind != "plateau" or (self.stage_two_epoch is not None and epoch >= self.stage_two_epoch):
            return False
        if not math.isfinite(metric):
            return False
        if metric < self.best * (1.0 - self.threshold):
            self.best = metric
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.plateau_lr = max(self.min_lr, self.plateau_lr * self.factor)
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self) -> Dict[str, Any]:
        return {"plateau_lr": self.plateau_lr, "best": self.best, "bad_epochs": self.bad_epochs,
                "stage_two_epoch": self.stage_two_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.plateau_lr = float(state["plateau_lr"])
        self.best = float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.stage_two_epoch = state["stage_two_epoch"]


def make_optimizer(params: List[Any], optim_cfg: Mapping[str, Any]) -> Any:
    """Adam or AdamW as the ``optim`` section says (lr, betas, weight decay, AMSGrad)."""
    import torch

    cls = torch.optim.AdamW if optim_cfg["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=optim_cfg["lr"], betas=tuple(optim_cfg["betas"]), weight_decay=optim_cfg["weight_decay"],
               amsgrad=optim_cfg["amsgrad"])
