"""What each model hyperparameter means, for ``mlip train --show-keys``: one line per key, units
included. A key means the same in every architecture unless an ``"<architecture>.<key>"`` entry
says otherwise. tests/test_config.py checks that every registered architecture's keys are here."""
from typing import Dict

HYPERPARAMETER_DOCS: Dict[str, str] = {
    "r_max": "cutoff radius in Angstrom: atoms closer than this exchange messages (the one place the cutoff is set)",
    "num_layers": "number of interaction (message-passing) blocks; receptive field num_layers x r_max",
    "num_interactions": "number of MACE layers (interaction + product basis); receptive field num_interactions x r_max",
    "channels": "features per irrep (multiplicity of every hidden irrep); cost grows about quadratically",
    "l_max": "highest rotation order of the hidden features and the edge spherical harmonics",
    "mace.l_max": "highest rotation order of the edge spherical harmonics and the A-basis (mace-torch's max_ell)",
    "max_L": "highest rotation order of the hidden features passed between layers (0 = invariant MACE)",
    "correlation": "order of the symmetric contraction: body order correlation + 1 per layer (1-3)",
    "parity": "O(3): hidden features of both parities (0e, 0o, 1e, 1o, ...) if true, else SO(3) only",
    "mace.parity": "O(3) with natural parity (0e, 1o, 2e, ...) if true, else SO(3) only",
    "num_bessel": "number of Bessel radial basis functions on [0, r_max]",
    "cutoff_p": "order p of the polynomial envelope that brings the radial basis smoothly to zero at r_max",
    "radial_hidden": "units per hidden layer of the radial MLP (edge length -> per-path weights)",
    "radial_depth": "hidden layers of the radial MLP",
    "readout_hidden": "hidden units of the scalar readout MLP (per-atom energy)",
    "nonlinear_readout": "last-layer readout is an MLP of readout_hidden units (true) or linear (false)",
    "avg_num_neighbors": "summed messages are divided by it (edges per atom); computed from the training data when not given",
    "atomic_energy_scales": "per-species scale of the network's per-atom output (eV); the RMS training force x 1 A when not given",
    "atomic_energy_shifts": "per-species energy added per atom (eV); from data.E0s when not given",
    "message_backend": "message-step kernel: auto (fused C++ on CPU, Triton on CUDA), torch, cpu or triton",
    "self_connection": "species: a linear map per species; embedding: NequIP's bilinear map with the species embedding",
    "dipole": "add a dipole head (charges summing to the total charge; e*Angstrom); labels atoms.info['dipole']",
    "atomic_dipoles": "the dipole head adds per-atom dipole vectors to the charges' dipole",
    "polarizability": "add a polarizability head (symmetric 3x3, Angstrom^3); labels atoms.info['polarizability']",
    "structure_output": "irreps of a generic per-structure output head, e.g. '1x0e+1x1o' ('' = none)",
    "atom_output": "irreps of a generic per-atom output head ('' = none)",
    "nequip_compat": "reproduce NequIP 0.19's NequIPGNNModel: its blocks, parameter count, normalisations and initialisation (no first-block self-connection, SiLU gates, no 1/sqrt(2) on the sum, fixed Bessel frequencies, uniform MLP init); for side-by-side comparisons",
    "product_paths": "MACE product basis: 'mace' (mace-torch's redundant path set; the default, learns more per epoch) or 'independent' (a linearly independent basis of the same functions, a few % cheaper; the default before defaults version 2, and what older model files without the key mean)",
    "product_weights": "MACE product-basis weights: 'normalised' (normal(0,1) times 1/sqrt(K) in the forward pass) or 'mace' (normal(0,1)/K, no factor); default: as product_paths",
    "first_layer_species_map": "MACE: map the first layer's A-basis per species (mace-torch's skip_tp); default: as mace_compat",
    "mace_compat": "reproduce mace-torch 0.3's blocks, parameter count and initialisation (first-layer per-species map, fixed Bessel frequencies, e3nn's normalisations); slower, for side-by-side comparisons",
}


def hyperparameter_doc(architecture: str, key: str) -> str:
    """The meaning of ``key`` in ``architecture`` ('' when undocumented)."""
    return HYPERPARAMETER_DOCS.get(f"{architecture}.{key}", HYPERPARAMETER_DOCS.get(key, ""))
