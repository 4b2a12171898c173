"""The LAMMPS contract: inputs built the way pair_style nequip builds them (ghost atoms mapped to
their owners through cell shifts, rotated triclinic box, shuffled local order, full list pruned
to r <= r_max) give the energy, per-atom energies, forces and virial of the ASE calculator."""
import numpy as np
import pytest
import torch

from test_deploy_common import (TYPE_NAMES, lammps_emulated_inputs, lammps_outputs, make_checkpoint, molecule,
                                triclinic)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from mlip.cli import main

    d = tmp_path_factory.mktemp("lmp")
    ckpt = make_checkpoint(d / "model.pth", dtype="float32", seed=1)
    out64 = str(d / "model64.nequip.pth")
    out32 = str(d / "model32.nequip.pth")
    assert main(["export", ckpt, "-o", out64, "--dtype", "float64"]) == 0
    assert main(["export", ckpt, "-o", out32]) == 0
    return {"float64": out64, "float32": out32}


def _plugin_load(path):
    """torch::jit::load with the plugin's metadata keys, eval(), freeze (as coeff() does)."""
    meta = {k: "" for k in ("r_max", "per_edge_type_cutoff", "type_names", "num_types", "allow_tf32")}
    module = torch.jit.load(path, map_location="cpu", _extra_files=meta)
    meta = {k: v.decode() if isinstance(v, bytes) else v for k, v in meta.items()}
    assert int(meta["allow_tf32"]) in (0, 1)          # std::stoi: must be present
    assert meta["per_edge_type_cutoff"] == ""        # absent: one cutoff r_max for all pairs
    module.eval()
    if hasattr(module, "training"):
        module = torch.jit.freeze(module)
    return module, float(meta["r_max"]), meta["type_names"].split(), int(float(meta["num_types"]))


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-9), ("float32", 1e-4)])
@pytest.mark.parametrize("kind", ["triclinic", "small-triclinic", "molecule"])
def test_lammps_contract_matches_ase(exported, dtype, rtol, kind):
    from mlip import MLIPCalculator

    module, r_max, type_names, num_types = _plugin_load(exported[dtype])
    assert type_names == TYPE_NAMES and num_types == 2
    if kind == "molecule":
        atoms = molecule(seed=2)
    else:
        atoms = triclinic(seed=4, a=3.4 if kind == "small-triclinic" else 5.0)
        if kind == "triclinic":
            atoms = atoms.repeat((2, 1, 1))
    # LAMMPS types in alphabetical order ("C" = 1, "Si" = 2), model types in TYPE_NAMES order
    inputs, info = lammps_emulated_inputs(atoms, r_max, ["C", "Si"], type_names, seed=5)
    if kind != "molecule":
        assert info["num_ghosts"] > 0
    for _ in range(3):  # the profiling executor specialises on the first calls: results must not change
        lmp = lammps_outputs(module(dict(inputs)))

    calc = MLIPCalculator(exported[dtype])
    atoms.calc = calc
    e_ref = atoms.get_potential_energy()
    f_ref = atoms.get_forces()
    eatom_ref = atoms.get_potential_energies()
    order, q = info["order"], info["rotation"]
    scale_e = max(1.0, abs(e_ref))
    scale_f = max(1.0, np.abs(f_ref).max())
    assert abs(lmp["energy"] - e_ref) <= rtol * scale_e
    np.testing.assert_allclose(lmp["eatom"], eatom_ref[order], atol=rtol * max(1.0, np.abs(eatom_ref).max()))
    # forces come back in LAMMPS' rotated frame, one row per local slot
    np.testing.assert_allclose(lmp["forces"] @ q.T, f_ref[order], atol=rtol * scale_f)
    if kind != "molecule":
        s_ref = atoms.get_stress(voigt=False)                      # ASE sign
        v = lmp["virial"]                                          # xx yy zz xy xz yz, LAMMPS convention
        virial = np.array([[v[0], v[3], v[4]], [v[3], v[1], v[5]], [v[4], v[5], v[2]]])
        volume = abs(np.linalg.det(info["cell"]))
        # LAMMPS pressure (virial part) = virial / V; ASE stress = -pressure, rotated back
        stress_lmp_in_ase_frame = q @ (-virial / volume) @ q.T
        np.testing.assert_allclose(stress_lmp_in_ase_frame, s_ref, atol=rtol * max(1.0, np.abs(s_ref).max()))
        # virial = sum over atoms of r (x) f would not hold with ghosts; check -dE/de instead, via
        # the energy of a strained copy (one component, central difference)
        if dtype == "float64":
            h = 1e-5
            energies = []
            for sign in (1, -1):
                a = atoms.copy()
                strain = np.eye(3)
                strain[0, 0] += sign * h
                a.set_cell(atoms.cell.array @ strain, scale_atoms=True)
                a.calc = calc
                energies.append(a.get_potential_energy())
            de_dexx = (energies[0] - energies[1]) / (2 * h)
            virial_ase_frame = q @ virial @ q.T
            assert abs(-de_dexx - virial_ase_frame[0, 0]) < 1e-6 * max(1.0, abs(de_dexx))
