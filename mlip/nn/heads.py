"""Output heads besides the energy: dipole (with per-atom charges), polarizability, and generic
per-atom or per-structure irreps outputs, read from the last features of a body (NequIP, MACE).

Every architecture takes the same head hyperparameters (defaults: no head, and then no
parameter, buffer or random draw is added, so energy-only models are unchanged):

``dipole: true``
    per-atom charges q_i from the even scalars (a small MLP), shifted uniformly within each
    structure so that they sum to its total charge Q (``total_charge``, from
    ``atoms.info["charge"]``, 0 when not given), and, with ``atomic_dipoles: true`` (default),
    per-atom dipoles p_i from the vector (1o) features. The dipole (e*A) is

        mu = sum_i q_i r_i + sum_i p_i

    so it rotates as R mu, changes sign under inversion, and moves by Q t under a translation t
    (not at all for a neutral structure). Outputs: ``charges`` [N] (e), ``dipole`` [B, 3].
    Periodic cells: the positions are used as given (MACE does the same); sum_i q_i r_i then
    depends on which periodic image of each atom the structure lists (wrapping an atom with
    charge q_i by a lattice vector L changes mu by q_i L), and the polarisation of a crystal is
    only defined modulo such quanta (the Berry-phase picture). Labels of periodic structures
    must therefore come from the same positions, unwrapped as in the reference calculation;
    molecules in a box that stay whole are safe.
``polarizability: true``
    per atom, an isotropic part a_i (even scalars, MLP, plus a per-species offset) and an
    anisotropic part from the 2e
    features (a linear map) assembled as the symmetric matrix a_i I + T(b_i) (T: the five
    components of l = 2 as a traceless symmetric 3x3 tensor); summed over the structure:
    ``polarizability`` [B, 3, 3] (A^3, polarizability volume), which transforms as R alpha R^T.
``structure_output: "1x0o"`` / ``atom_output: "1x0e+1x1o"``
    any irreps (e3nn notation), a linear map of the features of each irrep: per atom
    (``atom_output`` [N, D]) or summed over the structure (``structure_output`` [B, D]),
    components in e3nn's order of each irrep. A parity-free body (``parity: false``: SO(3)
    only, every feature labelled even) gives irreps of natural parity (0e, 1o, 2e, ...) from its
    l features and exactly zero for pseudo-tensors (0o, 1e, 2o, ...), which it cannot represent.

The head reads the body's last features, whose irreps the body extends with what the heads
need (:func:`head_irreps`); an irrep the body cannot reach (e.g. 2e with ``l_max: 0``) is a
ValueError naming the hyperparameter to change.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from mlip.data import keys as K
from mlip.irreps import Irrep, e3nn_irreps, parse_irreps
from mlip.nn.linear import IrrepsLinear
from mlip.nn.readout import ScalarReadout

VECTOR, TENSOR2 = (1, -1), (2, 1)


def body_irrep(ir: Irrep, parity: bool) -> Optional[Irrep]:
    """The feature irrep of a body that carries the physical irrep ``ir``: itself with parity;
    in a parity-free body (all features labelled even) its l for natural parity (0e, 1o, 2e),
    None for a pseudo-tensor (no feature carries it)."""
    l, p = ir
    if parity:
        return ir
    return (l, 1) if p == (-1) ** l else None


def head_irreps(parity: bool, dipole: bool = False, atomic_dipoles: bool = True, polarizability: bool = False,
                structure_output: str = "", atom_output: str = "") -> List[Irrep]:
    """The feature irreps (body labelling) that the requested heads read, besides 0e; [] for none."""
    wanted: List[Irrep] = []
    if dipole and atomic_dipoles:
        wanted.append(VECTOR)
    if polarizability:
        wanted.append(TENSOR2)
    for spec in (structure_output, atom_output):
        if spec:
            wanted += parse_irreps(spec)
    out: List[Irrep] = []
    for ir in wanted:
        b = body_irrep(ir, parity)
        if b is not None and b != (0, 1) and b not in out:
            out.append(b)
    return out


def has_heads(dipole: bool = False, polarizability: bool = False, structure_output: str = "",
              atom_output: str = "") -> bool:
    return bool(dipole or polarizability or structure_output or atom_output)


def head_output_fields(config: Dict[str, object]) -> List[str]:
    """The output fields a model config's heads write (for a model known only by its config,
    e.g. an exported file's metadata)."""
    out: List[str] = []
    if config.get("dipole"):
        out += [K.CHARGES, K.DIPOLE]
    if config.get("polarizability"):
        out.append(K.POLARIZABILITY)
    if config.get("structure_output"):
        out.append(K.STRUCTURE_OUTPUT)
    if config.get("atom_output"):
        out.append(K.ATOM_OUTPUT)
    return out


def _cartesian_bases() -> Tuple[torch.Tensor, torch.Tensor]:
    """[3, 3]: row m is the Cartesian vector of the l=1 component m; [5, 3, 3]: the traceless
    symmetric matrix of the l=2 component m. Read off the spherical harmonics' polynomial
    coefficients (Y_m(u) = v_m . u and u^T M_m u), so the maps are equivariant in the basis the
    features use; both scaled to unit norm."""
    from mlip.nn.spherical_harmonics import _coefficients

    c = _coefficients(2)
    vec = c[1:4, 1:4].t().clone()  # [m, k]
    vec = vec / vec.norm(dim=1, keepdim=True)
    # monomials of degree 2 in the order xx, xy, xz, yy, yz, zz
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    mats = torch.zeros(5, 3, 3, dtype=torch.float64)
    for row, (a, b) in enumerate(pairs):
        coef = c[4 + row, 4:9]
        if a == b:
            mats[:, a, a] += coef
        else:
            mats[:, a, b] += 0.5 * coef
            mats[:, b, a] += 0.5 * coef
    eye = torch.eye(3, dtype=torch.float64)
    mats = mats - (mats.diagonal(dim1=1, dim2=2).sum(-1) / 3.0).view(5, 1, 1) * eye
    mats = mats / mats.flatten(1).norm(dim=1).view(5, 1, 1)
    return vec, mats


def per_structure(values: torch.Tensor, batch: torch.Tensor, num_structures: int) -> torch.Tensor:
    """Sum per-atom ``values`` [N, ...] over each structure -> [B, ...]."""
    shape = [num_structures] + list(values.shape[1:])
    return values.new_zeros(shape).index_add(0, batch, values)


def _name(ir: Irrep) -> str:
    return f"{ir[0]}{'e' if ir[1] == 1 else 'o'}"


def _missing(ir: Irrep, what: str, feature_irreps: Sequence[Irrep]) -> ValueError:
    have = ", ".join(_name(i) for i in feature_irreps)
    if ir[1] != (-1) ** ir[0]:  # a pseudo-tensor
        hint = ("a pseudo-tensor needs NequIP's features of both parities (architecture: nequip, parity: true, "
                "enough layers to form it: three for 0o); MACE's features have natural parity only (0e, 1o, 2e, ...)")
    else:
        hint = "raise l_max (MACE: max_L) or the number of layers"
    return ValueError(f"{what} needs {_name(ir)} features, which this model's last layer cannot reach (it "
                      f"reaches {have}); {hint}" + (", or set atomic_dipoles: false" if what == "the dipole head"
                                                   else ""))


class DipoleHead(nn.Module):
    """Charges (constrained to the total charge) and per-atom dipoles -> ``charges``, ``dipole``."""

    def __init__(self, feature_irreps: Sequence[Irrep], channels: int, parity: bool, atomic_dipoles: bool,
                 hidden: int):
        super().__init__()
        self.charge = ScalarReadout(channels, hidden)
        self.atomic_dipole: Optional[IrrepsLinear] = None
        if atomic_dipoles:
            vec = body_irrep(VECTOR, parity)
            if vec is None or vec not in feature_irreps:
                raise _missing(VECTOR, "the dipole head", feature_irreps)
            self.atomic_dipole = IrrepsLinear(feature_irreps, [vec], channels, 1)
        vec_basis, _ = _cartesian_bases()
        self.register_buffer("to_cartesian", vec_basis.to(torch.get_default_dtype()), persistent=False)
        self.irreps_in = e3nn_irreps(feature_irreps, channels)
        self.irreps_out = "1x0e+1x1o" if atomic_dipoles else "1x0e"

    def forward(self, x: torch.Tensor, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        batch = data[K.BATCH]
        num_structures = data[K.NUM_ATOMS].shape[0]
        q = self.charge(x[:, 0, :]).squeeze(-1)  # [N]
        total = per_structure(q, batch, num_structures)
        if K.TOTAL_CHARGE in data:
            target = data[K.TOTAL_CHARGE].to(q.dtype).view(-1)
        else:
            target = torch.zeros_like(total)
        # the same shift for every atom of a structure: sum_i q_i = Q exactly (to rounding)
        q = q + ((target - total) / data[K.NUM_ATOMS].to(q.dtype)).index_select(0, batch)
        pos = data[K.POSITIONS].to(q.dtype)
        per_atom = q.unsqueeze(-1) * pos
        head = self.atomic_dipole
        if head is not None:
            per_atom = per_atom + head(x).squeeze(-1) @ self.to_cartesian.to(q.dtype)
        data[K.CHARGES] = q
        data[K.DIPOLE] = per_structure(per_atom, batch, num_structures)
        return data


class PolarizabilityHead(nn.Module):
    """Per-atom isotropic (0e) and anisotropic (2e) parts -> symmetric ``polarizability`` [B, 3, 3].

    The isotropic part is an MLP of the scalars plus a trainable per-species offset (A^3,
    starting at 0): atomic polarizabilities are several A^3, far from the MLP's initial output,
    and Adam moves this offset by about ``lr`` per step whatever the loss weights (as the
    energy's per-species correction)."""

    def __init__(self, feature_irreps: Sequence[Irrep], channels: int, parity: bool, hidden: int, num_types: int):
        super().__init__()
        t2 = body_irrep(TENSOR2, parity)
        if t2 is None or t2 not in feature_irreps:
            raise _missing(TENSOR2, "the polarizability head", feature_irreps)
        self.isotropic = ScalarReadout(channels, hidden)
        self.anisotropic = IrrepsLinear(feature_irreps, [t2], channels, 1)
        self.species_isotropic = nn.Parameter(torch.zeros(num_types))
        _, mats = _cartesian_bases()
        self.register_buffer("basis", mats.to(torch.get_default_dtype()), persistent=False)
        self.irreps_in = e3nn_irreps(feature_irreps, channels)
        self.irreps_out = "1x0e+1x2e"

    def forward(self, x: torch.Tensor, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        batch = data[K.BATCH]
        num_structures = data[K.NUM_ATOMS].shape[0]
        per_atom = self.isotropic(x[:, 0, :]) + self.species_isotropic.index_select(0, data[K.ATOM_TYPES]).unsqueeze(-1)
        iso = per_structure(per_atom, batch, num_structures)  # [B, 1]
        aniso = per_structure(self.anisotropic(x).squeeze(-1), batch, num_structures)  # [B, 5]
        eye = torch.eye(3, dtype=iso.dtype, device=iso.device)
        alpha = iso.view(-1, 1, 1) * eye + torch.einsum("bm,mij->bij", aniso, self.basis.to(aniso.dtype))
        data[K.POLARIZABILITY] = alpha
        return data


class IrrepsHead(nn.Module):
    """A linear map of the features to any irreps, per atom or summed per structure."""

    def __init__(self, feature_irreps: Sequence[Irrep], channels: int, parity: bool, spec: str,
                 per_structure_sum: bool):
        super().__init__()
        out = parse_irreps(spec)
        if not out:
            raise ValueError(f"output irreps '{spec}' are empty")
        # in a parity-free body a pseudo-tensor has no features: (l, 0) is never among them and
        # the linear map gives exact zeros there
        mapped: List[Irrep] = []
        for ir in out:
            b = body_irrep(ir, parity)
            if b is not None and b not in feature_irreps:
                raise _missing(ir, f"output irreps '{spec}'", feature_irreps)
            mapped.append(b if b is not None else (ir[0], 0))
        self.linear = IrrepsLinear(feature_irreps, mapped, channels, 1, allow_missing=True)
        self.per_structure_sum = bool(per_structure_sum)
        self.field = K.STRUCTURE_OUTPUT if per_structure_sum else K.ATOM_OUTPUT
        self.irreps_in = e3nn_irreps(feature_irreps, channels)
        self.irreps_out = str(e3nn_irreps(out, 1).simplify()) if out else ""

    def forward(self, x: torch.Tensor, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        y = self.linear(x).squeeze(-1)  # [N, D]
        if self.per_structure_sum:
            y = per_structure(y, data[K.BATCH], data[K.NUM_ATOMS].shape[0])
        data[self.field] = y
        return data


class OutputHeads(nn.Module):
    """The heads a model was built with, applied to its last features ``x`` [N, D, C] (irreps
    ``feature_irreps``, 0e first); writes their fields into the graph dict."""

    def __init__(self, feature_irreps: Sequence[Irrep], channels: int, parity: bool, num_types: int,
                 dipole: bool = False, atomic_dipoles: bool = True, polarizability: bool = False,
                 structure_output: str = "", atom_output: str = "", hidden: int = 16):
        super().__init__()
        feature_irreps = list(feature_irreps)
        if not feature_irreps or feature_irreps[0] != (0, 1):
            raise ValueError(f"output heads need 0e features first, got {feature_irreps}")
        self.dipole: Optional[DipoleHead] = (DipoleHead(feature_irreps, channels, parity, atomic_dipoles, hidden)
                                             if dipole else None)
        self.polarizability: Optional[PolarizabilityHead] = (
            PolarizabilityHead(feature_irreps, channels, parity, hidden, num_types) if polarizability else None)
        self.structure_output: Optional[IrrepsHead] = (
            IrrepsHead(feature_irreps, channels, parity, structure_output, True) if structure_output else None)
        self.atom_output: Optional[IrrepsHead] = (
            IrrepsHead(feature_irreps, channels, parity, atom_output, False) if atom_output else None)
        self.output_fields: List[str] = head_output_fields(
            {"dipole": dipole, "polarizability": polarizability, "structure_output": structure_output,
             "atom_output": atom_output})
        self.irreps_in = e3nn_irreps(feature_irreps, channels)

    def forward(self, x: torch.Tensor, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        dipole = self.dipole
        if dipole is not None:
            data = dipole(x, data)
        polarizability = self.polarizability
        if polarizability is not None:
            data = polarizability(x, data)
        structure_output = self.structure_output
        if structure_output is not None:
            data = structure_output(x, data)
        atom_output = self.atom_output
        if atom_output is not None:
            data = atom_output(x, data)
        return data
