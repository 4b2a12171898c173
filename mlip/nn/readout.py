"""Per-atom energy from invariant features, and per-species scale and shift (E0)."""

import math
from typing import Sequence, Union

import torch
from torch import nn

from mlip.nn.radial import unit_uniform


class ScalarReadout(nn.Module):
    """Even scalars [N, C] -> per-atom energy [N, 1] through a small MLP (C -> hidden -> 1).

    ``act_gain`` multiplies the SiLU (1: plain; e3nn's normalised SiLU, which mace-torch's
    readout uses, is about 1.68; NequIP's MLPs have sqrt(2)). ``uniform_init``: weights uniform
    on [-sqrt(3), sqrt(3)] instead of normal (NequIP's)."""

    def __init__(self, channels: int, hidden: int = 16, act_gain: float = 1.0, uniform_init: bool = False):
        super().__init__()
        draw = unit_uniform if uniform_init else torch.randn
        self.w1 = nn.Parameter(draw(channels, hidden))
        self.w2 = nn.Parameter(draw(hidden, 1))
        self.s1, self.s2 = 1.0 / math.sqrt(channels), 1.0 / math.sqrt(hidden)
        if act_gain != 1.0:  # folded into the second layer's scale: (silu(x) * g) @ (w2 * s2)
            self.s2 = self.s2 * float(act_gain)
        self.irreps_in = f"{channels}x0e"
        self.irreps_out = "1x0e"

    def forward(self, scalars: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(scalars @ (self.w1 * self.s1)) @ (self.w2 * self.s2)


class ScaleShift(nn.Module):
    """E_i = scale[type_i] * e_i + shift[type_i] + correction[type_i].

    ``shifts`` are the reference energies E0 (eV) from the data statistics, fixed; ``scales`` the
    typical force magnitude (eV/A), so the network works in unit-variance terms. ``correction``
    is a trainable per-species offset (eV, starts at 0): the untrained readout has a non-zero
    mean, and when forces dominate the loss the energy gradient reaching the network is too weak
    to remove that constant quickly. Adam moves this parameter by about ``lr`` per step whatever
    the loss weights, so the offset goes in a few hundred steps. ``trainable_correction=False``
    keeps it at zero, as a buffer (mace-torch has no such parameter).
    """

    def __init__(self, num_types: int, scales: Union[Sequence[float], float] = 1.0, shifts: Union[Sequence[float], float] = 0.0,
                 trainable_correction: bool = True):
        super().__init__()
        sc = torch.as_tensor(scales, dtype=torch.float64).expand(num_types).clone()
        sh = torch.as_tensor(shifts, dtype=torch.float64).expand(num_types).clone()
        # float64 buffers: E0 of heavy atoms are ~1e3-1e4 eV, beyond float32's resolution in meV
        # (build the model with mlip.nn.build_model(dtype=...) rather than .to(dtype), which would cast them)
        self.register_buffer("scales", sc)
        self.register_buffer("shifts", sh)
        if trainable_correction:
            self.correction = nn.Parameter(torch.zeros(num_types, dtype=torch.float64))
        else:  # same state-dict key either way
            self.register_buffer("correction", torch.zeros(num_types, dtype=torch.float64))

    def forward(self, atomic_energy: torch.Tensor, atom_types: torch.Tensor) -> torch.Tensor:
        e = atomic_energy.to(torch.float64)
        if self.scales.shape[0] == 1:
            # one species: broadcast (the gradient of an index into a one-element parameter is a
            # scatter that inductor's vectorised CPU code generation cannot compile, torch 2.13)
            return self.scales * e + (self.shifts + self.correction)
        return self.scales[atom_types].unsqueeze(-1) * e + (self.shifts + self.correction)[atom_types].unsqueeze(-1)
