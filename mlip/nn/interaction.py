"""NequIP's interaction block: convolve neighbours, add a species-dependent self-connection, gate."""

import math
from typing import Optional, Sequence

import torch
from torch import nn

from mlip.nn.gate import SILU_GAIN, Gate, gate_input_irreps
from mlip.irreps import Irrep, e3nn_irreps
from mlip.nn.linear import EmbeddingSelfConnection, IrrepsLinear, SpeciesLinear
from mlip.nn.radial import RadialMLP
from mlip.ops.message import MessagePassing
from mlip.ops.tensor_product import TensorProductSpec, reachable_irreps


class NequIPInteraction(nn.Module):
    """x [N, D_in, C] -> x' [N, D_out, C].

    1. linear on the input features;
    2. message step: sum over neighbours j of W_ij(r) * TP(h_j, Y(r_ij)), divided by the square
       root of the average number of neighbours (NequIP's normalisation: a sum of n roughly
       independent terms grows like sqrt(n); dividing by n instead starves the messages next to
       the self-connection and slowed training measurably on the Si example);
    3. linear from the tensor product's path outputs to (features + gates);
    4. plus a species-dependent linear self-connection of the input (per species, or NequIP's
       bilinear in features and species embedding);
    5. gated nonlinearity.

    ``irreps_out`` is ``target_irreps`` restricted to what the tensor product can reach.

    ``nequip_compat``: NequIP 0.19's block (see :class:`mlip.nn.nequip.NequIPModel`): no
    self-connection where ``embed_dim`` is 0 (NequIP's first block), message and
    self-connection summed without the 1/sqrt(2), the radial MLP initialised uniform with
    NequIP's sqrt(2) gain after its SiLU, and e3nn's gate with SiLU gates.
    """

    def __init__(self, irreps_in: Sequence[Irrep], irreps_sh: Sequence[Irrep], target_irreps: Sequence[Irrep],
                 channels: int, num_types: int, num_basis: int, radial_hidden: int, radial_depth: int,
                 avg_num_neighbors: float, backend: str = "auto", embed_dim: int = 0, nequip_compat: bool = False):
        super().__init__()
        irreps_in = list(irreps_in)
        out_irreps = reachable_irreps(irreps_in, irreps_sh, target_irreps)
        self.out_irreps_list = out_irreps
        spec = TensorProductSpec(irreps_in, list(irreps_sh), out_irreps)
        self.linear_up = IrrepsLinear(irreps_in, irreps_in, channels, channels)
        self.message = MessagePassing(spec, channels, backend)
        self.radial_mlp = RadialMLP(num_basis, radial_hidden, radial_depth, spec.num_paths, channels,
                                    act_gain=math.sqrt(2.0) if nequip_compat else SILU_GAIN,
                                    uniform_init=nequip_compat)
        pre_gate = gate_input_irreps(out_irreps)
        self.linear_down = IrrepsLinear(spec.irreps_out, pre_gate, channels, channels)
        # embed_dim > 0: NequIP's bilinear in features and species embedding, else per species
        # (none at all in NequIP's first block, whose input is the species embedding itself)
        self.self_connection = (EmbeddingSelfConnection(irreps_in, pre_gate, channels, channels, num_types, embed_dim)
                                if embed_dim > 0 else None if nequip_compat
                                else SpeciesLinear(irreps_in, pre_gate, channels, channels, num_types))
        # NequIP sums message and self-connection as they are
        self.sum_scale = 1.0 if nequip_compat else 0.7071067811865476
        self.gate = Gate(out_irreps, channels, e3nn_nequip=nequip_compat)
        self.inv_sqrt_avg_num_neighbors = float(avg_num_neighbors) ** -0.5
        self.irreps_in = e3nn_irreps(irreps_in, channels)
        self.irreps_out = e3nn_irreps(out_irreps, channels)

    def forward(self, x: torch.Tensor, atom_types: torch.Tensor, edge_sh: torch.Tensor, edge_radial: torch.Tensor,
                edge_index: torch.Tensor, edge_pair: Optional[torch.Tensor] = None,
                type_embedding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``edge_radial`` is per edge, or per pair of opposite edges when ``edge_pair`` [E]
        (the pair of each edge) is given: the radial MLP then runs once per pair.
        ``type_embedding`` [S, D]: the species embedding table (for the embedding self-connection)."""
        h = self.linear_up(x)
        weights = self.radial_mlp(edge_radial)  # per edge, or per pair (edge e reads row edge_pair[e])
        msg = self.message(h, edge_sh, weights, edge_index, edge_pair) * self.inv_sqrt_avg_num_neighbors
        y = self.linear_down(msg)
        self_connection = self.self_connection
        if self_connection is not None:
            y = y + self_connection(x, atom_types, type_embedding)
        if self.sum_scale != 1.0:
            # self-connection and message are summed with 1/sqrt(2) to keep unit variance
            y = y * self.sum_scale
        return self.gate(y)
