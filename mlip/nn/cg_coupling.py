"""Generalised Clebsch-Gordan coupling: the U tensors of MACE's symmetric contraction.

Given the irreps of an atomic basis A (one channel: a vector of dimension D, laid out as in
:mod:`mlip.irreps`), a correlation order nu and an output irrep (L, P), :func:`coupling_basis`
returns a tensor ``U`` of shape ``[2L+1, D, ..., D (nu times), K]`` such that for every path k

    B_M = sum_{i_1..i_nu} U[M, i_1, ..., i_nu, k] A_{i_1} ... A_{i_nu}

is (a) equivariant: it transforms as the irrep (L, P) when A is rotated/reflected, and
(b) symmetric: U[M, ..., k] is unchanged by any permutation of the nu input axes, so the
multilinear map (x_1, ..., x_nu) -> U[x_1, ..., x_nu] does not depend on the order of its
arguments. The K paths are an orthogonal basis of *all* such tensors (the space of symmetric
equivariant nu-linear maps D^nu -> (L, P)), each with Frobenius norm sqrt(2L + 1).

Construction (once, at build time, float64):

1. for every multiset of input irreps (i_1 <= ... <= i_nu), every left-to-right coupling tree
   ((l_1 x l_2) -> J_2, (J_2 x l_3) -> J_3, ..., -> L) built from Wigner 3j symbols gives an
   equivariant tensor on that block of D^nu (parity is the product of the input parities);
2. embedded in the full D^nu tensor and averaged over the nu! permutations of the input axes
   (this commutes with the group action, because every axis carries the same representation,
   so the result stays equivariant); the antisymmetric couplings vanish here;
3. modified Gram-Schmidt (two passes) in a fixed order drops the linearly dependent
   candidates and orthonormalises the rest. The construction is deterministic, so the same
   basis is rebuilt when a checkpoint is loaded (the U tensors are not stored in it).

Trees over sorted multisets suffice: the symmetrisation of a tree over a permuted tuple is the
symmetrisation of an equivariant tensor on the sorted block, which the sorted block's trees span.
"""

import itertools
from functools import lru_cache
from typing import List, Sequence, Tuple

import torch

from mlip.irreps import Irrep, irreps_dim, irreps_slices


def _coupling_trees(ls: Sequence[int], l_out: int) -> List[torch.Tensor]:
    """All left-to-right coupling trees of irreps of degrees ``ls`` into ``l_out``:
    tensors [2l_1+1, ..., 2l_nu+1, 2 l_out + 1] (float64)."""
    from e3nn import o3

    states: List[Tuple[torch.Tensor, int]] = [(torch.eye(2 * ls[0] + 1, dtype=torch.float64), ls[0])]
    for l in ls[1:]:
        nxt = []
        for t, j in states:
            for j2 in range(abs(j - l), j + l + 1):
                w = o3.wigner_3j(j, l, j2, dtype=torch.float64)  # [2j+1, 2l+1, 2j2+1]
                nxt.append((torch.tensordot(t, w, dims=([t.dim() - 1], [0])), j2))
        states = nxt
    return [t for t, j in states if j == l_out]


def symmetrise(t: torch.Tensor, nu: int) -> torch.Tensor:
    """Average of t [M, D, ..., D, ...] over the permutations of its nu input axes (1..nu);
    trailing axes (paths) are kept."""
    perms = list(itertools.permutations(range(1, nu + 1)))
    out = torch.zeros_like(t)
    for p in perms:
        out += t.permute(0, *p, *range(nu + 1, t.dim()))
    return out / len(perms)


@lru_cache(maxsize=None)
def _coupling_basis_cached(irreps_in: Tuple[Irrep, ...], nu: int, ir_out: Irrep) -> torch.Tensor:
    l_out, p_out = ir_out
    d = irreps_dim(irreps_in)
    m = 2 * l_out + 1
    slices = irreps_slices(irreps_in)
    basis: List[torch.Tensor] = []  # orthonormal flattened vectors
    for combo in itertools.combinations_with_replacement(range(len(irreps_in)), nu):
        parity = 1
        for i in combo:
            parity *= irreps_in[i][1]
        if parity != p_out:
            continue
        ls = [irreps_in[i][0] for i in combo]
        for tree in _coupling_trees(ls, l_out):
            full = torch.zeros((m,) + (d,) * nu, dtype=torch.float64)
            index = (slice(None),) + tuple(slice(*slices[i]) for i in combo)
            full[index] = tree.permute(nu, *range(nu))  # output axis first
            v = symmetrise(full, nu).reshape(-1)
            norm0 = float(v.norm())
            if norm0 < 1e-12:
                continue  # antisymmetric coupling: vanishes on symmetric products
            for _ in range(2):  # Gram-Schmidt, re-orthogonalised once for stability
                for q in basis:
                    v = v - torch.dot(q, v) * q
            if float(v.norm()) > 1e-8 * norm0:
                basis.append(v / v.norm())
    if not basis:
        return torch.zeros((m,) + (d,) * nu + (0,), dtype=torch.float64)
    u = torch.stack(basis, dim=-1) * m ** 0.5  # component normalisation: |U_k|^2 = 2L + 1
    u = torch.where(u.abs() < 1e-14, torch.zeros_like(u), u)
    return u.reshape((m,) + (d,) * nu + (len(basis),))


def coupling_basis(irreps_in: Sequence[Irrep], nu: int, ir_out: Irrep) -> torch.Tensor:
    """U [2L+1, D^nu..., K] (float64): orthogonal basis of the symmetric, equivariant nu-linear
    maps from ``irreps_in`` (one channel) to ``ir_out``; K may be 0."""
    if nu < 1:
        raise ValueError("correlation order nu must be at least 1")
    return _coupling_basis_cached(tuple((int(l), int(p)) for l, p in irreps_in), int(nu),
                                  (int(ir_out[0]), int(ir_out[1]))).clone()


# --------------------------------------------------------------------------------------------
# mace-torch's redundant path set (``mace_compat``)
# --------------------------------------------------------------------------------------------

def _ordered_couplings(irreps_in: Tuple[Irrep, ...], nu: int) -> List[Tuple[Irrep, torch.Tensor]]:
    """Every left-to-right coupling of an *ordered* nu-tuple of input irreps, with every
    intermediate irrep: (irrep, tensor [2l+1, D, ..., D (nu times)]), stably sorted by irrep.

    Each coupling step (J, p) x (l, q) -> (L, pq) uses the Wigner 3j symbol with the output
    first, scaled by sqrt(2L + 1) (component normalisation). This is the path set, order and
    normalisation that mace-torch 0.3's ``U_matrix_real`` builds (from e3nn's ``_wigner_nj``),
    written here from that definition."""
    from e3nn import o3

    d = irreps_dim(irreps_in)
    slices = irreps_slices(irreps_in)
    eye = torch.eye(d, dtype=torch.float64)
    paths: List[Tuple[Irrep, torch.Tensor]] = [(ir, eye[a:b]) for ir, (a, b) in zip(irreps_in, slices)]
    for _ in range(1, nu):
        nxt: List[Tuple[Irrep, torch.Tensor]] = []
        for (l_left, p_left), left in paths:
            left_flat = left.reshape(2 * l_left + 1, -1)  # [m_left, D^(k-1)]
            for (l_right, p_right), (a, b) in zip(irreps_in, slices):
                for l_out in range(abs(l_left - l_right), l_left + l_right + 1):
                    w = o3.wigner_3j(l_out, l_left, l_right, dtype=torch.float64) * (2 * l_out + 1) ** 0.5
                    c = torch.einsum("jk,ijl->ikl", left_flat, w)  # [m_out, D^(k-1), m_right]
                    full = torch.zeros(2 * l_out + 1, left_flat.shape[1], d, dtype=torch.float64)
                    full[:, :, a:b] = c
                    nxt.append(((l_out, p_left * p_right), full.reshape((2 * l_out + 1,) + left.shape[1:] + (d,))))
        paths = sorted(nxt, key=lambda item: item[0])  # stable: generation order within an irrep
    return paths


@lru_cache(maxsize=None)
def _mace_paths_cached(irreps_in: Tuple[Irrep, ...], nu: int, ir_out: Irrep) -> torch.Tensor:
    m = 2 * ir_out[0] + 1
    d = irreps_dim(irreps_in)
    tensors = [t for ir, t in _ordered_couplings(irreps_in, nu) if ir == ir_out]
    if not tensors:
        return torch.zeros((m,) + (d,) * nu + (0,), dtype=torch.float64)
    return torch.stack(tensors, dim=-1)


def mace_coupling_paths(irreps_in: Sequence[Irrep], nu: int, ir_out: Irrep) -> torch.Tensor:
    """U [2L+1, D^nu..., K] (float64): mace-torch's path set for the symmetric contraction:
    one path per coupling tree of every *ordered* tuple of input irreps (not symmetrised, not
    orthogonalised). On a product of nu copies of one input only the symmetric part of each
    path acts, so these K paths span the same maps as :func:`coupling_basis`'s, redundantly
    (K is larger; some paths are zero or repeat others on symmetric inputs); a model that
    learns one weight per path has mace-torch's parameter count and parametrisation."""
    if nu < 1:
        raise ValueError("correlation order nu must be at least 1")
    return _mace_paths_cached(tuple((int(l), int(p)) for l, p in irreps_in), int(nu),
                              (int(ir_out[0]), int(ir_out[1]))).clone()
