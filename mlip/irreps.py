"""Feature layout: every irrep carries the same number of channels C, stored as ``[N, D, C]``.

D = sum over irreps of (2l + 1). Keeping channels last makes every equivariant linear map a
dense matmul over C and every tensor product a contraction over D, which is what makes the
CPU path fast. :func:`to_e3nn`/:func:`from_e3nn` convert to e3nn's flat ``[N, C*D]`` layout
(multiplicity-major blocks) so e3nn's test helpers can check each block.
"""

from typing import List, Sequence, Tuple

import torch
from e3nn import o3

Irrep = Tuple[int, int]  # (l, parity) with parity +1 (even) or -1 (odd)


def parse_irreps(spec) -> List[Irrep]:
    """'0e+1o' or an e3nn Irreps or a list of (l, p) -> list of (l, p) without multiplicities."""
    if isinstance(spec, (list, tuple)) and (not spec or isinstance(spec[0], tuple)):
        return [(int(l), int(p)) for l, p in spec]
    return [(ir.l, ir.p) for mul, ir in o3.Irreps(spec) for _ in range(mul)]


def irreps_dim(irreps: Sequence[Irrep]) -> int:
    return sum(2 * l + 1 for l, _ in irreps)


def irreps_slices(irreps: Sequence[Irrep]) -> List[Tuple[int, int]]:
    """(start, stop) of each irrep along the D axis."""
    out, start = [], 0
    for l, _ in irreps:
        out.append((start, start + 2 * l + 1))
        start += 2 * l + 1
    return out


def irreps_str(irreps: Sequence[Irrep], channels: int) -> str:
    """The e3nn spelling of a layout, e.g. '64x0e+64x1o'."""
    return "+".join(f"{channels}x{l}{'e' if p == 1 else 'o'}" for l, p in irreps) or "0e"


def e3nn_irreps(irreps: Sequence[Irrep], channels: int) -> o3.Irreps:
    return o3.Irreps(irreps_str(irreps, channels))


def hidden_irreps(l_max: int, parity: bool) -> List[Irrep]:
    """Hidden feature irreps. O(3) (parity on): both parities of every l; SO(3): even only."""
    if parity:
        return [(l, p) for l in range(l_max + 1) for p in (1, -1)]
    return [(l, 1) for l in range(l_max + 1)]


def sh_irreps(l_max: int, parity: bool) -> List[Irrep]:
    """Irreps of edge spherical harmonics: Y_l has parity (-1)^l under O(3)."""
    return [(l, (-1) ** l if parity else 1) for l in range(l_max + 1)]


def to_e3nn(x: torch.Tensor, irreps: Sequence[Irrep]) -> torch.Tensor:
    """[N, D, C] -> [N, C*D] in e3nn order (for each irrep: C blocks of 2l+1)."""
    blocks = [x[:, a:b, :].transpose(1, 2).reshape(x.shape[0], -1) for a, b in irreps_slices(irreps)]
    return torch.cat(blocks, dim=1)


def from_e3nn(x: torch.Tensor, irreps: Sequence[Irrep], channels: int) -> torch.Tensor:
    """Inverse of :func:`to_e3nn`."""
    blocks, start = [], 0
    for l, _ in irreps:
        d = 2 * l + 1
        blocks.append(x[:, start:start + channels * d].reshape(-1, channels, d).transpose(1, 2))
        start += channels * d
    return torch.cat(blocks, dim=1)


def wigner_D(irreps: Sequence[Irrep], R: torch.Tensor) -> torch.Tensor:
    """Block-diagonal [D, D] representation of the O(3) matrix R on one channel of ``irreps``."""
    return o3.Irreps("+".join(f"1x{l}{'e' if p == 1 else 'o'}" for l, p in irreps)).D_from_matrix(R)
