"""The species embedding shared by every architecture: one learned vector of scalars per type."""
import torch
from torch import nn


class SpeciesEmbedding(nn.Module):
    """Type index -> C even scalars (a learned vector per species), shaped [N, 1, C]."""

    def __init__(self, num_types: int, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_types, channels))
        self.irreps_out = f"{channels}x0e"

    def forward(self, atom_types: torch.Tensor) -> torch.Tensor:
        return self.weight[atom_types].unsqueeze(1)
