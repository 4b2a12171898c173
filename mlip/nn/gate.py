"""Gated nonlinearity (NequIP/e3nn's Gate) on the [N, D, C] layout.

Even scalars go through SiLU, odd scalars through tanh (an odd function keeps their parity),
and each non-scalar irrep is multiplied by the sigmoid of its own even gate scalar. The input
carries the features followed by one 0e gate block per non-scalar irrep.
"""

from functools import lru_cache
from typing import List, Sequence, Tuple

import torch
from torch import nn

from mlip.irreps import Irrep, e3nn_irreps, irreps_slices

# mean-square of act(x) for x ~ N(0, 1); dividing by its square root keeps unit variance
SILU_GAIN = 1.0 / 0.3557 ** 0.5
_TANH_GAIN = 1.0 / 0.3943 ** 0.5


@lru_cache(maxsize=None)
def e3nn_gain(activation: str) -> float:
    """e3nn's normalisation of "silu" or "tanh" (``normalize2mom``: 1 / sqrt of the mean square
    over 10^6 seeded normal samples; SiLU 1.67918, tanh 1.59373), which mace-torch's and NequIP's
    MLPs and gates use. They differ from SILU_GAIN and _TANH_GAIN (mean squares rounded to four
    digits) by 0.15 % and 0.08 %: only the compat models use them, so that they compute what
    the peers compute."""
    from e3nn.math import normalize2mom

    return float(normalize2mom({"silu": torch.nn.functional.silu, "tanh": torch.tanh}[activation]).cst)


_SIGMOID_GAIN = 1.0 / 0.2933 ** 0.5

_EVEN_SCALAR, _ODD_SCALAR, _GATED = 0, 1, 2


def gate_input_irreps(irreps_out: Sequence[Irrep]) -> List[Irrep]:
    """What the layer before a gate must produce: the features, then one 0e gate per non-scalar."""
    return list(irreps_out) + [(0, 1)] * sum(1 for l, _ in irreps_out if l > 0)


class Gate(nn.Module):
    """``e3nn_nequip``: e3nn's Gate as NequIP configures it: the gates go through SiLU (not
    sigmoid), and SiLU and tanh are normalised with e3nn's sampled constants
    (:func:`e3nn_gain`) instead of the rounded ones."""

    def __init__(self, irreps_out: Sequence[Irrep], channels: int, e3nn_nequip: bool = False):
        super().__init__()
        self.irreps_in = e3nn_irreps(gate_input_irreps(irreps_out), channels)
        self.irreps_out = e3nn_irreps(irreps_out, channels)
        self.silu_gain, self.tanh_gain, self.sigmoid_gain = SILU_GAIN, _TANH_GAIN, _SIGMOID_GAIN
        self.silu_gates = bool(e3nn_nequip)
        if e3nn_nequip:
            self.silu_gain, self.tanh_gain = e3nn_gain("silu"), e3nn_gain("tanh")
        slices = irreps_slices(irreps_out)
        self.dim_out = slices[-1][1]
        # (kind, start, stop, gate index) for every output irrep, in order
        self.blocks: List[Tuple[int, int, int, int]] = []
        n_gated = 0
        for (l, p), (a, b) in zip(irreps_out, slices):
            if l > 0:
                self.blocks.append((_GATED, a, b, self.dim_out + n_gated))
                n_gated += 1
            else:
                self.blocks.append((_EVEN_SCALAR if p == 1 else _ODD_SCALAR, a, b, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts: List[torch.Tensor] = []
        for kind, a, b, g in self.blocks:
            if kind == 0:  # even scalar
                parts.append(torch.nn.functional.silu(x[:, a:b]) * self.silu_gain)
            elif kind == 1:  # odd scalar
                parts.append(torch.tanh(x[:, a:b]) * self.tanh_gain)
            elif self.silu_gates:  # gated irrep, NequIP's SiLU gates
                parts.append(x[:, a:b] * (torch.nn.functional.silu(x[:, g:g + 1]) * self.silu_gain))
            else:  # gated irrep
                parts.append(x[:, a:b] * (torch.sigmoid(x[:, g:g + 1]) * self.sigmoid_gain))
        return torch.cat(parts, dim=1)
