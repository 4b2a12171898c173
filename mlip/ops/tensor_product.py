"""The channel-wise ("uvu") tensor product of node features with edge spherical harmonics.

For input irreps (l1, p1) of the features and (l2, p2) of the harmonics, every allowed
(l3, p3 = p1 p2) with |l1 - l2| <= l3 <= l1 + l2 that the output keeps is a *path*. Each path
p carries its own per-edge, per-channel weight W[e, p, c] (from the radial MLP), so

    out[e, k, c] = W[e, path(k), c] * sum_{i, j} CG[i, j, k] h[e, i, c] Y[e, j]

where k runs over the concatenated outputs of all paths. CG holds the Wigner 3j symbols of
every path, scaled by sqrt(2 l3 + 1) so that unit-variance inputs give unit-variance outputs.
:class:`TensorProductSpec` is the build-time description shared by the torch reference and
the Triton kernels.
"""

from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import torch

from mlip.irreps import Irrep, irreps_dim, irreps_slices


@dataclass(frozen=True)
class Path:
    i_in: int      # index of the input irrep
    i_sh: int      # index of the harmonic irrep
    l_out: int
    p_out: int


@dataclass
class TensorProductSpec:
    """Paths and dense CG tensor of a channel-wise tensor product, fixed when the model is built."""

    irreps_in: List[Irrep]
    irreps_sh: List[Irrep]
    irreps_out_allowed: List[Irrep]
    paths: List[Path] = field(init=False)

    def __post_init__(self):
        allowed = set(self.irreps_out_allowed)
        self.paths = []
        for i_in, (l1, p1) in enumerate(self.irreps_in):
            for i_sh, (l2, p2) in enumerate(self.irreps_sh):
                for l3 in range(abs(l1 - l2), l1 + l2 + 1):
                    if (l3, p1 * p2) in allowed:
                        self.paths.append(Path(i_in, i_sh, l3, p1 * p2))
        # Order paths by output irrep: paths with the same (l_out, p_out) then form one block of
        # equal-sized slices, over which per-path weights broadcast without a gather (see
        # weight_groups). The order is internal: every consumer reads irreps_out.
        rank = {ir: k for k, ir in enumerate(self.irreps_out_allowed)}
        self.paths.sort(key=lambda p: rank[(p.l_out, p.p_out)])
        if not self.paths:
            raise ValueError(f"no tensor-product path from {self.irreps_in} x {self.irreps_sh} "
                             f"to any of {self.irreps_out_allowed}")

    @property
    def num_paths(self) -> int:
        return len(self.paths)

    @property
    def irreps_out(self) -> List[Irrep]:
        """One output irrep per path, in path order (the layout of the message)."""
        return [(p.l_out, p.p_out) for p in self.paths]

    @property
    def dim_in(self) -> int:
        return irreps_dim(self.irreps_in)

    @property
    def dim_sh(self) -> int:
        return irreps_dim(self.irreps_sh)

    @property
    def dim_out(self) -> int:
        return irreps_dim(self.irreps_out)

    def cg_tensor(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Dense [dim_in, dim_sh, dim_out] coupling tensor with the path normalisation folded in."""
        from e3nn import o3

        cg = torch.zeros(self.dim_in, self.dim_sh, self.dim_out, dtype=torch.float64)
        in_sl, sh_sl, out_sl = irreps_slices(self.irreps_in), irreps_slices(self.irreps_sh), irreps_slices(self.irreps_out)
        for k, p in enumerate(self.paths):
            l1, l2 = self.irreps_in[p.i_in][0], self.irreps_sh[p.i_sh][0]
            w3j = o3.wigner_3j(l1, l2, p.l_out, dtype=torch.float64) * (2 * p.l_out + 1) ** 0.5
            (a1, b1), (a2, b2), (a3, b3) = in_sl[p.i_in], sh_sl[p.i_sh], out_sl[k]
            cg[a1:b1, a2:b2, a3:b3] = w3j
        return cg.to(dtype)

    def path_of_output(self) -> torch.Tensor:
        """[dim_out] int64: which path each output component belongs to."""
        return torch.tensor([k for k, p in enumerate(self.paths) for _ in range(2 * p.l_out + 1)], dtype=torch.long)

    def weight_groups(self) -> List[Tuple[int, int, int, int]]:
        """(first path, path count, first output component, 2l+1) for each run of paths with the
        same output irrep: out[:, a:a+n*m].view(E, n, m, C) * W[:, p:p+n, None, :]."""
        groups: List[Tuple[int, int, int, int]] = []
        start = 0
        for k, p in enumerate(self.paths):
            m = 2 * p.l_out + 1
            if groups and (self.paths[k - 1].l_out, self.paths[k - 1].p_out) == (p.l_out, p.p_out):
                first, count, comp, mm = groups[-1]
                groups[-1] = (first, count + 1, comp, mm)
            else:
                groups.append((k, 1, start, m))
            start += m
        return groups

    def sparse_entries(self) -> List[Tuple[int, int, int, float]]:
        """Non-zero CG entries (i, j, k, value): the kernels unroll over these."""
        cg = self.cg_tensor()
        idx = cg.abs().gt(1e-12).nonzero().tolist()
        return [(i, j, k, float(cg[i, j, k])) for i, j, k in idx]


def reachable_irreps(irreps_in: Sequence[Irrep], irreps_sh: Sequence[Irrep], candidates: Sequence[Irrep]) -> List[Irrep]:
    """The candidates that some path from irreps_in x irreps_sh produces, in candidate order."""
    made = {(l3, p1 * p2) for l1, p1 in irreps_in for l2, p2 in irreps_sh for l3 in range(abs(l1 - l2), l1 + l2 + 1)}
    return [ir for ir in candidates if ir in made]
