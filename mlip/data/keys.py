"""Names of the fields in the flat ``Dict[str, Tensor]`` that every module reads and writes.

Defined once here so that a typo is an AttributeError, not a silent new key. Units: positions
and cells in Angstrom, energies in eV, forces in eV/A, stress in eV/A^3 (ASE sign: positive is
tensile), virial in eV.
"""

# --- graph inputs -------------------------------------------------------------------------
POSITIONS = "pos"                  # [N, 3] float, Angstrom
ATOM_TYPES = "atom_types"          # [N] int64, index into the model's type_names
CELL = "cell"                      # [B, 3, 3] float, rows are lattice vectors a, b, c (zeros if none)
PBC = "pbc"                        # [B, 3] bool
EDGE_INDEX = "edge_index"          # [2, E] int64; row 0 centre (receiver) i, row 1 neighbour (sender) j
EDGE_CELL_SHIFT = "edge_cell_shift"  # [E, 3] float, integer-valued; r_ij = pos[j] - pos[i] + shift @ cell
BATCH = "batch"                    # [N] int64, structure index of each atom
NUM_ATOMS = "num_atoms"            # [B] int64, atoms per structure
# optional: opposite edges (i, j, S) and (j, i, -S) grouped into pairs, so that per-length work
# (radial basis, radial MLP) runs once per pair; models fall back to per-edge work without them
EDGE_PAIR = "edge_pair"            # [E] int64, pair of each edge (0 <= p < P)
PAIR_EDGE = "pair_edge"            # [P] int64, one edge of each pair

# --- derived per-edge / per-node quantities -----------------------------------------------
EDGE_VECTORS = "edge_vectors"      # [E, 3]
EDGE_LENGTHS = "edge_lengths"      # [E]
EDGE_SH = "edge_sh"                # [E, (l_max+1)^2] spherical harmonics of edge directions
EDGE_RADIAL = "edge_radial"        # [E, num_bessel] radial basis times cutoff envelope
NODE_FEATURES = "node_features"    # [N, D, C] equivariant features (irrep components x channels)

# --- model outputs ------------------------------------------------------------------------
ATOMIC_ENERGY = "atomic_energy"    # [N, 1] eV
TOTAL_ENERGY = "total_energy"      # [B] eV
FORCES = "forces"                  # [N, 3] eV/A
VIRIAL = "virial"                  # [B, 3, 3] eV, -dE/d(strain)
STRESS = "stress"                  # [B, 3, 3] eV/A^3, ASE sign

# --- labels (references read from data) ---------------------------------------------------
REF_ENERGY = "ref_energy"          # [B] eV
REF_FORCES = "ref_forces"          # [N, 3] eV/A
REF_STRESS = "ref_stress"          # [B, 3, 3] eV/A^3
ENERGY_WEIGHT = "energy_weight"    # [B] 0 where a structure has no energy label
FORCES_WEIGHT = "forces_weight"    # [N] 0 where forces are missing
STRESS_WEIGHT = "stress_weight"    # [B] 0 where stress is missing

PER_ATOM_KEYS = (POSITIONS, ATOM_TYPES, BATCH, REF_FORCES, FORCES_WEIGHT)
PER_STRUCTURE_KEYS = (CELL, PBC, NUM_ATOMS, REF_ENERGY, REF_STRESS, ENERGY_WEIGHT, STRESS_WEIGHT)
PER_EDGE_KEYS = (EDGE_CELL_SHIFT,)
