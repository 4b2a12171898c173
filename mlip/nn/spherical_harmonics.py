"""Real spherical harmonics up to l = 3 as one matmul over monomials of the unit vector.

Y_l is a homogeneous polynomial of degree l on the unit sphere, so it is fixed by its
coefficients on the monomials x^a y^b z^c with a+b+c = l. The coefficients are fitted once, at
build time, to e3nn's ``spherical_harmonics`` (component normalisation, so each component has
unit mean square over the sphere); e3nn's Wigner D matrices and Clebsch-Gordan coefficients
therefore apply unchanged. At run time this is a single small matmul that TorchScript
can export and autograd differentiates twice.
"""

from functools import lru_cache
from typing import List, Tuple

import torch
from torch import nn

L_MAX_SUPPORTED = 3


def _monomial_powers(l_max: int) -> List[Tuple[int, int, int]]:
    return [(a, b, l - a - b) for l in range(l_max + 1) for a in range(l, -1, -1) for b in range(l - a, -1, -1)]


@lru_cache(maxsize=None)
def _coefficients(l_max: int) -> torch.Tensor:
    """[num_monomials, (l_max+1)^2] float64, least-squares fit per degree (exact: the fit is unique)."""
    from e3nn import o3

    gen = torch.Generator().manual_seed(0)
    pts = torch.randn(400, 3, generator=gen, dtype=torch.float64)
    pts = pts / pts.norm(dim=1, keepdim=True)
    powers = _monomial_powers(l_max)
    coef = torch.zeros(len(powers), (l_max + 1) ** 2, dtype=torch.float64)
    for l in range(l_max + 1):
        rows = [i for i, p in enumerate(powers) if sum(p) == l]
        mono = torch.stack([pts[:, 0] ** a * pts[:, 1] ** b * pts[:, 2] ** c for a, b, c in (powers[i] for i in rows)], 1)
        target = o3.spherical_harmonics(l, pts, normalize=False, normalization="component")
        sol = torch.linalg.lstsq(mono, target).solution
        coef[rows, l * l:(l + 1) ** 2] = torch.where(sol.abs() < 1e-12, torch.zeros_like(sol), sol)
    return coef


class SphericalHarmonics(nn.Module):
    """Edge vectors [E, 3] -> Y [E, (l_max+1)^2] of the normalised direction (any length > 0)."""

    def __init__(self, l_max: int):
        super().__init__()
        if not 0 <= l_max <= L_MAX_SUPPORTED:
            raise ValueError(f"l_max must be between 0 and {L_MAX_SUPPORTED}, got {l_max}")
        self.l_max = l_max
        self.register_buffer("coefficients", _coefficients(l_max).clone(), persistent=False)
        self.irreps_in = "1x1o"
        self.irreps_out = "+".join(f"1x{l}{'e' if l % 2 == 0 else 'o'}" for l in range(l_max + 1))

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        u = vectors / torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
        x, y, z = u[:, 0], u[:, 1], u[:, 2]
        ones = torch.ones_like(x)
        # monomials of each degree, built from the lower degree (no pow, cheap double backward)
        cols: List[torch.Tensor] = [ones]
        if self.l_max >= 1:
            cols += [x, y, z]
        if self.l_max >= 2:
            cols += [x * x, x * y, x * z, y * y, y * z, z * z]
        if self.l_max >= 3:
            cols += [x * x * x, x * x * y, x * x * z, x * y * y, x * y * z, x * z * z,
                     y * y * y, y * y * z, y * z * z, z * z * z]
        mono = torch.stack(cols, dim=1)
        return mono @ self.coefficients.to(mono.dtype)
