"""The NequIP architecture: species embedding, interaction blocks, scalar readout, scale/shift.

It reads edge vectors from the graph dict and writes per-atom energies; forces and stress are
taken by :class:`mlip.nn.potential.Potential`, which every architecture shares.
"""

import math
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from mlip.data import keys as K
from mlip.nn.build import register_architecture
from mlip.nn.edges import EdgeEmbedding, last_layer_edges
from mlip.nn.embedding import SpeciesEmbedding
from mlip.nn.heads import OutputHeads, has_heads, head_irreps
from mlip.nn.interaction import NequIPInteraction
from mlip.irreps import hidden_irreps, sh_irreps
from mlip.nn.readout import ScalarReadout, ScaleShift


# NequIP (>= 0.7) names of the same hyperparameters
NEQUIP_ALIASES = {"num_features": "channels", "num_bessels": "num_bessel", "polynomial_cutoff_p": "cutoff_p",
                  "radial_mlp_width": "radial_hidden", "radial_mlp_depth": "radial_depth",
                  "per_type_energy_shifts": "atomic_energy_shifts", "per_type_energy_scales": "atomic_energy_scales"}


@register_architecture("nequip", supports_compile=True, aliases=NEQUIP_ALIASES)
class NequIPModel(nn.Module):
    """Per-atom energies of a NequIP-style equivariant message-passing network.

    Hyperparameters: ``num_layers`` interaction blocks of ``channels`` channels per irrep, hidden
    irreps up to ``l_max`` (both parities if ``parity``, else SO(3) only), edge harmonics up to
    ``l_max``, ``num_bessel`` radial functions within ``r_max`` (Angstrom), and a radial MLP of
    ``radial_depth`` layers of ``radial_hidden`` units. The last block outputs scalars only,
    since the readout uses nothing else. ``self_connection``: "species" (a linear map per
    species, C x C weights per irrep and species) or "embedding" (NequIP's: bilinear in the
    features and the C-dimensional species embedding, C x C x C weights per irrep, in every block
    after the first; the first keeps the per-species map).

    Output heads (:mod:`mlip.nn.heads`; none by default): ``dipole`` (charges summing to the
    total charge, plus per-atom dipoles with ``atomic_dipoles``), ``polarizability``, and
    generic ``structure_output`` / ``atom_output`` irreps (e.g. "1x0o"). The last block then
    also outputs the irreps the heads read.

    ``nequip_compat: true`` computes the function of NequIP 0.19's ``NequIPGNNModel`` at the
    same settings (``readout_hidden``: its ``readout_mlp_hidden_layers_depth: 1`` of that
    width), with its blocks, parameter count, normalisations and initialisation, where mlip's
    default differs (each difference is a choice, not a bug):

    * no self-connection in the first block, NequIP's bilinear one (features x species
      embedding) in the others, whatever ``self_connection`` says;
    * message and self-connection are summed as they are, not scaled by 1/sqrt(2);
    * the gates of non-scalar features go through SiLU (NequIP's choice) instead of a sigmoid,
      and SiLU and tanh are normalised with e3nn's sampled constants (0.15 % and 0.08 % off
      mlip's rounded ones);
    * radial and readout MLPs are initialised uniform on [-sqrt(3), sqrt(3)] and scale the
      layer after each SiLU by sqrt(2)/sqrt(fan_in) (NequIP's "relu" gain) instead of
      normalising the SiLU;
    * the Bessel basis is 2/r_max sin(n pi r/r_max)/r (NequIP's sinc basis times its factor
      2 pi/r_max^2) instead of sqrt(2/r_max) sin(n pi r/r_max)/r, with fixed frequencies;
    * no trainable per-species energy offset (NequIP's shifts and scales are fixed);
    * ``parity: false`` keeps natural parity (0e, 1o, 2e, ... features and harmonics, as
      NequIP's parity-free model has them) instead of labelling everything even: NequIP's
      smaller tensor-product path set, and a model that is mirror-invariant (O(3)), where
      mlip's parity-free model can tell a chiral structure from its mirror image.

    The species embedding, linear maps, tensor product, 1/sqrt(avg_num_neighbors) (NequIP
    applies it before the sum, an equivalent order) and scale/shift are the same as mlip's.
    """

    def __init__(self, num_types: int, r_max: float = 5.0, num_layers: int = 3, channels: int = 32, l_max: int = 1,
                 parity: bool = True, num_bessel: int = 8, cutoff_p: int = 6, radial_hidden: int = 64,
                 radial_depth: int = 2, readout_hidden: int = 16, avg_num_neighbors: float = 10.0,
                 atomic_energy_scales: Union[Sequence[float], float] = 1.0,
                 atomic_energy_shifts: Union[Sequence[float], float] = 0.0, message_backend: str = "auto",
                 self_connection: str = "species", dipole: bool = False, atomic_dipoles: bool = True,
                 polarizability: bool = False, structure_output: str = "", atom_output: str = "",
                 nequip_compat: bool = False):
        super().__init__()
        if num_layers < 1:
            raise ValueError("num_layers must be at least 1")
        if self_connection not in ("species", "embedding"):
            raise ValueError(f"self_connection must be 'species' or 'embedding', got '{self_connection}'")
        self.r_max = float(r_max)
        self.num_message_layers = num_layers  # receptive field: num_layers * r_max
        self.nequip_compat = bool(nequip_compat)
        self.embedding = SpeciesEmbedding(num_types, channels)
        self.edges = EdgeEmbedding(r_max, num_bessel, cutoff_p, l_max, trainable_bessel=not nequip_compat,
                                   bessel_prefactor=2.0 / float(r_max) if nequip_compat else None)
        # compat without parity: NequIP's natural-parity labels (0e, 1o, 2e, ...), which are O(3)
        # labels too, so the output heads read them as such
        body_parity = parity or self.nequip_compat
        irreps_sh = sh_irreps(l_max, body_parity)
        hidden = hidden_irreps(l_max, parity) if parity or not nequip_compat else sh_irreps(l_max, True)
        layers: List[NequIPInteraction] = []
        irreps = [(0, 1)]
        # the last block outputs scalars, plus what the output heads read (nothing by default)
        last = [(0, 1)] + head_irreps(body_parity, dipole, atomic_dipoles, polarizability, structure_output,
                                      atom_output)
        for i in range(num_layers):
            target = hidden if i < num_layers - 1 else last
            # "embedding": the bilinear in every block after the first, as NequIP has it (its first
            # block has none: the input is the embedding itself); ours keeps the per-species map there
            embed_dim = channels if ((self_connection == "embedding" or nequip_compat) and i > 0) else 0
            block = NequIPInteraction(irreps, irreps_sh, target, channels, num_types, num_bessel, radial_hidden,
                                      radial_depth, avg_num_neighbors, message_backend, embed_dim,
                                      nequip_compat=self.nequip_compat)
            irreps = block.out_irreps_list
            layers.append(block)
        self.layers = nn.ModuleList(layers)
        self.readout = ScalarReadout(channels, readout_hidden, act_gain=math.sqrt(2.0) if nequip_compat else 1.0,
                                     uniform_init=nequip_compat)
        self.scale_shift = ScaleShift(num_types, atomic_energy_scales, atomic_energy_shifts,
                                      trainable_correction=not nequip_compat)
        self.irreps_out = "1x0e"
        # created last, and only when asked for: an energy-only model draws nothing more
        self.heads: Optional[OutputHeads] = None
        if has_heads(dipole, polarizability, structure_output, atom_output):
            self.heads = OutputHeads(irreps, channels, body_parity, num_types, dipole, atomic_dipoles,
                                     polarizability, structure_output, atom_output, readout_hidden)
        self.output_fields: List[str] = self.heads.output_fields if self.heads is not None else []

    def forward(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        atom_types = data[K.ATOM_TYPES]
        edge_index = data[K.EDGE_INDEX]
        edge_pair: Optional[torch.Tensor] = None
        pair_edge: Optional[torch.Tensor] = None
        if K.EDGE_PAIR in data and K.PAIR_EDGE in data:
            # opposite edges have the same length: radial basis and MLPs once per pair
            edge_pair, pair_edge = data[K.EDGE_PAIR], data[K.PAIR_EDGE]
        edge_sh, edge_radial = self.edges(data[K.EDGE_VECTORS], pair_edge)
        x = self.embedding(atom_types)
        last = last_layer_edges(data, edge_pair)
        for i, layer in enumerate(self.layers):
            if i == len(self.layers) - 1 and last >= 0:
                edge_sh, edge_radial, edge_index = edge_sh[:last], edge_radial[:last], edge_index[:, :last]
            x = layer(x, atom_types, edge_sh, edge_radial, edge_index, edge_pair, self.embedding.weight)
        data[K.ATOMIC_ENERGY] = self.scale_shift(self.readout(x[:, 0, :]), atom_types)
        heads = self.heads
        if heads is not None:
            data = heads(x, data)
        return data
