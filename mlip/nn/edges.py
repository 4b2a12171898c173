"""Edge embedding shared by every architecture: direction -> harmonics, length -> radial basis."""
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from mlip.data import keys as K
from mlip.nn.radial import RadialEmbedding
from mlip.nn.spherical_harmonics import SphericalHarmonics


class EdgeEmbedding(nn.Module):
    """Edge vectors [E, 3] (Angstrom) -> (Y [E, (l_max+1)^2] of the unit direction, radial
    features [E, num_bessel] of the length: Bessel basis times the cutoff envelope, 0 at r_max).

    With ``pair_edge`` [P] (one edge of each pair of opposite edges, ``keys.PAIR_EDGE``) the
    radial features are per pair, [P, num_bessel]: opposite edges have the same length, so
    everything that depends on the length alone runs once per pair."""

    def __init__(self, r_max: float, num_bessel: int, cutoff_p: int, l_max: int, trainable_bessel: bool = True,
                 bessel_prefactor: Optional[float] = None):
        super().__init__()
        self.radial = RadialEmbedding(r_max, num_bessel, cutoff_p, trainable_bessel, bessel_prefactor)
        self.sh = SphericalHarmonics(l_max)
        self.irreps_in = "1x1o"
        self.irreps_out = self.sh.irreps_out

    def forward(self, vectors: torch.Tensor, pair_edge: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        lengths_of = vectors if pair_edge is None else vectors.index_select(0, pair_edge)
        return self.sh(vectors), self.radial(torch.linalg.vector_norm(lengths_of, dim=-1))


def last_layer_edges(data: Dict[str, torch.Tensor], edge_pair: Optional[torch.Tensor]) -> int:
    """How many leading edges the last message-passing layer uses (``keys.LAST_LAYER_EDGES``,
    set for one MPI rank's graph by :mod:`mlip.deploy.domain`), or -1: all of them. Ignored
    with the opposite-edge pairing, which spans all edges (the rank's graph has none)."""
    if K.LAST_LAYER_EDGES in data and edge_pair is None:
        return int(data[K.LAST_LAYER_EDGES].view(-1)[0])
    return -1
