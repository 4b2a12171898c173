"""The deployment forward pass of commit 0834357, before the exported model was rebuilt on
:class:`mlip.nn.Potential`: ``LammpsModel`` with its own graph dictionary and its own energy
sum, and ``Potential.forward`` with the two helpers both used. Copied verbatim (the helpers
too, so a later change to the library cannot move this reference) and kept as the reference
that tests/test_export_identity.py compares the current code with, bit for bit, in one process.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from mlip.data import keys as K


def strained_edge_vectors(pos: torch.Tensor, cell: torch.Tensor, batch: torch.Tensor, edge_index: torch.Tensor,
                          shifts: torch.Tensor, with_strain: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
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


def potential_forward(potential: nn.Module, data: Dict[str, torch.Tensor], compute_forces: bool = True,
                      compute_stress: bool = False, training: bool = False) -> Dict[str, torch.Tensor]:
    """``Potential.forward`` of that commit, for a Potential ``potential``."""
    data = dict(data)
    pos = data[K.POSITIONS]
    cell = data[K.CELL]
    batch = data[K.BATCH]
    edge_index = data[K.EDGE_INDEX]
    num_structures = cell.shape[0]
    if (compute_forces or compute_stress) and not pos.requires_grad:
        pos = pos.detach().requires_grad_(True)
    vectors, strain = strained_edge_vectors(pos, cell, batch, edge_index, data[K.EDGE_CELL_SHIFT], compute_stress)
    data[K.EDGE_VECTORS] = vectors
    data = potential.energy_model(data)
    atomic_energy = data[K.ATOMIC_ENERGY]
    if num_structures == 1:
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
            safe = torch.where(volume > 0, volume, torch.ones_like(volume))
            data[K.STRESS] = torch.where((volume > 0).view(-1, 1, 1), -virial / safe.view(-1, 1, 1),
                                         torch.zeros_like(virial))
    return data


class LammpsModel(nn.Module):
    def __init__(self, energy_model: nn.Module, model_dtype: torch.dtype):
        super().__init__()
        self.energy_model = energy_model
        self.register_buffer("dtype_probe", torch.zeros(0, dtype=model_dtype))

    def forward(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        f64 = torch.float64
        pos = data["pos"].to(f64).detach().requires_grad_(True)
        n = pos.shape[0]
        device = pos.device
        edge_index = data["edge_index"]
        atom_types = data["atom_types"].to(torch.long).view(-1)
        if "cell" in data:
            cell = data["cell"].to(f64).view(1, 3, 3)
        else:
            cell = torch.zeros(1, 3, 3, dtype=f64, device=device)
        if "edge_cell_shift" in data:
            shifts = data["edge_cell_shift"].to(f64)
        else:
            shifts = torch.zeros(edge_index.shape[1], 3, dtype=f64, device=device)

        batch = torch.zeros(n, dtype=torch.long, device=device)
        vectors, strain = strained_edge_vectors(pos, cell, batch, edge_index, shifts, True)

        dtype = self.dtype_probe.dtype
        inner: Dict[str, torch.Tensor] = {
            "pos": pos.to(dtype),
            "atom_types": atom_types,
            "edge_index": edge_index,
            "edge_cell_shift": shifts.to(dtype),
            "cell": cell.to(dtype),
            "batch": batch,
            "num_atoms": torch.full([1], n, dtype=torch.long, device=device),
            "pbc": torch.ones(1, 3, dtype=torch.bool, device=device),
            "edge_vectors": vectors.to(dtype),
        }
        if "edge_pair" in data and "pair_edge" in data:
            inner["edge_pair"] = data["edge_pair"].to(torch.long)
            inner["pair_edge"] = data["pair_edge"].to(torch.long)
        out = self.energy_model(inner)
        atomic_energy = out["atomic_energy"].to(f64).view(n, 1)
        total = atomic_energy.sum().view(1, 1)
        forces, virial = forces_and_virial(total.view(1), pos, strain, False)
        if virial is None:
            virial = torch.zeros(1, 3, 3, dtype=f64, device=device)
        return {
            "atomic_energy": atomic_energy.detach(),
            "total_energy": total.detach(),
            "forces": forces.detach(),
            "virial": virial.detach(),
        }
