"""Equivariant linear maps on the [N, D, C] layout: channels mix, irrep components do not."""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from mlip.irreps import Irrep, e3nn_irreps, irreps_slices


class IrrepsLinear(nn.Module):
    """For every output irrep: a [C_in * k, C_out] matrix over the k input copies of the same irrep.

    Inputs may hold the same irrep several times (a tensor product's path outputs); they are
    concatenated along channels and mixed. Output irreps that no input carries are an error.
    """

    def __init__(self, irreps_in: Sequence[Irrep], irreps_out: Sequence[Irrep], channels_in: int, channels_out: int,
                 allow_missing: bool = False):
        super().__init__()
        self.irreps_in = e3nn_irreps(irreps_in, channels_in)
        self.irreps_out = e3nn_irreps(irreps_out, channels_out)
        in_sl = irreps_slices(irreps_in)
        groups: Dict[Irrep, List[Tuple[int, int]]] = {}
        for ir, sl in zip(irreps_in, in_sl):
            groups.setdefault(ir, []).append(sl)
        self.channels_out = channels_out
        # per output irrep with an input: its input components in one index buffer (start, stop),
        # 2l+1 and the 1/sqrt(fan_in) scale; outputs without an input are zero (allow_missing)
        flat: List[int] = []
        self.bounds: List[Tuple[int, int, int, float]] = []
        self.present: List[bool] = []
        weights = []
        for ir in irreps_out:
            if ir not in groups and not allow_missing:
                raise ValueError(f"IrrepsLinear: output irrep {ir} has no input among {self.irreps_in}")
            self.present.append(ir in groups)
            if ir not in groups:
                continue
            copies = groups[ir]
            comps = [c for a, b in copies for c in range(a, b)]  # copies stacked: [k*(2l+1)]
            fan_in = channels_in * len(copies)
            self.bounds.append((len(flat), len(flat) + len(comps), 2 * ir[0] + 1, 1.0 / math.sqrt(fan_in)))
            flat.extend(comps)
            weights.append(nn.Parameter(torch.randn(fan_in, channels_out)))
        self.weights = nn.ParameterList(weights)
        self.out_dims = [2 * l + 1 for l, _ in irreps_out]
        self.all_present = all(self.present)
        self.register_buffer("index", torch.tensor(flat, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_weights(x, [w for w in self.weights])

    def apply_weights(self, x: torch.Tensor, weights: List[torch.Tensor]) -> torch.Tensor:
        """The map with the given weights (shaped like ``self.weights``) instead of its own."""
        n, c = x.shape[0], x.shape[2]
        outs: List[torch.Tensor] = []
        for k, w in enumerate(weights):
            start, stop, m, scale = self.bounds[k]
            copies = (stop - start) // m
            # [N, k*m, C] -> [N, m, k*C]  (copy-major along channels, matching the weight rows)
            xi = x.index_select(1, self.index[start:stop])
            if copies > 1:
                xi = xi.view(n, copies, m, c).transpose(1, 2).reshape(n, m, copies * c)
            outs.append(xi @ (w * scale))
        if self.all_present:
            return torch.cat(outs, dim=1)
        full: List[torch.Tensor] = []
        j = 0
        for k, present in enumerate(self.present):
            if present:
                full.append(outs[j])
                j += 1
            else:
                full.append(x.new_zeros(n, self.out_dims[k], self.channels_out))
        return torch.cat(full, dim=1)


def pick_species(y: torch.Tensor, atom_types: torch.Tensor, num_types: int, channels: int) -> torch.Tensor:
    """[N, D, S*C] (the map of every species, species-major) -> [N, D, C] of each node's species."""
    n, d = y.shape[0], y.shape[1]
    y = y.view(n, d, num_types, channels)
    idx = atom_types.view(n, 1, 1, 1).expand(n, d, 1, channels)
    return y.gather(2, idx).squeeze(2)


class SpeciesLinear(nn.Module):
    """Self-connection: an IrrepsLinear whose weights depend on the species of the node.

    Output irreps absent from the input get zero (there is no equivariant path to them).

    Computes the map for every species at once and picks each node's (cheap while the number
    of species is small, and free of per-node weight gathers).

    ``species_fan_in``: normalise by 1/sqrt(C_in * num_types) instead of 1/sqrt(C_in), as e3nn's
    fully connected tensor product of the features with a one-hot species vector does (the
    form mace-torch uses).
    """

    def __init__(self, irreps_in: Sequence[Irrep], irreps_out: Sequence[Irrep], channels_in: int,
                 channels_out: int, num_types: int, species_fan_in: bool = False):
        super().__init__()
        self.num_types = num_types
        self.out_scale = 1.0 / math.sqrt(num_types) if species_fan_in else 1.0
        self.channels_out = channels_out
        self.linear = IrrepsLinear(irreps_in, irreps_out, channels_in, channels_out * num_types, allow_missing=True)
        self.irreps_in = self.linear.irreps_in
        self.irreps_out = e3nn_irreps(irreps_out, channels_out)

    def forward(self, x: torch.Tensor, atom_types: torch.Tensor, embedding: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """``embedding`` is accepted (and unused) for the same call as :class:`EmbeddingSelfConnection`."""
        y = pick_species(self.linear(x), atom_types, self.num_types, self.channels_out)
        if self.out_scale != 1.0:
            y = y * self.out_scale
        return y


class EmbeddingSelfConnection(nn.Module):
    """NequIP's self-connection: bilinear in the node features and the species embedding,

        out[n, :, o] = sum_{c, d} x[n, :, c] e[type(n), d] W[d, c, o] / sqrt(C_in * D)

    per output irrep (a fully connected tensor product of the features with the D scalars of
    the embedding). With a species embedding this is the same function class as
    :class:`SpeciesLinear`, parametrised through the embedding (C_in x D x C_out weights per
    irrep, as NequIP has them). It is evaluated as a species-indexed linear map whose weights,
    sum_d e[s, d] W[:, d, :], are formed once per call for the S species: the cost does not
    grow with D.
    """

    def __init__(self, irreps_in: Sequence[Irrep], irreps_out: Sequence[Irrep], channels_in: int,
                 channels_out: int, num_types: int, embed_dim: int):
        super().__init__()
        self.num_types = num_types
        self.channels_out = channels_out
        self.embed_dim = embed_dim
        # the species-indexed map whose weights are formed from the embedding each call
        self.linear = IrrepsLinear(irreps_in, irreps_out, channels_in, channels_out * num_types, allow_missing=True)
        # stored [D, fan_in, C_out]: one [S, D] x [D, fan_in * C_out] matmul forms every species' map
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(embed_dim, w.shape[0], channels_out))
                                         for w in self.linear.weights])
        del self.linear.weights  # its own weights are never used
        self.linear.weights = nn.ParameterList()
        self.irreps_in = self.linear.irreps_in
        self.irreps_out = e3nn_irreps(irreps_out, channels_out)

    def forward(self, x: torch.Tensor, atom_types: torch.Tensor, embedding: Optional[torch.Tensor] = None
                ) -> torch.Tensor:
        """x [N, D_in, C_in], atom_types [N], embedding [S, D] (the species embedding table)."""
        if embedding is None:
            raise ValueError("EmbeddingSelfConnection needs the species embedding table")
        e = embedding * (1.0 / math.sqrt(self.embed_dim))
        per_species: List[torch.Tensor] = []
        for w in self.weights:
            fan_in = w.shape[1]
            # [S, D] x [D, fan_in * C] -> [fan_in, S * C], species-major like SpeciesLinear's
            ws = (e @ w.reshape(self.embed_dim, fan_in * self.channels_out)).view(self.num_types, fan_in, -1)
            per_species.append(ws.transpose(0, 1).reshape(fan_in, self.num_types * self.channels_out))
        return pick_species(self.linear.apply_weights(x, per_species), atom_types, self.num_types, self.channels_out)
