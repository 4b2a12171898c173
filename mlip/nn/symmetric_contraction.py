"""MACE's symmetric contraction: the equivariant product basis of body order correlation + 1.

For a node of species z with atomic basis A [D, C] (C channels of the irreps ``irreps_in``), and
every output irrep (L, P):

    B_{M, c} = sum_{nu=1}^{correlation} sum_k W^{nu}[z, k, c] / sqrt(K_nu)
                 sum_{i_1..i_nu} U^{nu}[M, i_1, ..., i_nu, k] A_{i_1, c} ... A_{i_nu, c}

U^{nu} are the generalised Clebsch-Gordan tensors of :mod:`mlip.nn.cg_coupling` (computed once
at build time, symmetric in i_1..i_nu, a complete orthogonal basis of the symmetric equivariant
nu-linear maps); W^{nu} are learned per species, path and channel (normal(0, 1), the 1/sqrt(K)
path normalisation is applied in the forward pass). Channels never mix (that is the linear
layer's job after this one): each channel's A is raised to the power nu with itself.

Evaluation. Because U^{nu} is symmetric, the sum over all index tuples equals a sum over
sorted tuples t = (i_1 <= ... <= i_nu) weighted by the number of distinct orderings of t. So,
with the monomials P[n, t, c] = A[n, i_1, c] ... A[n, i_nu, c] of every sorted tuple that some U
uses (all orders together, about D^nu / nu! of them instead of D^nu), the whole contraction is

    B[n, :, c] = G[z_n, :, :, c] @ P[n, :, c],   G[s] = U_all @ W[s]   ([D_out, T, C] per species)

one gather-multiply per factor and one batched matmul per species.
:meth:`SymmetricContraction.multilinear` evaluates the definition with the dense U instead
(the tests compare the two).

Path sets. ``paths="independent"`` (default) uses :func:`~mlip.nn.cg_coupling.coupling_basis`,
a linearly independent basis, with weights normal(0, 1) and the 1/sqrt(K) normalisation in the
forward pass. ``paths="mace"`` uses mace-torch's redundant set
(:func:`~mlip.nn.cg_coupling.mace_coupling_paths`, symmetrised here because only the
symmetric part acts) with mace-torch's parametrisation: weights normal(0, 1) / K at
initialisation and no normalisation in the forward pass. Both span the same functions; they
differ in parameter count and in how a gradient step moves the function. ``weights`` picks
the parametrisation independently of the path set: "normalised" (mlip's) or "mace".
"""

import itertools
import math
from collections import Counter
from typing import List, Sequence, Tuple

import torch
from torch import nn

from mlip.nn.cg_coupling import coupling_basis, mace_coupling_paths, symmetrise
from mlip.irreps import Irrep, e3nn_irreps, irreps_dim, irreps_slices


class SymmetricContraction(nn.Module):
    """A [N, D_in, C] (irreps ``irreps_in``) -> B [N, D_out, C] (irreps ``irreps_out``), species-dependent.

    Every output irrep needs at least one path at some order (see :func:`reachable_outputs`).
    Parameters: ``weight`` [num_types, K_total, C], K_total = number of (output, order, path);
    ``paths``: "independent" or "mace"; ``weights``: "normalised", "mace" or "" (as the path
    set); see the module docstring."""

    def __init__(self, irreps_in: Sequence[Irrep], irreps_out: Sequence[Irrep], channels: int, correlation: int,
                 num_types: int, paths: str = "independent", weights: str = ""):
        super().__init__()
        if paths not in PATH_SETS:
            raise ValueError(f"symmetric contraction: paths must be one of {sorted(PATH_SETS)}, got {paths!r}")
        self.path_set = paths
        if not 1 <= correlation <= 4:
            raise ValueError(f"correlation must be between 1 and 4, got {correlation}")
        irreps_in, irreps_out = list(irreps_in), list(irreps_out)
        self.irreps_in_list, self.irreps_out_list = irreps_in, irreps_out
        self.correlation, self.num_types, self.channels = correlation, num_types, channels
        d = irreps_dim(irreps_in)
        self.dim_in, self.dim_out = d, irreps_dim(irreps_out)
        # dense U of every (output irrep, order): [M, d^nu, K] float64
        blocks: List[Tuple[int, int, torch.Tensor]] = []  # (output index, nu, U)
        # (output index, nu, first weight row, K, normalisation): the layout of ``weight``
        paths: List[Tuple[int, int, int, int, float]] = []
        k_total = 0
        # the parametrisation: "normalised" (normal(0, 1) weights times 1/sqrt(K) in the forward
        # pass) or "mace" (normal(0, 1)/K at initialisation, no factor); "" follows the path set
        weights = weights or ("mace" if self.path_set == "mace" else "normalised")
        if weights not in ("normalised", "mace"):
            raise ValueError(f"symmetric contraction: weights must be 'normalised' or 'mace', got {weights!r}")
        self.weight_form = weights
        mace = weights == "mace"
        for o, ir in enumerate(irreps_out):
            k_out = 0
            for nu in range(1, correlation + 1):
                u = self.path_tensor(irreps_in, nu, ir)
                k = u.shape[-1]
                if k == 0:
                    continue
                blocks.append((o, nu, u.reshape(2 * ir[0] + 1, d ** nu, k)))
                paths.append((o, nu, k_total, k, 1.0 if mace else 1.0 / math.sqrt(k)))
                k_total += k
                k_out += k
            if k_out == 0:
                raise ValueError(f"symmetric contraction: no path from {irreps_in} to {ir} at correlation {correlation}")
        self.paths = paths
        self.num_paths = k_total
        # sorted index tuples (monomials) used by some U, padded with d (a constant 1 component)
        monomials: List[Tuple[int, ...]] = []
        columns: List[Tuple[int, int, float]] = []  # per block entry: (block, flat index in d^nu, multiplicity)
        for nu in range(1, correlation + 1):
            used = torch.zeros(d ** nu, dtype=torch.bool)
            for _, nu_b, u in blocks:
                if nu_b == nu:
                    used |= u.abs().sum(dim=(0, 2)) > 0
            for t in itertools.combinations_with_replacement(range(d), nu):
                flat = 0
                for i in t:
                    flat = flat * d + i
                if bool(used[flat]):
                    mult = math.factorial(nu)
                    for count in Counter(t).values():
                        mult //= math.factorial(count)
                    monomials.append(t)
                    columns.append((nu, flat, float(mult)))
        out_slices = irreps_slices(irreps_out)
        u_all = torch.zeros(self.dim_out, len(monomials), k_total, dtype=torch.float64)
        block_of = {(o, nu): u for o, nu, u in blocks}
        for o, nu, k0, k, norm in paths:
            a, b = out_slices[o]
            u = block_of[(o, nu)]
            for t, (nu_t, flat, mult) in enumerate(columns):
                if nu_t == nu:
                    u_all[a:b, t, k0:k0 + k] = u[:, flat, :] * (mult * norm)
        self.num_monomials = len(monomials)
        index = torch.full((len(monomials), correlation), d, dtype=torch.long)
        for t, mono in enumerate(monomials):
            index[t, :len(mono)] = torch.tensor(mono, dtype=torch.long)
        # rebuilt deterministically at construction, so not part of the state dict
        self.register_buffer("monomial_index", index, persistent=False)
        self.register_buffer("u_all", u_all.reshape(self.dim_out * len(monomials), k_total)
                             .to(torch.get_default_dtype()), persistent=False)
        self.weight = nn.Parameter(torch.randn(num_types, k_total, channels))
        if mace:  # mace-torch initialises each order's weights as normal(0, 1) / K
            with torch.no_grad():
                for _, _, k0, k, _ in paths:
                    self.weight[:, k0:k0 + k] /= k
        self.irreps_in = e3nn_irreps(irreps_in, channels)
        self.irreps_out = e3nn_irreps(irreps_out, channels)

    @torch.jit.unused
    def path_tensor(self, irreps_in: Sequence[Irrep], nu: int, ir: Irrep) -> torch.Tensor:
        """U [2L+1, D^nu..., K] of this module's path set, symmetric in its nu input axes."""
        return PATH_SETS[self.path_set](irreps_in, nu, ir)

    def monomials(self, a: torch.Tensor) -> torch.Tensor:
        """[N, D, C] -> [N, T, C]: the products A_{i_1} ... A_{i_nu} of every used sorted tuple."""
        a_ext = torch.cat([a, torch.ones_like(a[:, :1, :])], dim=1)  # component D is the constant 1
        p = a_ext.index_select(1, self.monomial_index[:, 0])
        for f in range(1, self.correlation):
            p = p * a_ext.index_select(1, self.monomial_index[:, f])
        return p

    def _couple(self, p: torch.Tensor, species: int) -> torch.Tensor:
        """p [n, T, C] of nodes of one species -> [n, D_out, C]."""
        g = (self.u_all.to(p.dtype) @ self.weight[species].to(p.dtype)).view(self.dim_out, self.num_monomials,
                                                                               self.channels)
        return torch.einsum("mtc,ntc->nmc", g, p)

    def forward(self, a: torch.Tensor, atom_types: torch.Tensor) -> torch.Tensor:
        p = self.monomials(a)
        if self.num_types == 1:
            return self._couple(p, 0)
        out = a.new_zeros(a.shape[0], self.dim_out, a.shape[2])
        for s in range(self.num_types):
            idx = torch.nonzero(atom_types == s).view(-1)
            if idx.numel() > 0:
                out = out.index_copy(0, idx, self._couple(p.index_select(0, idx), s))
        return out

    @torch.jit.unused
    def multilinear(self, xs: List[torch.Tensor], atom_types: torch.Tensor, nu: int) -> torch.Tensor:
        """The order-nu term by its definition, with the dense U, as a multilinear map of nu
        possibly *different* inputs x_1..x_nu [N, D, C] -> [N, D_out, C]:

            T(x_1..x_nu)[M, c] = sum_k W[z, k, c] / sqrt(K) sum_i U[M, i_1..i_nu, k] x_1[i_1, c] ... x_nu[i_nu, c]

        forward(A) = sum_nu T(A, ..., A); symmetry: any order of xs gives the same T."""
        assert len(xs) == nu
        n, c = xs[0].shape[0], xs[0].shape[2]
        out = xs[0].new_zeros(n, self.dim_out, c)
        letters = "abcdefgh"[:nu]
        spec = "M" + letters + "k," + ",".join(f"n{x}C" for x in letters) + ",nkC->nMC"
        out_slices = irreps_slices(self.irreps_out_list)
        for o, nu_p, k0, k, norm in self.paths:
            if nu_p != nu:
                continue
            u = self.path_tensor(self.irreps_in_list, nu, self.irreps_out_list[o]).to(xs[0].dtype)
            w = self.weight[atom_types, k0:k0 + k].to(xs[0].dtype) * norm  # [N, K, C]
            a, b = out_slices[o]
            out[:, a:b] = out[:, a:b] + torch.einsum(spec, u, *xs, w)
        return out


PATH_SETS = {
    "independent": coupling_basis,
    "mace": lambda irreps_in, nu, ir: symmetrise(mace_coupling_paths(irreps_in, nu, ir), nu),
}


def reachable_outputs(irreps_in: Sequence[Irrep], candidates: Sequence[Irrep], correlation: int) -> List[Irrep]:
    """The candidate irreps that some symmetric product of at most ``correlation`` inputs reaches."""
    return [ir for ir in candidates
            if any(coupling_basis(irreps_in, nu, ir).shape[-1] > 0 for nu in range(1, correlation + 1))]
