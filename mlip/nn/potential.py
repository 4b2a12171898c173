"""Energy, forces and stress from any per-atom energy model, by automatic differentiation.

A symmetric strain eps (zero, but tracked by autograd) deforms both positions and cell:
r -> r (1 + eps), cell -> cell (1 + eps). Then, per structure of volume V,

    forces  = -dE/dr                     (eV/A)
    virial  = -dE/d(eps)                 (eV)
    stress  =  (1/V) dE/d(eps)           (eV/A^3, ASE sign: positive = tensile)

In training the derivative graph is kept (create_graph) so a force loss reaches the weights.
"""

from typing import Dict, List, Optional

import torch
from torch import nn

from mlip.data import keys as K


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
        if compute_forces and not pos.requires_grad:
            pos = pos.requires_grad_(True)
        strain: Optional[torch.Tensor] = None
        pos_used = pos
        if compute_stress:
            strain = torch.zeros(num_structures, 3, 3, dtype=pos.dtype, device=pos.device).requires_grad_(True)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            pos_used = pos + torch.bmm(pos.unsqueeze(1), sym.index_select(0, batch)).squeeze(1)
            cell = cell + torch.bmm(cell, sym)
        receiver, sender = edge_index[0], edge_index[1]
        vectors = pos_used.index_select(0, sender) - pos_used.index_select(0, receiver)
        shifts = data[K.EDGE_CELL_SHIFT].to(pos.dtype)
        if num_structures == 1:
            vectors = vectors + shifts @ cell[0]
        else:
            edge_cell = cell.index_select(0, batch.index_select(0, receiver))
            vectors = vectors + torch.bmm(shifts.unsqueeze(1), edge_cell).squeeze(1)
        data[K.EDGE_VECTORS] = vectors
        data = self.energy_model(data)
        atomic_energy = data[K.ATOMIC_ENERGY]
        total = torch.zeros(num_structures, dtype=atomic_energy.dtype, device=atomic_energy.device)
        total = total.index_add(0, batch, atomic_energy.squeeze(-1))
        data[K.TOTAL_ENERGY] = total
        if compute_forces or compute_stress:
            inputs: List[torch.Tensor] = [pos]
            if strain is not None:
                inputs.append(strain)
            grad_out: List[Optional[torch.Tensor]] = [torch.ones_like(total)]
            grads = torch.autograd.grad([total], inputs, grad_outputs=grad_out, create_graph=training,
                                        allow_unused=True)
            g_pos = grads[0]
            data[K.FORCES] = -g_pos if g_pos is not None else torch.zeros_like(pos)
            if strain is not None:
                g_strain = grads[1]
                if g_strain is None:
                    g_strain = torch.zeros_like(strain)
                volume = torch.linalg.det(data[K.CELL]).abs()
                data[K.VIRIAL] = -g_strain
                # non-periodic structures have no volume: report zero stress rather than inf
                safe = torch.where(volume > 0, volume, torch.ones_like(volume))
                data[K.STRESS] = torch.where((volume > 0).view(-1, 1, 1), g_strain / safe.view(-1, 1, 1),
                                             torch.zeros_like(g_strain))
        return data
