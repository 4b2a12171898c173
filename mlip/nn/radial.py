"""Radial embedding: Bessel basis times a smooth polynomial cutoff, and the radial MLP."""

import math
from typing import List, Optional

import torch
from torch import nn

from mlip.nn.gate import SILU_GAIN
from mlip.ops.silu import silu_gain


def unit_uniform(*shape: int) -> torch.Tensor:
    """Uniform on [-sqrt(3), sqrt(3)]: mean 0, variance 1 (NequIP's initialisation of its MLPs)."""
    return torch.empty(*shape).uniform_(-math.sqrt(3.0), math.sqrt(3.0))


class BesselBasis(nn.Module):
    """sqrt(2 / r_max) * sin(n pi r / r_max) / r for n = 1..num_basis; the frequencies are
    trainable parameters, or a fixed buffer with ``trainable=False`` (mace-torch's choice).
    ``prefactor`` replaces sqrt(2 / r_max) (NequIP's basis, times its constant factor, has
    2 / r_max)."""

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = True, prefactor: Optional[float] = None):
        super().__init__()
        self.r_max = float(r_max)
        self.prefactor = math.sqrt(2.0 / self.r_max) if prefactor is None else float(prefactor)
        freqs = torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) * math.pi / self.r_max
        if trainable:
            self.frequencies = nn.Parameter(freqs)
        else:  # same state-dict key either way
            self.register_buffer("frequencies", freqs)

    def forward(self, r: torch.Tensor) -> torch.Tensor:  # [E] -> [E, num_basis]
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.frequencies * r) / r


class PolynomialCutoff(nn.Module):
    """Envelope that goes to zero at r_max with p continuous derivatives (NequIP's, p = 6).

    f(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2),  x = r / r_max, 0 beyond.
    """

    def __init__(self, r_max: float, p: int = 6):
        super().__init__()
        self.r_max = float(r_max)
        self.p = float(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = r / self.r_max
        env = (1.0 - 0.5 * (p + 1.0) * (p + 2.0) * x.pow(p) + p * (p + 2.0) * x.pow(p + 1.0)
               - 0.5 * p * (p + 1.0) * x.pow(p + 2.0))
        return env * (x < 1.0).to(r.dtype)


class RadialEmbedding(nn.Module):
    """Edge lengths [E] (Angstrom) -> smooth radial features [E, num_basis], zero at r_max."""

    def __init__(self, r_max: float, num_basis: int = 8, cutoff_p: int = 6, trainable_bessel: bool = True,
                 bessel_prefactor: Optional[float] = None):
        super().__init__()
        self.bessel = BesselBasis(r_max, num_basis, trainable_bessel, bessel_prefactor)
        self.cutoff = PolynomialCutoff(r_max, cutoff_p)
        self.num_basis = num_basis
        self.irreps_out = f"{num_basis}x0e"

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.bessel(r) * self.cutoff(r).unsqueeze(-1)


class RadialMLP(nn.Module):
    """Radial features -> per-edge weights [E, num_paths, channels] for one tensor product.

    Weights are normal(0, 1) and scaled by 1/sqrt(fan_in) in the forward pass (e3nn's
    convention), so initial outputs have unit variance whatever the width. ``uniform_init``:
    uniform on [-sqrt(3), sqrt(3)] instead (also unit variance; NequIP's MLPs).
    """

    def __init__(self, num_basis: int, hidden: int, depth: int, num_paths: int, channels: int,
                 act_gain: float = SILU_GAIN, uniform_init: bool = False):
        super().__init__()
        sizes: List[int] = [num_basis] + [hidden] * depth + [num_paths * channels]
        self.weights = nn.ParameterList([nn.Parameter(unit_uniform(a, b) if uniform_init else torch.randn(a, b))
                                         for a, b in zip(sizes[:-1], sizes[1:])])
        self.scales = [1.0 / math.sqrt(a) for a in sizes[:-1]]
        # SiLU has mean-square ~0.36 for unit input; rescale to keep unit variance layer to layer
        self.act_gain = float(act_gain)
        self.num_paths = num_paths
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.scales)
        for k, w in enumerate(self.weights):
            x = x @ (w * self.scales[k])
            if k < n - 1:
                if not torch.jit.is_scripting():  # not compiled by TorchScript, see mlip.ops.policy
                    x = silu_gain(x, self.act_gain)  # fused derivatives on CPU where the policy allows
                else:
                    x = torch.nn.functional.silu(x) * self.act_gain
        return x.view(-1, self.num_paths, self.channels)
