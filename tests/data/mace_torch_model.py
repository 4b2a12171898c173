"""Run in mace-torch's environment (../shared/bench/setup_peers.sh) by tests/test_mace_compat.py:
build mace-torch 0.3's MACE as ``mace_run_train --model MACE`` does, move its weights off their
initial values, evaluate one molecule, and save everything the test needs to rebuild the same
function in mlip. Usage: python mace_torch_model.py CHANNELS SEED OUT.npz

``build_mace`` and ``model_arrays`` are shared with mace_torch_steps.py (the training test)."""
import sys
from typing import Dict

import numpy as np
import torch
from ase import Atoms
from e3nn import o3
from mace import data, modules
from mace.tools import torch_geometric, utils

Z_TABLE = [1, 6, 7, 8]
R_MAX = 4.0


def build_mace(channels: int, seed: int) -> torch.nn.Module:
    """The ScaleShiftMACE of the compat tests with mace-torch's own initial weights (float64)."""
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(seed)
    return modules.ScaleShiftMACE(
        r_max=R_MAX, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=2, num_elements=4, hidden_irreps=o3.Irreps(f"{channels}x0e+{channels}x1o"),
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.array([-13.6, -1029.0, -1484.0, -2041.0]),
        avg_num_neighbors=3.0, atomic_numbers=Z_TABLE, correlation=3, gate=torch.nn.functional.silu,
        radial_MLP=[16, 16, 16], atomic_inter_scale=1.3, atomic_inter_shift=0.0)


def model_arrays(model: torch.nn.Module) -> Dict[str, np.ndarray]:
    """The weights (``state/``), trained parameter counts (``numel/``) and message paths and
    irreps per layer that tests/test_mace_compat.py's ``_load_mace_torch_weights`` reads."""
    # copies, not views: a model trained afterwards (mace_torch_steps.py) would change them
    arrays = {"state/" + k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    arrays.update({"numel/" + k: np.array(p.numel()) for k, p in model.named_parameters() if p.requires_grad})
    for t, inter in enumerate(model.interactions):
        # the message's paths in mace-torch's order (input, harmonic, output slot) and the irreps
        arrays[f"instructions_{t}"] = np.array([[i.i_in1, i.i_in2, i.i_out] for i in inter.conv_tp.instructions])
        arrays[f"mid_irreps_{t}"] = np.array([[ir.l, ir.p] for _, ir in inter.conv_tp.irreps_out])
        arrays[f"node_irreps_{t}"] = np.array([[ir.l, ir.p] for _, ir in inter.conv_tp.irreps_in1])
    return arrays


def main() -> None:
    channels, seed, out_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    model = build_mace(channels, seed)
    with torch.no_grad():  # away from the initial scales, so that every block shows in the result
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p) * (p.abs().mean() + 1e-3))
    rng = np.random.default_rng(seed)
    atoms = Atoms(numbers=[1, 6, 7, 8, 6, 1, 8], positions=rng.normal(size=(7, 3)) * 1.1)
    batch = torch_geometric.batch.Batch.from_data_list([data.AtomicData.from_config(
        data.config_from_atoms(atoms), z_table=utils.AtomicNumberTable(Z_TABLE), cutoff=R_MAX)])
    result = model(batch.to_dict(), compute_force=True)
    arrays = {"positions": atoms.positions, "numbers": atoms.numbers, "energy": result["energy"].detach().numpy(),
              "forces": result["forces"].detach().numpy()}
    arrays.update(model_arrays(model))
    np.savez(out_path, **arrays)


if __name__ == "__main__":
    main()
