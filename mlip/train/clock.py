"""The training clock: time spent in the training loop over a run and its resumptions, the
fraction of ``train.max_time_minutes`` used, and what the schedule follows in a budget run.

A budget run's learning-rate schedule, warm-up and stage two follow the fraction of the budget
used (``train.schedule_follows_budget``), so the run ends annealed instead of being cut off
mid-schedule. Under DDP the fraction the schedule sees is the one agreed on in the last step's
all-reduce (see :func:`mlip.train.step.train_step`), never a rank's own clock.
"""
from __future__ import annotations

import time
from typing import Optional


class TrainingClock:
    """``budget_minutes``: the run's time budget (None: none); ``follow``: whether the schedule
    follows it."""

    def __init__(self, budget_minutes: Optional[float], follow: bool):
        self.budget_s = None if budget_minutes is None else 60.0 * float(budget_minutes)
        self.follow = bool(follow)
        self.seconds_before = 0.0            # spent by earlier processes of this run (checkpoint)
        self._t_start: Optional[float] = None
        self.progress: Optional[float] = None  # budget used as of the last step, agreed by all ranks

    def start(self, seconds_before: float) -> None:
        """Start this process's clock; ``seconds_before`` from the checkpoint resumed."""
        self.seconds_before, self._t_start = float(seconds_before), time.perf_counter()
        # the checkpoint's figure, not this process's clock: the same on every rank
        self.progress = None if self.budget_s is None else self.seconds_before / self.budget_s

    @property
    def started(self) -> bool:
        return self._t_start is not None

    def seconds(self) -> float:
        """Seconds in the training loop, this process and the ones this run resumes."""
        now = time.perf_counter() - self._t_start if self._t_start is not None else 0.0
        return self.seconds_before + now

    def used(self) -> Optional[float]:
        """This process's reading of the fraction of the budget used; None without a budget."""
        return None if self.budget_s is None else self.seconds() / self.budget_s

    @property
    def exhausted(self) -> bool:
        return self.progress is not None and self.progress >= 1.0

    def schedule_progress(self) -> Optional[float]:
        """What the learning-rate schedule follows besides steps (None: steps alone)."""
        return self.progress if self.follow else None

    def stage_two_due(self, start_epoch: Optional[int], max_epochs: int) -> bool:
        """Whether a budget run should be in stage two by now: the budget fraction
        ``start_epoch / max_epochs`` is used."""
        progress = self.schedule_progress()
        return progress is not None and start_epoch is not None and progress >= start_epoch / max_epochs


__all__ = ["TrainingClock"]
