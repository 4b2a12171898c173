"""Run in NequIP's environment (../shared/bench/setup_peers.sh) by tests/test_nequip_compat.py:
build NequIP 0.19's ``NequIPGNNModel`` as a ``model: _target_: nequip.model.NequIPGNNModel``
config does, move its weights off their initial values, evaluate one molecule, and save
everything the test needs to rebuild the same function in mlip.

Usage: python nequip_model.py OUT.npz JSON

JSON holds the model settings: ``num_layers``, ``num_features``, ``l_max``, ``parity``,
``radial_mlp_width``, ``radial_mlp_depth``, ``readout_hidden`` (one hidden layer of that width
in the readout), ``num_bessels``, ``polynomial_cutoff_p``, ``r_max``, ``avg_num_neighbors``,
``scale``, ``shifts`` (one per type; the types are H, C, N, O) and ``seed``."""
import json
import sys

import numpy as np
import torch
from ase import Atoms

from nequip.data import AtomicDataDict
from nequip.data._nl import compute_neighborlist_
from nequip.data.ase import from_ase
from nequip.model.nequip_models import NequIPGNNModel
from nequip.utils.global_state import set_global_state

out_path, settings = sys.argv[1], json.loads(sys.argv[2])
set_global_state()
torch.set_default_dtype(torch.float64)
numbers, names = [1, 6, 7, 8], ["H", "C", "N", "O"]
model = NequIPGNNModel(
    seed=settings["seed"], model_dtype="float64", type_names=names, r_max=settings["r_max"],
    num_layers=settings["num_layers"], l_max=settings["l_max"], parity=settings["parity"],
    num_features=settings["num_features"], radial_mlp_depth=settings["radial_mlp_depth"],
    radial_mlp_width=settings["radial_mlp_width"], num_bessels=settings["num_bessels"],
    polynomial_cutoff_p=settings["polynomial_cutoff_p"], readout_mlp_hidden_layers_depth=1,
    readout_mlp_hidden_layers_width=settings["readout_hidden"], avg_num_neighbors=settings["avg_num_neighbors"],
    per_type_energy_scales=settings["scale"], per_type_energy_shifts=dict(zip(names, settings["shifts"])))
torch.manual_seed(settings["seed"])
with torch.no_grad():  # away from the initial scales, so that every block shows in the result
    for p in model.parameters():
        p.add_(0.3 * torch.randn_like(p) * (p.abs().mean() + 1e-3))
rng = np.random.default_rng(settings["seed"])
atoms = Atoms(numbers=[1, 6, 7, 8, 6, 1, 8], positions=rng.normal(size=(7, 3)) * 1.1)
data = compute_neighborlist_(from_ase(atoms), r_max=settings["r_max"])
data[AtomicDataDict.ATOM_TYPE_KEY] = torch.tensor([numbers.index(int(z)) for z in atoms.numbers], dtype=torch.long)
result = model(AtomicDataDict.batched_from_list([data]))
arrays = {"positions": atoms.positions, "numbers": atoms.numbers,
          "energy": result[AtomicDataDict.TOTAL_ENERGY_KEY].detach().numpy().reshape(-1),
          "forces": result[AtomicDataDict.FORCE_KEY].detach().numpy()}
# the energy model's own names (without the wrappers' prefixes), e.g. layer0_convnet.conv.linear_1.weight
for name, module in model.named_modules():
    if name.endswith("type_embed"):
        prefix = name[:-len("type_embed")]
        break
for k, v in model.state_dict().items():
    if k.startswith(prefix):
        arrays["state/" + k[len(prefix):]] = v.detach().numpy()
arrays.update({"numel/" + k[len(prefix):]: np.array(p.numel()) for k, p in model.named_parameters()
               if p.requires_grad and k.startswith(prefix)})


def irreps_array(irreps):
    return np.array([[mul, ir.l, ir.p] for mul, ir in irreps]).reshape(-1, 3)


for t in range(settings["num_layers"]):
    conv = model.get_submodule(prefix + f"layer{t}_convnet.conv")
    arrays[f"feature_in_{t}"] = irreps_array(conv.linear_1.irreps_in)
    # the message's paths in NequIP's order (input, harmonic, output slot), the sorted output
    # slots, the second linear's input (the slots simplified) and the gate's input
    arrays[f"instructions_{t}"] = np.array([[i.i_in1, i.i_in2, i.i_out] for i in conv.tp_scatter.tp.instructions])
    arrays[f"mid_{t}"] = irreps_array(conv.tp_scatter.irreps_mid)
    arrays[f"linear2_in_{t}"] = irreps_array(conv.linear_2.irreps_in)
    arrays[f"conv_out_{t}"] = irreps_array(conv.linear_2.irreps_out)
    arrays[f"sh_{t}"] = irreps_array(conv.tp_scatter.irreps_edge_attr)
    arrays[f"has_sc_{t}"] = np.array(conv.sc is not None)
np.savez(out_path, **arrays)
