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
    (zero-valued, tracked by autograd; returned) so that -dE/d(strain) is the virial.
    Positions and cell in Angstrom; the vectors in Angstrom, in the dtype of ``pos``.
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
    """Wraps an energy model (``forward(data) -> data`` writing ``atomic_energy``; its attribute
    ``num_message_layers`` says how many cutoffs away an atom's energy reaches).

    :meth:`energy_and_derivatives` is the one definition of energy, forces and virial: training
    and evaluation reach it through :meth:`forward`, the exported LAMMPS model and the ASE
    calculator through :class:`mlip.deploy.export.LammpsModel`. An energy model with output
    heads (:mod:`mlip.nn.heads`) also writes their fields (``output_fields``: charges, dipole,
    polarizability, generic outputs), which pass through unchanged.
    """

    output_fields: List[str]  # typed for TorchScript (empty for an energy-only model)

    def __init__(self, energy_model: nn.Module, type_names: List[str], r_max: float):
        super().__init__()
        self.energy_model = energy_model
        self.type_names = list(type_names)
        self.r_max = float(r_max)
        # message-passing layers: an atom's energy depends on every atom within
        # num_message_layers * r_max (what a domain decomposition must hold as ghost atoms)
        self.num_message_layers = int(energy_model.num_message_layers)
        # fields that keep float64 when the network runs in another dtype: the registry's rule,
        # the one to_device applies to a batch (a list attribute, so TorchScript can read it)
        self.float64_fields: List[str] = [name for name, field in K.FIELDS.items() if field.float64]
        # what the energy model's output heads (mlip.nn.heads) write besides the energy: charges,
        # dipole, polarizability, generic outputs; [] for an energy-only model
        self.output_fields: List[str] = list(getattr(energy_model, "output_fields", []))

    def forward(self, data: Dict[str, torch.Tensor], compute_forces: bool = True, compute_stress: bool = False,
                training: bool = False) -> Dict[str, torch.Tensor]:
        """``data`` (a graph or a batch) plus ``total_energy`` [B] and ``atomic_energy`` [N, 1]
        (eV); with ``compute_forces`` or ``compute_stress``, ``forces`` [N, 3] (eV/A); with
        ``compute_stress``, ``virial`` [B, 3, 3] (eV) and ``stress`` [B, 3, 3] (eV/A^3, ASE sign:
        positive = tensile; zero for a structure without a cell). ``training`` keeps the
        derivative graph, so that a force or stress loss reaches the weights."""
        data = self.energy_and_derivatives(data, compute_forces or compute_stress, compute_stress, training)
        if compute_stress:
            virial = data[K.VIRIAL]
            volume = torch.linalg.det(data[K.CELL]).abs()
            # non-periodic structures have no volume: report zero stress rather than inf
            safe = torch.where(volume > 0, volume, torch.ones_like(volume))
            data[K.STRESS] = torch.where((volume > 0).view(-1, 1, 1), -virial / safe.view(-1, 1, 1),
                                         torch.zeros_like(virial))
        return data

    def energy_and_derivatives(self, data: Dict[str, torch.Tensor], compute_forces: bool, compute_virial: bool,
                               create_graph: bool = False, network_dtype: Optional[torch.dtype] = None,
                               counted_atoms: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Energies, and forces and virial by automatic differentiation, of a graph or batch.

        Returns a new dict: ``data`` plus ``edge_vectors``, what the energy model adds,
        ``total_energy`` [B] (eV; the per-structure sum of ``atomic_energy`` [N, 1], which the
        models' ScaleShift keeps float64), with ``compute_forces`` or ``compute_virial``
        ``forces`` [N, 3] = -dE/dpos (eV/A), and with ``compute_virial`` ``virial`` [B, 3, 3] =
        -dE/d(strain) (eV). ``create_graph`` keeps the derivative graph (training).

        Edge vectors and strain are computed in the dtype of ``pos`` and ``cell``, and forces and
        virial come back in it. ``network_dtype`` then casts the energy model's input to the
        network's dtype (every floating field but those the registry declares float64, as
        :func:`mlip.data.graph.to_device` does): the exported model passes float64 geometry
        and a float32 network this way, so large coordinates lose nothing before the edge
        vectors are formed. With ``network_dtype`` None the input is used as it is (training).

        ``counted_atoms`` [N] (bool, one structure only): the atoms whose energies make the total
        that is differentiated, the others supplying positions only: one MPI rank's share of a
        domain decomposition (:mod:`mlip.deploy.domain`), whose forces on ghost atoms are then
        the share LAMMPS sends to their owners. None: all atoms.
        """
        data = dict(data)
        pos = data[K.POSITIONS]
        cell = data[K.CELL]
        batch = data[K.BATCH]
        edge_index = data[K.EDGE_INDEX]
        num_structures = cell.shape[0]
        if (compute_forces or compute_virial) and not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)  # a leaf of our own: the caller's tensor is left alone
        vectors, strain = strained_edge_vectors(pos, cell, batch, edge_index, data[K.EDGE_CELL_SHIFT], compute_virial)
        data[K.EDGE_VECTORS] = vectors
        if network_dtype is not None:
            data = {key: value.to(network_dtype) if value.is_floating_point() and key not in self.float64_fields
                    else value for key, value in data.items()}
        data = self.energy_model(data)
        atomic_energy = data[K.ATOMIC_ENERGY]
        if counted_atoms is not None:
            # where, not a product: an uncounted atom's energy never enters, even if not finite
            total = torch.where(counted_atoms.view(-1, 1), atomic_energy,
                                torch.zeros_like(atomic_energy)).sum().view(1)
        elif num_structures == 1:
            # a plain sum; also keeps a traced one-structure graph free of a scatter into one
            # element, which inductor's vectorised CPU code generation cannot compile (torch 2.13)
            total = atomic_energy.sum().view(1)
        else:
            total = torch.zeros(num_structures, dtype=atomic_energy.dtype, device=atomic_energy.device)
            total = total.index_add(0, batch, atomic_energy.squeeze(-1))
        data[K.TOTAL_ENERGY] = total
        if compute_forces or compute_virial:
            forces, virial = forces_and_virial(total, pos, strain, create_graph)
            data[K.FORCES] = forces
            if virial is not None:
                data[K.VIRIAL] = virial
        return data
