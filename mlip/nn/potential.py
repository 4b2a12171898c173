"""Energy, forces and stress from any per-atom energy model, by automatic differentiation.

A symmetric strain eps (zero, but tracked by autograd) deforms both positions and cell:
r -> r (1 + eps), cell -> cell (1 + eps). Then, per structure of volume V,

    forces  = -dE/dr                     (eV/A)
    virial  = -dE/d(eps)                 (eV)
    stress  =  (1/V) dE/d(eps)           (eV/A^3, ASE sign: positive = tensile)

In training the derivative graph is kept (create_graph) so a force loss reaches the weights.
"""

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from mlip.data import keys as K


def strained_edge_vectors(pos: torch.Tensor, cell: torch.Tensor, batch: torch.Tensor, edge_index: torch.Tensor,
                          shifts: torch.Tensor, with_strain: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Edge vectors r_ij = pos[j] - pos[i] + shift_ij @ cell (row 0 of edge_index is i).

    With ``with_strain``, positions and cells are first deformed by a symmetric strain
    (zero-valued, tracked by autograd; returned) so that -dE/d(strain) is the virial. The one
    definition used by :class:`Potential` and by the exported LAMMPS model.
    """
    strain: Optional[torch.Tensor] = None
    if with_strain:
        strain = torch.zeros(cell.shape[0], 3, 3, dtype=pos.dtype, device=pos.device).requires_grad_(True)
        sym = 0.5 * (strain + strain.transpose(1, 2))
        pos = pos + torch.bmm(pos.unsqueeze(1), sym.index_select(0, batch)).squeeze(1)
        cell = cell + torch.bmm(cell, sym)
    receiver, sender = edge_index[0], edge_index[1]
    vectors = pos.index_select(0, sender) - pos.index_select(0, receiver)
    shifts = shifts.to(pos.dtype)
    if cell.shape[0] == 1:
        vectors = vectors + shifts @ cell[0]
    else:
        edge_cell = cell.index_select(0, batch.index_select(0, receiver))
        vectors = vectors + torch.bmm(shifts.unsqueeze(1), edge_cell).squeeze(1)
    return vectors, strain


def forces_and_virial(total_energy: torch.Tensor, pos: torch.Tensor, strain: Optional[torch.Tensor],
                      create_graph: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """forces = -dE/dpos (eV/A) and, when a strain was applied, virial = -dE/d(strain) (eV)."""
    inputs: List[torch.Tensor] = [pos]
    if strain is not None:
        inputs.append(strain)
    grad_out: List[Optional[torch.Tensor]] = [torch.ones_like(total_energy)]
    grads = torch.autograd.grad([total_energy], inputs, grad_outputs=grad_out, create_graph=create_graph,
                                allow_unused=True)
    g_pos = grads[0]
    forces = -g_pos if g_pos is not None else torch.zeros_like(pos)
    virial: Optional[torch.Tensor] = None
    if strain is not None:
        g_strain = grads[1]
        virial = -g_strain if g_strain is not None else torch.zeros_like(strain)
    return forces, virial


class Potential(nn.Module):
    """Wraps an energy model (``forward(data) -> data`` writing ``atomic_energy``)."""

    def __init__(self, energy_model: nn.Module, type_names: List[str], r_max: float):
        super().__init__()
        self.energy_model = energy_model
        self.type_names = list(type_names)
        self.r_max = float(r_max)

    def forward(self, data: Dict[str, torch.Tensor], compute_forces: bool = True, compute_stress: bool = False,
                training: bool = False) -> Dict[str, torch.Tensor]:
        data = dict(data)
        pos = data[K.POSITIONS]
        cell = data[K.CELL]
        batch = data[K.BATCH]
        edge_index = data[K.EDGE_INDEX]
        num_structures = cell.shape[0]
        if (compute_forces or compute_stress) and not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)  # a leaf of our own: the caller's tensor is left alone
        vectors, strain = strained_edge_vectors(pos, cell, batch, edge_index, data[K.EDGE_CELL_SHIFT], compute_stress)
        data[K.EDGE_VECTORS] = vectors
        data = self.energy_model(data)
        atomic_energy = data[K.ATOMIC_ENERGY]
        if num_structures == 1:
            # a plain sum; also keeps a traced one-structure graph free of a scatter into one
            # element, which inductor's vectorised CPU code generation cannot compile (torch 2.13)
            total = atomic_energy.sum().view(1)
        else:
            total = torch.zeros(num_structures, dtype=atomic_energy.dtype, device=atomic_energy.device)
            total = total.index_add(0, batch, atomic_energy.squeeze(-1))
        data[K.TOTAL_ENERGY] = total
        if compute_forces or compute_stress:
            forces, virial = forces_and_virial(total, pos, strain, training)
            data[K.FORCES] = forces
            if virial is not None:
                volume = torch.linalg.det(data[K.CELL]).abs()
                data[K.VIRIAL] = virial
                # non-periodic structures have no volume: report zero stress rather than inf
                safe = torch.where(volume > 0, volume, torch.ones_like(volume))
                data[K.STRESS] = torch.where((volume > 0).view(-1, 1, 1), -virial / safe.view(-1, 1, 1),
                                             torch.zeros_like(virial))
        return data
