"""Names of the fields in the flat ``Dict[str, Tensor]`` that every module reads and writes,
each declared once with what it is attached to.

Defined once here so that a typo is an AttributeError, not a silent new key. :data:`FIELDS`
says, per name, whether a field is per atom, per edge, per pair of opposite edges or per
structure, and whether its values index atoms, edges, pairs or structures; batching
(:func:`mlip.data.graph.collate`) and device moves (:func:`mlip.data.graph.to_device`) read
it, so a new field is declared here and nowhere else in them. Units: positions and cells in
Angstrom, energies in eV, forces in eV/A, stress in eV/A^3 (ASE sign: positive is tensile),
virial in eV, charges in e (elementary charges), dipoles in e*A, polarizabilities in A^3 (the
polarizability volume alpha / (4 pi eps0); 1 a.u. = 0.1481847 A^3).
"""
from dataclasses import dataclass
from typing import Dict, Optional


@dataclass(frozen=True)
class Field:
    """One named tensor of a graph or batch."""

    name: str
    per: str                         # "atom", "edge", "pair" or "structure": what axis 0 counts
    index_of: Optional[str] = None   # values are indices of atoms / edges / pairs / structures
    cat_dim: int = 0                 # the axis that batching concatenates
    optional: bool = False           # a batch keeps it only if every graph has it
    float64: bool = False            # stays float64 whatever the model's dtype
    # a label of model-dependent width (the generic outputs): a graph without it counts, when
    # batched with graphs that have it, as zeros of their shape (its weight field is 0 anyway)
    fill_missing: bool = False


FIELDS: Dict[str, Field] = {}


def _field(name: str, per: str, **kw) -> str:
    FIELDS[name] = Field(name, per, **kw)
    return name


# --- graph inputs -------------------------------------------------------------------------
POSITIONS = _field("pos", "atom")  # [N, 3] float, Angstrom
ATOM_TYPES = _field("atom_types", "atom")  # [N] int64, index into the model's type_names
CELL = _field("cell", "structure")  # [B, 3, 3] float, rows are lattice vectors a, b, c (zeros if none)
PBC = _field("pbc", "structure")  # [B, 3] bool
# [2, E] int64; row 0 centre (receiver) i, row 1 neighbour (sender) j
EDGE_INDEX = _field("edge_index", "edge", index_of="atom", cat_dim=1)
# [E, 3] float, integer-valued; r_ij = pos[j] - pos[i] + shift @ cell
EDGE_CELL_SHIFT = _field("edge_cell_shift", "edge")
BATCH = _field("batch", "atom", index_of="structure")  # [N] int64, structure index of each atom
NUM_ATOMS = _field("num_atoms", "structure")  # [B] int64, atoms per structure
# optional: opposite edges (i, j, S) and (j, i, -S) grouped into pairs, so that per-length work
# (radial basis, radial MLP) runs once per pair; models fall back to per-edge work without them
# [E] int64, pair of each edge (0 <= p < P)
EDGE_PAIR = _field("edge_pair", "edge", index_of="pair", optional=True)
PAIR_EDGE = _field("pair_edge", "pair", index_of="edge", optional=True)  # [P] int64, one edge of each pair
# [B] float, e: total charge of each structure (atoms.info["charge"]; 0 when not given). Read by
# the dipole head only (charges sum to it); optional, so the exported model passes it on when given
TOTAL_CHARGE = _field("total_charge", "structure", optional=True)
# [1] int64, one graph only: the last message-passing layer uses only edges[:, :k], those whose
# receivers are the atoms whose energies count (set by mlip.deploy.domain for one MPI rank's
# graph, whose counted atoms and their edges come first); models use every edge without it
LAST_LAYER_EDGES = _field("last_layer_edges", "structure")

# --- derived per-edge / per-node quantities -----------------------------------------------
EDGE_VECTORS = _field("edge_vectors", "edge")  # [E, 3]
EDGE_LENGTHS = _field("edge_lengths", "edge")  # [E]
EDGE_SH = _field("edge_sh", "edge")  # [E, (l_max+1)^2] spherical harmonics of edge directions
EDGE_RADIAL = _field("edge_radial", "edge")  # [E, num_bessel] radial basis times cutoff envelope
# [N, D, C] equivariant features (irrep components x channels)
NODE_FEATURES = _field("node_features", "atom")

# --- model outputs ------------------------------------------------------------------------
ATOMIC_ENERGY = _field("atomic_energy", "atom")  # [N, 1] eV
TOTAL_ENERGY = _field("total_energy", "structure")  # [B] eV
FORCES = _field("forces", "atom")  # [N, 3] eV/A
VIRIAL = _field("virial", "structure")  # [B, 3, 3] eV, -dE/d(strain)
STRESS = _field("stress", "structure")  # [B, 3, 3] eV/A^3, ASE sign
# output heads (mlip.nn.heads), written only by a model that has the head
CHARGES = _field("charges", "atom")  # [N] e, per-atom charges (sum over a structure = total_charge)
DIPOLE = _field("dipole", "structure")  # [B, 3] e*A, sum_i q_i r_i + sum_i p_i
POLARIZABILITY = _field("polarizability", "structure")  # [B, 3, 3] A^3, symmetric
STRUCTURE_OUTPUT = _field("structure_output", "structure")  # [B, D] generic irreps output (e3nn order)
ATOM_OUTPUT = _field("atom_output", "atom")  # [N, D] generic per-atom irreps output (e3nn order)

# --- labels (references read from data) ---------------------------------------------------
REF_ENERGY = _field("ref_energy", "structure", float64=True)  # [B] eV
REF_FORCES = _field("ref_forces", "atom")  # [N, 3] eV/A
REF_STRESS = _field("ref_stress", "structure")  # [B, 3, 3] eV/A^3
ENERGY_WEIGHT = _field("energy_weight", "structure")  # [B] 0 where a structure has no energy label
FORCES_WEIGHT = _field("forces_weight", "atom")  # [N] 0 where forces are missing
STRESS_WEIGHT = _field("stress_weight", "structure")  # [B] 0 where stress is missing
REF_DIPOLE = _field("ref_dipole", "structure")  # [B, 3] e*A
DIPOLE_WEIGHT = _field("dipole_weight", "structure")  # [B] 0 where the dipole is missing
REF_POLARIZABILITY = _field("ref_polarizability", "structure")  # [B, 3, 3] A^3
POLARIZABILITY_WEIGHT = _field("polarizability_weight", "structure")  # [B] 0 where missing
# generic outputs: the label's width is the file's (graphs without the label carry none)
REF_STRUCTURE_OUTPUT = _field("ref_structure_output", "structure", fill_missing=True)  # [B, D]
STRUCTURE_OUTPUT_WEIGHT = _field("structure_output_weight", "structure")  # [B]
REF_ATOM_OUTPUT = _field("ref_atom_output", "atom", fill_missing=True)  # [N, D]
ATOM_OUTPUT_WEIGHT = _field("atom_output_weight", "atom")  # [N]
