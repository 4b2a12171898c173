"""Run with mlip d1326de (before defaults version 2): a small MACE model file of the default
architecture and its energy/forces on one molecule, for tests/test_model_defaults.py."""
import sys
import numpy as np, torch
from ase import Atoms
from mlip.checkpoint import model_record, save_model_file
from mlip.nn import build_model
from mlip.data import collate, frame_to_graph, frames_from_atoms_list, TypeMapper
from mlip.data import keys as K

out = sys.argv[1]
torch.manual_seed(0)
types = ["H", "C", "O"]
cfg = dict(architecture="mace", r_max=3.0, channels=4, max_L=1, l_max=2, correlation=3, num_interactions=2,
           radial_hidden=8, readout_hidden=4, atomic_energy_shifts=[-13.6, -1029.0, -2041.0])
pot = build_model(cfg, types, torch.float64)
rec = model_record(cfg, types, "float64", pot.state_dict())
assert "defaults_version" not in rec
save_model_file(out + "/legacy_mace_model.pt", rec)
rng = np.random.default_rng(0)
atoms = Atoms(numbers=[1, 6, 8, 6, 1, 1], positions=rng.normal(size=(6, 3)) * 1.0)
g = collate([frame_to_graph(f, TypeMapper(types), 3.0, torch.float64) for f in frames_from_atoms_list([atoms])])
r = pot(g, compute_forces=True)
np.savez(out + "/legacy_mace_model_reference.npz", numbers=atoms.numbers, positions=atoms.positions,
         energy=r[K.TOTAL_ENERGY].detach().numpy(), forces=r[K.FORCES].detach().numpy())
print(sum(p.numel() for p in pot.parameters()), float(r[K.TOTAL_ENERGY]))
