"""``mlip validate`` as a whole: the runner on an analytic model with a reference of its closed-form
values (every row passes; a wrong reference value fails), molecules and user structures, and the
command line on a TorchScript model through MLIPCalculator."""
import json
import os
from typing import Dict

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from mlip.validate.reference import load_reference
from mlip.validate.report import failed, format_table
from mlip.validate.runner import Settings, run_validation
from mlip.validate.units import EV_PER_A2_IN_J_PER_M2, EV_PER_A3_IN_GPA
from test_validate_helpers import SpringCalculator

A, K, EPS = 4.0, 2.0, 0.5


def spring_reference(tmp_path, c11_factor: float = 1.0) -> str:
    """The fcc spring model's closed-form values as a reference file (a started 3 % too large)."""
    gpa = EV_PER_A3_IN_GPA
    text = f"""
source: "closed form of the nearest-neighbour spring model"
systems:
  springs:
    structure: {{bulk: {{name: Cu, crystalstructure: fcc, a: {A * 1.03}}}}}
    phonons: {{supercell: [3, 3, 3], mesh: 6}}
    md: {{temperatures: [300], time_ps: 0.1}}
    properties:
      lattice_constant: {{value: {A}, unit: Angstrom, tolerance: 0.001}}
      volume_per_atom: {{value: {A ** 3 / 4}, unit: Angstrom^3, tolerance: 0.001}}
      bulk_modulus: {{value: {4 * K / (3 * A) * gpa}, unit: GPa, tolerance: 0.01}}
      C11: {{value: {2 * K / A * gpa * c11_factor}, unit: GPa, tolerance: 0.001}}
      C12: {{value: {K / A * gpa * 10}, unit: kbar, tolerance: 0.001}}
      C44: {{value: {K / A}, unit: eV/A^3, tolerance: 0.001}}
      vacancy_formation_energy: {{value: {6 * EPS}, unit: eV, tolerance: 1.0e-4, supercell: [2, 2, 2]}}
      surface_energy_100: {{value: {4 * EPS / A ** 2 * EV_PER_A2_IN_J_PER_M2}, unit: J/m^2, miller: [1, 0, 0],
                           layers: 6, tolerance: 1.0e-4}}
"""
    path = tmp_path / "springs.yaml"
    path.write_text(text)
    return str(path)


def springs():
    return SpringCalculator(k=K, r0=A / np.sqrt(2.0), rc=3.4, eps=EPS)


def test_every_closed_form_value_passes(tmp_path):
    out = tmp_path / "out"
    settings = Settings(out_dir=str(out), phonon_backend="numpy", log=None, species=["Cu"])
    rows = run_validation(springs(), load_reference(spring_reference(tmp_path)), settings=settings)
    table = format_table(rows)
    by_name = {r.property: r for r in rows}
    for name in ("lattice_constant", "volume_per_atom", "bulk_modulus", "C11", "C12", "C44",
                 "vacancy_formation_energy", "surface_energy_100", "relaxation (cell + positions)",
                 "elastic: Born stability", "phonons: imaginary modes", "MD NVT 300 K, 0.1 ps"):
        assert by_name[name].status == "PASS", table
    assert not failed(rows), table
    # values are shown in the reference's own units
    assert by_name["C12"].unit == "kbar" and by_name["C12"].model == pytest.approx(K / A * EV_PER_A3_IN_GPA * 10,
                                                                                   rel=1e-3)
    assert by_name["C44"].unit == "eV/A^3" and by_name["C44"].model == pytest.approx(K / A, rel=1e-3)
    assert by_name["bulk_modulus_derivative"].status == "INFO"
    assert "no check failed" in table.splitlines()[-1]
    for name in ("springs_eos.png", "springs_phonons.png", "springs_md.png"):
        assert (out / name).stat().st_size > 1000
    assert sorted(settings.files) == sorted(str(out / n) for n in ("springs_eos.png", "springs_phonons.png",
                                                                   "springs_md.png"))


def test_a_wrong_reference_value_fails(tmp_path):
    settings = Settings(phonons=False, log=None, md_time_ps=0.02)
    rows = run_validation(springs(), load_reference(spring_reference(tmp_path, c11_factor=1.2)), settings=settings)
    c11 = next(r for r in rows if r.property == "C11")
    assert c11.status == "FAIL" and c11.rel_error == pytest.approx(1 / 6, rel=1e-3)  # 1/1.2 - 1
    assert failed(rows)
    assert next(r for r in rows if r.property == "C12").status == "PASS"


def test_systems_of_species_the_model_lacks_are_skipped(tmp_path):
    rows = run_validation(springs(), load_reference(spring_reference(tmp_path)),
                          settings=Settings(log=None, species=["Si"]))
    assert len(rows) == 1 and rows[0].status == "SKIP" and "no Cu" in rows[0].note
    assert not failed(rows)


def test_molecule_system(tmp_path):
    ase.io.write(str(tmp_path / "h3.xyz"), Atoms("H3", positions=[[0, 0, 0], [1.1, 0, 0], [0.4, 0.8, 0.1]]))
    k, m = 10.0, 1.008
    from mlip.validate.units import SQRT_EV_A2_AMU_IN_THZ, THZ_IN_CM1

    nu = np.sqrt([1.5 * k / m, 3 * k / m]) * SQRT_EV_A2_AMU_IN_THZ * THZ_IN_CM1
    (tmp_path / "mol.yaml").write_text(f"""
systems:
  h3:
    structure: {{file: h3.xyz}}
    md: {{temperatures: [100], time_ps: 0.05}}
    properties:
      bond_01: {{value: 1.0, unit: A, atoms: [0, 1], tolerance: 0.001}}
      angle_012: {{value: 60, unit: deg, atoms: [0, 1, 2], tolerance: 0.001}}
      frequencies: {{value: [{nu[0]}, {nu[1]}], unit: cm^-1, tolerance: 0.001}}
""")
    rows = run_validation(SpringCalculator(k=k, r0=1.0, rc=2.0, eps=0.0), load_reference(str(tmp_path / "mol.yaml")),
                          settings=Settings(log=None))
    table = format_table(rows)
    statuses = {r.property: r.status for r in rows}
    assert statuses == {"relaxation": "PASS", "bond_01": "PASS", "angle_012": "PASS", "frequency 1": "PASS",
                        "frequency 2": "PASS", "vibrations: imaginary modes": "PASS",
                        "MD NVT 100 K, 0.05 ps": "PASS"}, table


def test_user_structures_get_md_and_eos(tmp_path):
    crystal = bulk("Cu", "fcc", a=A * 0.98, cubic=True)  # the EOS finds a = A from here
    crystal.info["name"] = "cu.xyz:0"
    rows = run_validation(springs(), None, [crystal], Settings(log=None, md_temperatures=[300], md_time_ps=0.05))
    statuses = {r.property: r.status for r in rows}
    assert statuses["MD NVT 300 K, 0.05 ps"] == "PASS"
    assert statuses["lattice_constant"] == "INFO" and statuses["bulk_modulus"] == "INFO"
    a = next(r for r in rows if r.property == "lattice_constant").model
    assert a == pytest.approx(A, rel=1e-4)  # the cubic cell's a after relaxation and EOS
    assert not failed(rows)


def test_an_error_inside_one_check_does_not_stop_the_others(tmp_path):
    crystal = bulk("Cu", "fcc", a=A, cubic=True)

    class FixedVolume(SpringCalculator):
        """Refuses any other volume than the crystal's: the equation of state cannot run."""

        def calculate(self, atoms=None, properties=("energy",), system_changes=()):
            if abs(atoms.get_volume() - crystal.get_volume()) > 1e-6:
                raise RuntimeError("this model only knows one volume")
            super().calculate(atoms, properties, system_changes or ["positions"])

    rows = run_validation(FixedVolume(k=K, r0=A / np.sqrt(2.0), rc=3.4, eps=EPS), None, [crystal],
                          Settings(log=None, md_temperatures=[300], md_time_ps=0.02))
    statuses = {r.property: r.status for r in rows}
    assert statuses["equation of state"] == "ERROR"
    assert "only knows one volume" in next(r.note for r in rows if r.property == "equation of state")
    assert statuses["MD NVT 300 K, 0.02 ps"] == "PASS"
    assert failed(rows)


def test_md_settings_precedence():
    from mlip.validate.runner import _md_plan

    ref = {"temperatures": [300.0, 900.0], "time_ps": 2.0, "timestep_fs": 0.5}
    assert _md_plan({}, Settings()) == ([300.0, 1000.0], 1.0, 1.0)
    assert _md_plan(ref, Settings()) == ([300.0, 900.0], 2.0, 0.5)
    # the command line wins; --quick shortens what the reference asks for, not what the user asked
    assert _md_plan(ref, Settings(md_temperatures=[500.0], md_time_ps=0.3, md_timestep_fs=2.0)) == ([500.0], 0.3, 2.0)
    assert _md_plan(ref, Settings(quick=True)) == ([300.0], 0.2, 0.5)
    both = Settings(quick=True, md_temperatures=[400.0, 800.0], md_time_ps=0.5)
    assert _md_plan(ref, both) == ([400.0, 800.0], 0.5, 0.5)


# --- the command line, through MLIPCalculator ------------------------------------------------

def save_morse_si(path, r_max: float = 4.5) -> str:
    """A smooth Morse pair potential for Si as an exported TorchScript model (the pair_style
    nequip contract of mlip.deploy.export), so MLIPCalculator loads it as it loads a real model."""
    import torch

    class Morse(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.r_max = r_max

        def forward(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
            pos = data["pos"].detach().requires_grad_(True)
            n = pos.shape[0]
            cell = data["cell"].view(1, 3, 3)
            strain = torch.zeros(1, 3, 3, dtype=pos.dtype).requires_grad_(True)
            sym = 0.5 * (strain + strain.transpose(1, 2))
            pos_s = pos + pos @ sym[0]
            cell_s = cell + torch.bmm(cell, sym)
            i, j = data["edge_index"][0], data["edge_index"][1]
            vec = pos_s[j] - pos_s[i] + data["edge_cell_shift"] @ cell_s[0]
            r = torch.linalg.vector_norm(vec, dim=-1)
            x = r / self.r_max
            env = (1 - 28 * x ** 6 + 48 * x ** 7 - 21 * x ** 8) * (x < 1.0).to(r.dtype)
            pair = env * (torch.exp(-3.0 * (r - 2.35)) - 2.0 * torch.exp(-1.5 * (r - 2.35)))
            atomic = torch.zeros(n, dtype=pos.dtype).index_add(0, i, 0.5 * pair)
            total = atomic.sum()
            grads = torch.autograd.grad([total], [pos, strain])
            g_pos, g_strain = grads[0], grads[1]
            assert g_pos is not None and g_strain is not None
            return {"atomic_energy": atomic.view(n, 1).detach(), "total_energy": total.view(1, 1).detach(),
                    "forces": (-g_pos).detach(), "virial": (-g_strain).detach()}

    torch.jit.save(torch.jit.script(Morse()), str(path),
                   _extra_files={"r_max": str(r_max), "type_names": "Si", "num_types": "1", "allow_tf32": "0",
                                 "model_dtype": "float64"})
    return str(path)


def _cli(argv, capsys):
    from mlip.validate.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_input_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("systems: {si: {structure: {bulk: {name: Si}}, properties: {C11: {value: 1, unit: eV}}}}")
    code, out, err = _cli(["model.pth", "--reference", bad], capsys)
    assert code == 2 and err.count("\n") == 1 and "properties.C11.unit" in err, err
    code, out, err = _cli(["model.pth", "--reference", "none", "--structures", tmp_path / "nope.xyz"], capsys)
    assert code == 2 and "nope.xyz: file not found" in err
    code, out, err = _cli(["model.pth", "--md-time-ps", "-1", "--reference", "none"], capsys)
    assert code == 2 and "--md-time-ps must be positive" in err
    code, out, err = _cli([tmp_path / "missing.nequip.pth", "--reference", "none", "--structures",
                           _write_structure(tmp_path)], capsys)
    assert code == 2 and "missing.nequip.pth: file not found" in err


def _write_structure(tmp_path) -> str:
    path = str(tmp_path / "si.extxyz")
    ase.io.write(path, bulk("Si", "diamond", a=5.43, cubic=True))
    return path


def test_cli_with_a_torchscript_model_and_the_shipped_reference(tmp_path, capsys):
    """The default reference for a Si model, in --quick mode with the slow parts off. A Morse pair
    potential does not hold the diamond structure well: rows fail, so the exit status is 1."""
    model = save_morse_si(tmp_path / "morse.nequip.pth")
    out_dir = tmp_path / "out"
    code, out, err = _cli([model, "--quick", "--no-phonons", "--md-time-ps", "0.02", "--out", out_dir], capsys)
    assert "si_pbe.yaml" in err and "[si_diamond] equation of state" in err
    assert code == 1, out
    for name in ("lattice_constant", "bulk_modulus", "C11", "C12", "C44", "vacancy_formation_energy",
                 "MD NVT 300 K, 0.02 ps"):
        assert name in out
    assert "reference: DFT-PBE, Zuo et al." in out
    results = json.loads((out_dir / "results.json").read_text())
    rows = {r["property"]: r for r in results["rows"]}
    assert rows["lattice_constant"]["reference"] == pytest.approx(5.469)
    assert rows["lattice_constant"]["status"] in ("PASS", "FAIL") and rows["lattice_constant"]["model"] > 0
    assert results["reference"].endswith("si_pbe.yaml")
    assert os.path.exists(out_dir / "si_diamond_eos.png")


@pytest.mark.slow
def test_cli_end_to_end_on_a_tiny_trained_si_model(tmp_path, capsys):
    """Train a tiny NequIP model on the shipped Si example for one epoch, export it, and run
    ``mlip validate`` with the shipped reference and a structure of the example test set. The
    model is far from converged, so rows may fail; none may be an ERROR (a check that crashed)."""
    import mlip
    from conftest import EXAMPLE_DATA
    from test_train_helpers import tiny_config

    cfg = tiny_config(tmp_path, os.path.join(EXAMPLE_DATA, "si_train.extxyz"), optim={"lr": 0.01, "max_epochs": 1})
    exported = str(tmp_path / "si.nequip.pth")
    mlip.export(mlip.train(cfg, echo=False)["best_model"], exported)
    out_dir = tmp_path / "out"
    code, out, err = _cli([exported, "--quick", "--phonon-backend", "numpy", "--md-time-ps", "0.03",
                           "--structures", os.path.join(EXAMPLE_DATA, "si_test.extxyz"), "--index", "0",
                           "--out", out_dir], capsys)
    assert code in (0, 1), err
    results = json.loads((out_dir / "results.json").read_text())
    statuses = {(r["system"], r["property"]): r["status"] for r in results["rows"]}
    assert "ERROR" not in statuses.values(), out
    for prop in ("lattice_constant", "bulk_modulus", "C11", "C12", "C44", "vacancy_formation_energy",
                 "phonons: imaginary modes", "MD NVT 300 K, 0.03 ps"):
        assert statuses[("si_diamond", prop)] in ("PASS", "FAIL"), prop
    assert statuses[("si_test.extxyz:0", "MD NVT 300 K, 0.03 ps")] in ("PASS", "FAIL")
    assert statuses[("si_test.extxyz:0", "bulk_modulus")] == "INFO"
    assert (code == 1) == any(s == "FAIL" for s in statuses.values())
    for name in ("si_diamond_eos.png", "si_diamond_phonons.png", "si_diamond_md.png", "si_test.extxyz_0_md.png"):
        assert (out_dir / name).exists(), name


def test_a_model_that_fails_at_once_gives_one_error_row(tmp_path):
    from test_validate_helpers import NaNCalculator

    rows = run_validation(NaNCalculator(after=1, k=K, r0=A / np.sqrt(2.0), rc=3.4, eps=EPS),
                          load_reference(spring_reference(tmp_path)), settings=Settings(log=None))
    assert [(r.property, r.status) for r in rows] == [("relaxation (cell + positions)", "ERROR")], rows
    assert failed(rows)
