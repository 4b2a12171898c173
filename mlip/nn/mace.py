"""The MACE architecture (Batatia et al., 2022): higher body order in each layer through the
symmetric contraction of an atomic basis, with few message-passing layers.

Per layer t, for node i of species z_i with features h_i (irreps ``irreps_in``):

1. A-basis: A_i = Linear( (1/avg_num_neighbors) sum_j R_t(r_ij) * (Y(r_ij) (x) Linear(h_j)) ),
   the channel-wise tensor product of neighbour features with the edge harmonics, weighted per
   path and channel by a radial MLP (the shared :class:`MessagePassing` op, so the fused kernel
   applies), restricted to the harmonics' irreps (0e, 1o, 2e, 3o with parity);
2. product basis: B_i = SymmetricContraction(A_i, z_i), species-dependent, body order
   correlation + 1 (U tensors from :mod:`mlip.nn.cg_coupling`, built once);
3. update: h_i' = Linear(B_i) + SpeciesLinear(h_i, z_i) (residual; not in the first layer,
   whose input is only the species embedding);
4. readout: a linear map of the scalars of h_i' (an MLP in the last layer, as MACE; linear
   everywhere with ``nonlinear_readout: false``).

E_i = scale[z_i] * sum_t readout_t(h_i^t) + shift[z_i] (the shifts are the E0s). Hidden
features carry ``channels`` channels of the irreps l <= ``max_L`` of natural parity (0e, 1o,
2e, ...; all even without ``parity``); the last layer only computes scalars.

The symmetric contraction learns one weight per path of mace-torch's redundant path set
(normal(0, 1)/K, no normalisation in the forward pass) by default: it spans the same functions
as an independent basis (``product_paths: independent``, mlip's default before defaults
version 2) at a few percent more cost per step, and learns more per epoch
(docs/benchmarks.md).

``mace_compat: true`` reproduces mace-torch 0.3's block structure, parameter count and
initialisation where mlip's default differs (each difference is a choice, not a bug; the
defaults are cheaper):

* the first layer's A-basis passes through a per-species linear map (mace-torch's
  ``skip_tp``), species x channels^2 weights per irrep of the A-basis;
* the product basis' path set, as above;
* per-species linear maps (``skip_tp``, the residual) are normalised by
  1/sqrt(channels x species) and the species embedding by 1/sqrt(species), as e3nn's maps of
  a one-hot species vector are; the SiLU of the readout MLP is normalised as e3nn's Activation
  does, and that of the radial MLPs with e3nn's constant (0.15 % off mlip's);
* the Bessel frequencies are fixed and there is no trainable per-species energy offset.

The first two can also be set on their own, with or without ``mace_compat``:
``product_paths`` ("mace", the default, or "independent") and ``first_layer_species_map`` (true/false);
``product_weights`` ("normalised" or "mace"; default: as the path set) sets the product basis'
parametrisation apart from its path set.
"""

import math
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from mlip.data import keys as K
from mlip.nn.build import FormerDefault, radial_mlp_widths, register_architecture
from mlip.nn.edges import EdgeEmbedding, last_layer_edges
from mlip.nn.embedding import SpeciesEmbedding
from mlip.nn.gate import SILU_GAIN, e3nn_gain
from mlip.nn.heads import OutputHeads, has_heads, head_irreps
from mlip.irreps import Irrep, e3nn_irreps, sh_irreps
from mlip.nn.linear import IrrepsLinear, SpeciesLinear
from mlip.nn.radial import RadialMLP
from mlip.nn.readout import ScalarReadout, ScaleShift
from mlip.nn.symmetric_contraction import SymmetricContraction, reachable_outputs
from mlip.ops.message import MessagePassing
from mlip.ops.tensor_product import TensorProductSpec, reachable_irreps


class LinearReadout(nn.Module):
    """Even scalars [N, C] -> [N, 1], linear."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, 1))
        self.scale = 1.0 / math.sqrt(channels)
        self.irreps_in = f"{channels}x0e"
        self.irreps_out = "1x0e"

    def forward(self, scalars: torch.Tensor) -> torch.Tensor:
        return scalars @ (self.weight * self.scale)


class MACELayer(nn.Module):
    """One MACE interaction + product + update + readout: (h, z, edges) -> (h', e_t [N, 1])."""

    def __init__(self, irreps_in: Sequence[Irrep], irreps_sh: Sequence[Irrep], target_irreps: Sequence[Irrep],
                 channels: int, correlation: int, num_types: int, num_basis: int, radial_hidden: int,
                 radial_depth: int, avg_num_neighbors: float, residual: bool, readout: nn.Module,
                 backend: str = "auto", mace_compat: bool = False, product_paths: str = "independent",
                 species_a_basis: bool = False, product_weights: str = ""):
        super().__init__()
        irreps_in = list(irreps_in)
        # atomic basis: the harmonics' irreps that the tensor product reaches
        a_irreps = reachable_irreps(irreps_in, irreps_sh, list(irreps_sh))
        spec = TensorProductSpec(irreps_in, list(irreps_sh), a_irreps)
        self.linear_up = IrrepsLinear(irreps_in, irreps_in, channels, channels)
        self.message = MessagePassing(spec, channels, backend)
        self.radial_mlp = RadialMLP(num_basis, radial_hidden, radial_depth, spec.num_paths, channels,
                                    act_gain=e3nn_gain("silu") if mace_compat else SILU_GAIN)
        self.linear_a = IrrepsLinear(spec.irreps_out, a_irreps, channels, channels)
        # mace-torch's first interaction maps the A-basis per species (its skip_tp)
        self.species_a: Optional[SpeciesLinear] = (
            SpeciesLinear(a_irreps, a_irreps, channels, channels, num_types, species_fan_in=True)
            if species_a_basis else None)
        out_irreps = reachable_outputs(a_irreps, target_irreps, correlation)
        if not out_irreps or out_irreps[0] != (0, 1):
            raise ValueError(f"MACE layer: the product basis of {a_irreps} must reach 0e first, got {out_irreps}")
        self.product = SymmetricContraction(a_irreps, out_irreps, channels, correlation, num_types,
                                            paths=product_paths, weights=product_weights)
        self.linear_out = IrrepsLinear(out_irreps, out_irreps, channels, channels)
        self.residual: Optional[SpeciesLinear] = (
            SpeciesLinear(irreps_in, out_irreps, channels, channels, num_types, species_fan_in=mace_compat)
            if residual else None)
        self.readout = readout
        self.inv_avg_num_neighbors = 1.0 / float(avg_num_neighbors)
        self.a_irreps_list = a_irreps
        self.out_irreps_list = out_irreps
        self.irreps_in = e3nn_irreps(irreps_in, channels)
        self.irreps_out = e3nn_irreps(out_irreps, channels)

    def atomic_basis(self, x: torch.Tensor, atom_types: torch.Tensor, edge_sh: torch.Tensor,
                     edge_radial: torch.Tensor, edge_index: torch.Tensor,
                     edge_pair: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``edge_radial`` per edge, or per pair of opposite edges with ``edge_pair`` [E] (the
        pair of each edge): the radial MLP then runs once per pair."""
        h = self.linear_up(x)
        weights = self.radial_mlp(edge_radial)
        msg = self.message(h, edge_sh, weights, edge_index, edge_pair) * self.inv_avg_num_neighbors
        a = self.linear_a(msg)
        species_a = self.species_a
        if species_a is not None:
            a = species_a(a, atom_types)
        return a

    def forward(self, x: torch.Tensor, atom_types: torch.Tensor, edge_sh: torch.Tensor, edge_radial: torch.Tensor,
                edge_index: torch.Tensor, edge_pair: Optional[torch.Tensor] = None):
        a = self.atomic_basis(x, atom_types, edge_sh, edge_radial, edge_index, edge_pair)
        h = self.linear_out(self.product(a, atom_types))
        residual = self.residual
        if residual is not None:
            h = h + residual(x, atom_types)
        return h, self.readout(h[:, 0, :])


# not compilable: it groups atoms by species with data-dependent sizes, which one traced graph
# cannot hold
@register_architecture("mace", aliases={
    # mace-torch's names of the same hyperparameters
    "num_channels": "channels", "max_ell": "l_max", "num_radial_basis": "num_bessel",
    "num_cutoff_basis": "cutoff_p", "radial_MLP": radial_mlp_widths}, former_defaults=(
    # defaults version 2 made mace-torch's path set the default (it learns more per epoch,
    # docs/benchmarks.md); before, only mace_compat chose it
    FormerDefault(2, "product_paths", lambda config: "mace" if config.get("mace_compat") else "independent"),
))
class MACEModel(nn.Module):
    """Per-atom energies of a MACE network.

    Hyperparameters: ``num_interactions`` layers of ``channels`` channels per irrep; hidden
    irreps up to ``max_L``; edge harmonics (and the A-basis) up to ``l_max``; symmetric
    contraction of order ``correlation`` (body order correlation + 1 per layer); ``num_bessel``
    radial functions within ``r_max`` (Angstrom) with a polynomial envelope of order
    ``cutoff_p``; radial MLPs of ``radial_depth`` layers of ``radial_hidden`` units; last-layer
    readout MLP of ``readout_hidden`` units (``nonlinear_readout``; otherwise linear).

    Output heads (:mod:`mlip.nn.heads`; none by default): ``dipole`` (charges summing to the
    total charge, plus per-atom dipoles with ``atomic_dipoles``), ``polarizability``, and
    generic ``structure_output`` / ``atom_output`` irreps of natural parity (e.g. "1x1o+1x2e";
    MACE's features are 0e, 1o, 2e, ... only, so pseudo-tensors such as 0o need NequIP). The
    last layer then also outputs the irreps the heads read.
    """

    def __init__(self, num_types: int, r_max: float = 5.0, num_interactions: int = 2, channels: int = 32,
                 max_L: int = 1, l_max: int = 3, correlation: int = 3, parity: bool = True, num_bessel: int = 8,
                 cutoff_p: int = 5, radial_hidden: int = 64, radial_depth: int = 3, readout_hidden: int = 16,
                 nonlinear_readout: bool = True, avg_num_neighbors: float = 10.0,
                 atomic_energy_scales: Union[Sequence[float], float] = 1.0,
                 atomic_energy_shifts: Union[Sequence[float], float] = 0.0, message_backend: str = "auto",
                 dipole: bool = False, atomic_dipoles: bool = True, polarizability: bool = False,
                 structure_output: str = "", atom_output: str = "", mace_compat: bool = False,
                 product_paths: str = "mace", first_layer_species_map: Optional[bool] = None,
                 product_weights: Optional[str] = None):
        super().__init__()
        if num_interactions < 1:
            raise ValueError("num_interactions must be at least 1")
        if not 1 <= correlation <= 3:
            raise ValueError(f"correlation must be 1, 2 or 3, got {correlation}")
        if not 0 <= max_L <= l_max:
            raise ValueError(f"max_L must be between 0 and l_max={l_max}, got {max_L}")
        self.r_max = float(r_max)
        self.num_message_layers = num_interactions  # receptive field: num_interactions * r_max
        self.mace_compat = bool(mace_compat)
        # mace-torch's path set is the default with or without mace_compat (defaults version 2);
        # the first-layer species map, another of mace_compat's differences, can be chosen alone
        if product_paths is None:  # `product_paths: null` in a config: the default
            product_paths = "mace"
        if product_paths not in ("independent", "mace"):
            raise ValueError(f"product_paths must be 'independent' or 'mace', got {product_paths!r}")
        if first_layer_species_map is None:
            first_layer_species_map = bool(mace_compat)
        self.embedding = SpeciesEmbedding(num_types, channels, scale=num_types ** -0.5 if mace_compat else 1.0)
        self.edges = EdgeEmbedding(r_max, num_bessel, cutoff_p, l_max, trainable_bessel=not mace_compat)
        irreps_sh = sh_irreps(l_max, parity)
        hidden = sh_irreps(max_L, parity)  # natural parity: 0e, 1o, 2e, ... (all even for SO(3))
        layers: List[MACELayer] = []
        irreps: List[Irrep] = [(0, 1)]
        # the last layer computes scalars, plus what the output heads read (nothing by default)
        last_target = [(0, 1)] + head_irreps(parity, dipole, atomic_dipoles, polarizability, structure_output,
                                             atom_output)
        for t in range(num_interactions):
            last = t == num_interactions - 1
            target = last_target if last else hidden
            readout: nn.Module = (ScalarReadout(channels, readout_hidden, act_gain=e3nn_gain("silu") if mace_compat else 1.0)
                                  if last and nonlinear_readout else LinearReadout(channels))
            layer = MACELayer(irreps, irreps_sh, target, channels, correlation, num_types, num_bessel, radial_hidden,
                              radial_depth, avg_num_neighbors, residual=t > 0, readout=readout,
                              backend=message_backend, mace_compat=mace_compat, product_paths=product_paths,
                              species_a_basis=first_layer_species_map and t == 0,
                              product_weights=product_weights or "")
            irreps = layer.out_irreps_list
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.scale_shift = ScaleShift(num_types, atomic_energy_scales, atomic_energy_shifts,
                                      trainable_correction=not mace_compat)
        self.irreps_out = "1x0e"
        # created last, and only when asked for: an energy-only model draws nothing more
        self.heads: Optional[OutputHeads] = None
        if has_heads(dipole, polarizability, structure_output, atom_output):
            self.heads = OutputHeads(irreps, channels, parity, num_types, dipole, atomic_dipoles, polarizability,
                                     structure_output, atom_output, readout_hidden)
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
        energy = torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
        last = last_layer_edges(data, edge_pair)
        for i, layer in enumerate(self.layers):
            if i == len(self.layers) - 1 and last >= 0:
                edge_sh, edge_radial, edge_index = edge_sh[:last], edge_radial[:last], edge_index[:, :last]
            x, e = layer(x, atom_types, edge_sh, edge_radial, edge_index, edge_pair)
            energy = energy + e
        data[K.ATOMIC_ENERGY] = self.scale_shift(energy, atom_types)
        heads = self.heads
        if heads is not None:
            data = heads(x, data)
        return data
