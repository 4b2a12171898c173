"""One optimiser step: forward (energy, forces, stress), loss, backward, clipping, update.

The step knows nothing of epochs, files or checkpoints. DDP and compilation enter only through
:class:`~mlip.train.model_setup.StepModel` (what ``forward`` is, whether gradients are
all-reduced by hand) and ``dist`` (how this rank's loss relates to the global batch's).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from mlip.errors import TrainingDiverged
from mlip.train import distributed as dist_utils
from mlip.train.model_setup import StepModel

LossFn = Callable[..., Any]  # (out, batch, counts=None) -> (loss, parts), see mlip.train.loss.compute_loss


class NonFiniteStep(Exception):
    """A non-finite loss or gradient norm: the step stopped before the weights changed."""


@dataclass
class StepOutcome:
    out: Dict[str, torch.Tensor]   # the model's outputs on this rank's structures
    loss: float                    # the loss of the whole (global) batch
    local: Sequence[int]           # the structures of the batch that this rank ran
    time_up: bool                  # the time budget ran out (on any rank)
    progress: Optional[float]      # fraction of the time budget used (mean over ranks), None without one


def train_step(model: StepModel, batch: Dict[str, torch.Tensor], loss_fn: LossFn,
               optimizer: torch.optim.Optimizer, params: List[torch.nn.Parameter], idx: Sequence[int],
               need_stress: bool, clip: Optional[float], dist: Any,
               counts: Optional[Dict[str, float]] = None,
               budget_used: Callable[[], Optional[float]] = lambda: None) -> StepOutcome:
    """Train on one batch (this rank's share of structures ``idx`` under DDP).

    Under DDP ``counts`` are the label counts of the whole global batch: each rank's loss is its
    part of the global loss (sums over its structures / counts of the batch), so the ranks'
    gradients add up to the global batch's. A rank without structures of its own runs one with
    zero weight, so that it still takes part in the all-reduce. ``budget_used()``: the fraction
    of the time budget this rank has used (None without a budget); under DDP the ranks' mean,
    so that every rank sees the same value (the learning rate may depend on it).
    """
    if dist.enabled:
        local = dist_utils.shard(idx, dist)
        out = model.forward(batch, compute_forces=True, compute_stress=need_stress, training=True)
        loss, _ = loss_fn(out, batch, counts)
        if not local:
            loss = loss * 0.0
        # one all-reduce: the batch's loss, whether any rank ran out of time, the budget used
        used = budget_used()
        loss_value, up, used_sum = dist_utils.all_reduce_sum(
            [float(loss.detach()), float(used is not None and used >= 1.0), used or 0.0], dist)
        time_up = up > 0
        progress = None if used is None else used_sum / dist.world_size
        # DDP averages the ranks' gradients: scale so that their sum is what counts
        backward_loss = loss * dist.world_size
    else:
        local = idx
        out = model.forward(batch, compute_forces=True, compute_stress=need_stress, training=True)
        loss, _ = loss_fn(out, batch)
        loss_value = float(loss.detach())
        progress = budget_used()
        time_up = progress is not None and progress >= 1.0
        backward_loss = loss
    if not math.isfinite(loss_value):
        raise NonFiniteStep(f"the loss is {loss_value}")
    optimizer.zero_grad(set_to_none=True)
    backward_loss.backward()
    if model.sync_gradients:
        dist_utils.average_gradients(params, dist)
    # the norm is needed anyway to catch inf/NaN gradients before they reach the weights
    norm = torch.nn.utils.clip_grad_norm_(params, clip if clip is not None else math.inf)
    if not math.isfinite(float(norm)):
        raise NonFiniteStep(f"the gradient norm is {float(norm)}")
    optimizer.step()
    return StepOutcome(out=out, loss=loss_value, local=local, time_up=time_up, progress=progress)


def diverged_error(what: str, epoch: int, step_in_epoch: int, batches_per_epoch: int, global_step: int,
                   structures: str, last_checkpoint: Optional[str]) -> TrainingDiverged:
    """The one-line error of a step that found ``what`` (a non-finite loss or gradient norm):
    where, which structures, what is intact, what to try."""
    where = last_checkpoint or "(none yet: the run diverged before its first checkpoint)"
    return TrainingDiverged(
        f"training stopped: {what} at epoch {epoch}, batch {step_in_epoch + 1}/{batches_per_epoch} "
        f"(step {global_step + 1}; structures {structures}). "
        f"The weights were not updated with this batch. Last good checkpoint: {where}. "
        "Try a lower optim.lr, a smaller optim.clip_grad_norm or loss weights, float64, or check these "
        "structures' labels; `mlip train` resumes from that checkpoint.")


__all__ = ["train_step", "StepOutcome", "NonFiniteStep", "diverged_error"]
