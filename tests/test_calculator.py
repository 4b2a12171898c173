"""MLIPCalculator: equal to the model, from a checkpoint or an exported file; properties and
units; committee mean/std; errors; MD-loop behaviour (load once) and NVE energy conservation."""
import time

import numpy as np
import pytest
import torch
from ase.calculators.calculator import PropertyNotImplementedError

from test_deploy_common import TINY_CONFIG, make_checkpoint, molecule, python_model_outputs, triclinic


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from mlip.deploy.export import export_model

    d = tmp_path_factory.mktemp("calc")
    ck = make_checkpoint(d / "m.pth", dtype="float64", seed=7)
    ck_b = make_checkpoint(d / "m_b.pth", dtype="float64", seed=8)
    ck32 = make_checkpoint(d / "m32.pth", dtype="float32", seed=7)
    x = str(d / "m.nequip.pth")
    export_model(ck, x)
    return {"ck": ck, "ck_b": ck_b, "ck32": ck32, "x": x, "dir": d}


def test_import_from_package():
    from mlip import MLIPCalculator
    from mlip.deploy.calculator import MLIPCalculator as C
    assert MLIPCalculator is C
    assert {"energy", "free_energy", "energies", "forces", "stress"} <= set(C.implemented_properties)


@pytest.mark.parametrize("source,script", [("ck", False), ("ck", True), ("x", False)])
def test_calculator_equals_model(files, source, script):
    from mlip import MLIPCalculator
    from mlip.checkpoint import load_model

    model = load_model(files["ck"])
    calc = MLIPCalculator(files[source], script=script)
    for atoms in (triclinic(seed=2), molecule(seed=3)):
        ref, _ = python_model_outputs(model, atoms)
        atoms.calc = calc
        assert abs(atoms.get_potential_energy() - float(ref["total_energy"])) < 1e-10
        assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
        np.testing.assert_allclose(atoms.get_potential_energies(), ref["atomic_energy"].view(-1).numpy(), atol=1e-10)
        assert abs(atoms.get_potential_energies().sum() - atoms.get_potential_energy()) < 1e-9
        np.testing.assert_allclose(atoms.get_forces(), ref["forces"].numpy(), atol=1e-10)
        if atoms.pbc.all():
            s = ref["stress"][0].numpy()  # ASE sign already
            voigt = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
            np.testing.assert_allclose(atoms.get_stress(), voigt, atol=1e-10)
            np.testing.assert_allclose(atoms.get_stress(voigt=False), s, atol=1e-10)
        else:
            with pytest.raises(PropertyNotImplementedError):
                atoms.get_stress()


def _check_compiled_calculator(files, rtol, atol):
    from mlip import MLIPCalculator
    from mlip.checkpoint import load_model

    model = load_model(files["ck"])
    calc = MLIPCalculator(files["ck"], compile=True)
    for atoms in (triclinic(seed=2), molecule(seed=3), molecule(seed=4)):  # other sizes, one graph
        ref, _ = python_model_outputs(model, atoms)
        atoms.calc = calc
        np.testing.assert_allclose(atoms.get_potential_energy(), float(ref["total_energy"]), rtol=rtol, atol=atol)
        np.testing.assert_allclose(atoms.get_forces(), ref["forces"].numpy(), rtol=rtol, atol=atol)
        if atoms.pbc.all():
            s = ref["stress"][0].numpy()
            np.testing.assert_allclose(atoms.get_stress(voigt=False), s, rtol=rtol, atol=atol)
    assert len(calc.models[0].module._graphs) == 1  # sizes are symbolic: traced once
    with pytest.raises(Exception, match="compile applies to checkpoints"):
        MLIPCalculator(files["x"], compile=True)
    with pytest.raises(Exception, match="one of compile and script"):
        MLIPCalculator(files["ck"], compile=True, script=True)


def test_calculator_compile_traced_graph_equals_model(files, monkeypatch):
    """compile=True runs energy, forces and virial as one traced graph (here left uncompiled:
    the inductor build is in the slow tier)."""
    from mlip.nn import compiled

    monkeypatch.setattr(compiled.CompiledModule.__init__, "__defaults__", (None,))
    _check_compiled_calculator(files, 1e-10, 1e-10)


@pytest.mark.slow
def test_calculator_compile_inductor_equals_model(files):
    _check_compiled_calculator(files, 1e-8, 1e-9)  # float64 model, compiled C++


def test_stress_sign_is_ase_convention(files):
    """ASE sign (positive = tensile): trace(stress) = (1/V) dE/d(isotropic strain), by finite difference."""
    from mlip import MLIPCalculator

    calc = MLIPCalculator(files["x"])
    atoms = triclinic(seed=5)
    atoms.calc = calc
    stress = atoms.get_stress(voigt=False)
    h = 1e-5
    e = []
    for sign in (1, -1):
        a = atoms.copy()
        a.set_cell(atoms.cell.array * (1 + sign * h), scale_atoms=True)
        a.calc = calc
        e.append(a.get_potential_energy())
    dE = (e[0] - e[1]) / (2 * h)
    assert abs(dE / atoms.get_volume() - np.trace(stress)) < 1e-6 * max(1.0, abs(dE))


def test_dtype_option(files):
    from mlip import MLIPCalculator
    from mlip.errors import InputError

    atoms = triclinic(seed=1)
    c32 = MLIPCalculator(files["ck32"])
    c64 = MLIPCalculator(files["ck32"], dtype="float64")
    assert c32.models[0].dtype == "float32" and c64.models[0].dtype == "float64"
    atoms.calc = c32
    f32 = atoms.get_forces().copy()
    atoms.calc = c64
    f64 = atoms.get_forces()
    assert f32.dtype == np.float64
    assert np.abs(f32 - f64).max() < 1e-4 * max(1.0, np.abs(f64).max())
    assert np.abs(f32 - f64).max() > 0          # really two precisions
    with pytest.raises(InputError, match="export again"):
        MLIPCalculator(files["x"], dtype="float32")
    with pytest.raises(InputError):
        MLIPCalculator(files["x"], dtype="float16")


def test_committee_mean_and_std(files):
    from mlip import MLIPCalculator

    atoms = triclinic(seed=6)
    singles = []
    for p in (files["ck"], files["ck_b"], files["x"]):
        a = atoms.copy()
        a.calc = MLIPCalculator(p)
        singles.append((a.get_potential_energy(), a.get_forces(), a.get_stress(), a.get_potential_energies()))
    calc = MLIPCalculator([files["ck"], files["ck_b"], files["x"]])
    assert calc.committee_size == 3
    atoms.calc = calc
    energies = np.array([s[0] for s in singles])
    forces = np.array([s[1] for s in singles])
    assert abs(atoms.get_potential_energy() - energies.mean()) < 1e-10
    np.testing.assert_allclose(atoms.get_forces(), forces.mean(axis=0), atol=1e-10)
    np.testing.assert_allclose(atoms.get_stress(), np.mean([s[2] for s in singles], axis=0), atol=1e-10)
    np.testing.assert_allclose(atoms.get_potential_energies(), np.mean([s[3] for s in singles], axis=0), atol=1e-10)
    res = calc.results
    assert abs(res["energy_std"] - energies.std()) < 1e-10 and res["energy_std"] > 0
    np.testing.assert_allclose(res["forces_std"], forces.std(axis=0), atol=1e-10)
    assert res["forces_std"].shape == (len(atoms), 3)
    np.testing.assert_allclose(res["committee_energies"], energies, atol=1e-10)


def test_errors(files, tmp_path):
    from ase import Atoms

    from mlip import MLIPCalculator
    from mlip.errors import InputError

    with pytest.raises(InputError, match="file not found"):
        MLIPCalculator(str(tmp_path / "missing.nequip.pth"))
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\n")
    with pytest.raises(InputError):
        MLIPCalculator(str(bad))
    with pytest.raises(InputError):
        MLIPCalculator([])
    with pytest.raises(InputError, match="must be an mlip Potential"):
        MLIPCalculator(torch.nn.Linear(2, 2))  # a module, but no Potential to run the exported model's wrapper on
    calc = MLIPCalculator(files["x"])
    atoms = Atoms("SiO", positions=[[0, 0, 0], [1.5, 0, 0]])
    atoms.calc = calc
    with pytest.raises(InputError, match=r"\['O'\].*Si"):
        atoms.get_potential_energy()


def test_md_loop_loads_once_and_is_fast(files, monkeypatch):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    import mlip.checkpoint
    from mlip import MLIPCalculator

    for source in ("x", "ck"):
        calc = MLIPCalculator(files[source])
        calls = {"n": 0}

        def counting(*a, **k):
            calls["n"] += 1
            raise AssertionError("model reloaded during MD")
        monkeypatch.setattr(torch.jit, "load", counting)
        monkeypatch.setattr(torch.jit, "script", counting)
        monkeypatch.setattr(mlip.checkpoint, "build_from_record", counting)
        atoms = triclinic(seed=7).repeat((2, 2, 1))
        atoms.calc = calc
        dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
        dyn.run(2)  # warm-up
        t0 = time.perf_counter()
        dyn.run(10)
        per_step = (time.perf_counter() - t0) / 10
        monkeypatch.undo()
        assert calls["n"] == 0
        assert per_step < 0.5, f"{per_step:.3f} s per MD step for 20 atoms"


def test_nve_conserves_energy(files):
    """VelocityVerlet with a smooth float64 model (energies scaled up so that atoms really
    interact: PE varies by ~1 eV) run through the exported file: bounded total-energy drift."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    from mlip import MLIPCalculator
    from mlip.deploy.export import export_model

    config = dict(TINY_CONFIG, atomic_energy_scales=[10.0, 10.0])
    ck = make_checkpoint(files["dir"] / "stiff.pth", seed=7, config=config)
    export_model(ck, str(files["dir"] / "stiff.nequip.pth"))
    atoms = triclinic(seed=8).repeat((2, 1, 1))
    atoms.calc = MLIPCalculator(str(files["dir"] / "stiff.nequip.pth"))
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(0))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    etot, epot = [], []

    def log():
        epot.append(atoms.get_potential_energy())
        etot.append(epot[-1] + atoms.get_kinetic_energy())
    dyn.attach(log, interval=1)
    dyn.run(100)
    etot, epot = np.array(etot), np.array(epot)
    drift = np.abs(etot - etot[0]).max()
    assert np.ptp(epot) > 0.3                                 # energy really flows between PE and KE
    assert drift < 0.01 * np.ptp(epot), (np.ptp(epot), drift)
    assert drift / len(atoms) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device(files):
    from mlip import MLIPCalculator

    atoms = triclinic(seed=9)
    atoms.calc = MLIPCalculator(files["x"])
    ref = atoms.get_forces().copy()
    for source in ("x", "ck"):
        atoms.calc = MLIPCalculator(files[source], device="cuda")
        np.testing.assert_allclose(atoms.get_forces(), ref, atol=1e-9)
