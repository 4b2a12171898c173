"""MACE's symmetric contraction: the equivariant product basis of body order correlation + 1.

For a node of species z with atomic basis A [D, C] (C channels of the irreps ``irreps_in``), and
every output irrep (L, P):

    B_{M, c} = sum_{nu=1}^{correlation} sum_k W^{nu}[z, k, c]
                 sum_{i_1..i_nu} U^{nu}[M, i_1, ..., i_nu, k] A_{i_1, c} ... A_{i_nu, c}

U^{nu} are the generalised Clebsch-Gordan tensors of :mod:`mlip.nn.cg_coupling` (computed once
at build time, symmetric in i_1..i_nu, a complete orthogonal basis of the symmetric equivariant
nu-linear maps); W^{nu} are learned per species, path and channel. Channels never mix (that is
the linear layer's job after this one): each channel's A is raised to the power nu with itself.

Evaluation is Horner-like, as in MACE: with C^{nu} = U^{nu} W^{nu}[z] (a [M, D^nu, C] tensor per
species), contract the highest order with A over its last input axis, add the next order's
C, contract again, and so on down to nu = 1; each contraction is one batched matmul. Nodes are
processed species by species, so the per-species tensors C^{nu} are never gathered per node.
"""

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from mlip.nn.cg_coupling import coupling_basis
from mlip.nn.irreps import Irrep, e3nn_irreps, irreps_dim


class _Contraction(nn.Module):
    """One output irrep (L, P): all correlation orders, all species."""

    def __init__(self, irreps_in: Sequence[Irrep], ir_out: Irrep, channels: int, correlation: int, num_types: int):
        super().__init__()
        d = irreps_dim(irreps_in)
        m = 2 * ir_out[0] + 1
        self.d, self.m, self.num_types, self.correlation = d, m, num_types, correlation
        flats: List[torch.Tensor] = []
        # per order nu (index nu-1): (offset into the flat U buffer, rows = m * d^nu, number of paths K)
        self.meta: List[Tuple[int, int, int]] = []
        weights = []
        offset = 0
        for nu in range(1, correlation + 1):
            u = coupling_basis(irreps_in, nu, ir_out)  # [m, d^nu..., K] float64
            k = u.shape[-1]
            rows = m * d ** nu
            flats.append(u.reshape(-1))
            self.meta.append((offset, rows, k))
            offset += rows * k
            # unit-variance init per path, 1/sqrt(K) keeps the sum over paths at unit scale
            weights.append(nn.Parameter(torch.randn(num_types, k, channels) / math.sqrt(max(k, 1))))
        self.num_paths = [k for _, _, k in self.meta]
        # stored highest order first: the Horner loop in ``contract`` enumerates them in that order
        self.weights = nn.ParameterList(weights[::-1])
        self.meta_desc = self.meta[::-1]
        # rebuilt deterministically at construction, so not part of the state dict
        self.register_buffer("u", torch.cat(flats).to(torch.get_default_dtype()), persistent=False)

    def contract(self, a: torch.Tensor, species: int) -> torch.Tensor:
        """a [n, D, C] of nodes of one species -> [n, M, C]."""
        n, c = a.shape[0], a.shape[2]
        u_all = self.u.to(a.dtype)
        out: Optional[torch.Tensor] = None
        for j, weight in enumerate(self.weights):  # nu = correlation - j, highest first
            offset, rows, k = self.meta_desc[j]
            if k > 0:
                w = weight[species].to(a.dtype)  # [K, C]
                cu = u_all[offset:offset + rows * k].view(rows, k) @ w  # [m * d^nu, C]
                out = cu.unsqueeze(0) if out is None else out + cu.unsqueeze(0)
            if out is not None:
                # contract the last input axis with A: [n?, R, D, C] x [n, D, C] -> [n, R, C]
                r = out.shape[1] // self.d
                if out.shape[0] == 1 and n != 1:
                    # first contraction: the same tensor for every node, one matmul per channel
                    out = torch.einsum("rdc,ndc->nrc", out.view(r, self.d, c), a)
                else:
                    out = torch.einsum("nrdc,ndc->nrc", out.view(out.shape[0], r, self.d, c), a)
        if out is None:
            return a.new_zeros(n, self.m, c)
        return out

    def forward(self, a: torch.Tensor, atom_types: torch.Tensor) -> torch.Tensor:
        n, c = a.shape[0], a.shape[2]
        if self.num_types == 1:
            return self.contract(a, 0)
        out = a.new_zeros(n, self.m, c)
        for s in range(self.num_types):
            idx = torch.nonzero(atom_types == s).view(-1)
            if idx.numel() > 0:
                out = out.index_copy(0, idx, self.contract(a.index_select(0, idx), s))
        return out

    @torch.jit.unused
    def multilinear(self, xs: List[torch.Tensor], atom_types: torch.Tensor, nu: int) -> torch.Tensor:
        """The order-nu term as a multilinear map of nu *different* inputs x_1..x_nu [N, D, C]:
        sum_k W[z, k, c] sum_i U[M, i_1..i_nu, k] x_1[i_1, c] ... x_nu[i_nu, c]. With all
        inputs equal it is the nu-th term of forward; symmetry means any order of xs gives the same."""
        assert len(xs) == nu
        offset, rows, k = self.meta[nu - 1]
        n, c = xs[0].shape[0], xs[0].shape[2]
        if k == 0:
            return xs[0].new_zeros(n, self.m, c)
        u = self.u[offset:offset + rows * k].view((self.m,) + (self.d,) * nu + (k,)).to(xs[0].dtype)
        w = self.weights[self.correlation - nu][atom_types].to(xs[0].dtype)  # [N, K, C]
        letters = "abcdefgh"[:nu]
        spec = "M" + letters + "k," + ",".join(f"n{l}C" for l in letters) + ",nkC->nMC"
        return torch.einsum(spec, u, *xs, w)


class SymmetricContraction(nn.Module):
    """A [N, D_in, C] (irreps ``irreps_in``) -> B [N, D_out, C] (irreps ``irreps_out``), species-dependent.

    ``irreps_out`` must be reachable: every output irrep needs at least one path at some order
    (see :func:`reachable_outputs`)."""

    def __init__(self, irreps_in: Sequence[Irrep], irreps_out: Sequence[Irrep], channels: int, correlation: int,
                 num_types: int):
        super().__init__()
        if not 1 <= correlation <= 4:
            raise ValueError(f"correlation must be between 1 and 4, got {correlation}")
        self.irreps_in_list, self.irreps_out_list = list(irreps_in), list(irreps_out)
        self.correlation = correlation
        self.contractions = nn.ModuleList([_Contraction(irreps_in, ir, channels, correlation, num_types)
                                           for ir in irreps_out])
        for ir, con in zip(irreps_out, self.contractions):
            if sum(con.num_paths) == 0:
                raise ValueError(f"symmetric contraction: no path from {irreps_in} to {ir} at correlation {correlation}")
        self.irreps_in = e3nn_irreps(irreps_in, channels)
        self.irreps_out = e3nn_irreps(irreps_out, channels)

    def forward(self, a: torch.Tensor, atom_types: torch.Tensor) -> torch.Tensor:
        outs: List[torch.Tensor] = []
        for con in self.contractions:
            outs.append(con(a, atom_types))
        return torch.cat(outs, dim=1)


def reachable_outputs(irreps_in: Sequence[Irrep], candidates: Sequence[Irrep], correlation: int) -> List[Irrep]:
    """The candidate irreps that some symmetric product of at most ``correlation`` inputs reaches."""
    return [ir for ir in candidates
            if any(coupling_basis(irreps_in, nu, ir).shape[-1] > 0 for nu in range(1, correlation + 1))]
