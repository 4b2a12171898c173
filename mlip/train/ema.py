"""Exponential moving average of the weights, kept in a second copy of the model.

``ema = d * ema + (1 - d) * w`` after every optimiser step, with the effective decay warmed up
as ``min(decay, (1 + n) / (10 + n))`` so the first steps are not dominated by the random init.
Validation and saved models use the EMA copy; it is smoother and usually more accurate.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping

import torch


class EMA:
    """Holds ``self.model``, a frozen copy of the trained model whose parameters trail it."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.num_updates = 0
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.mul_(d).add_(p.detach(), alpha=1.0 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)

    def state_dict(self) -> Dict[str, Any]:
        return {"num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> None:
        self.num_updates = int(state["num_updates"])
        self.model.load_state_dict(weights)
