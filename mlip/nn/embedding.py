"""The species embedding shared by every architecture: one learned vector of scalars per type."""
import torch
from torch import nn


class SpeciesEmbedding(nn.Module):
    """Type index -> C even scalars (a learned vector per species), shaped [N, 1, C].

    ``scale`` multiplies the weights in the forward pass (1: unit-variance features; mace-torch's
    linear map of the one-hot species has 1/sqrt(num_types))."""

    def __init__(self, num_types: int, channels: int, scale: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_types, channels))
        self.scale = float(scale)
        self.irreps_out = f"{channels}x0e"

    def forward(self, atom_types: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            return (self.weight[atom_types] * self.scale).unsqueeze(1)
        return self.weight[atom_types].unsqueeze(1)
