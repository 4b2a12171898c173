"""The MD example (python -m mlip.deploy.md): NVT and NVE runs on the shipped Si structure write a
readable trajectory."""
import ase.io
import numpy as np
import pytest

from test_deploy_common import make_checkpoint


@pytest.mark.parametrize("ensemble", ["nvt", "nve"])
def test_md_example_writes_trajectory(tmp_path, ensemble, capsys):
    from mlip.deploy.export import export_model
    from mlip.deploy.md import DEFAULT_STRUCTURE, main

    assert DEFAULT_STRUCTURE.endswith("si_test.extxyz")
    ck = make_checkpoint(tmp_path / "si.pth", type_names=["Si"],
                         config=dict(architecture="nequip", r_max=3.0, num_layers=1, channels=4, l_max=1,
                                     num_bessel=4, radial_hidden=8, readout_hidden=4))
    model = str(tmp_path / "si.nequip.pth")
    export_model(ck, model)
    out = str(tmp_path / f"md_{ensemble}.traj")
    assert main([model, "--ensemble", ensemble, "--steps", "4", "--interval", "2", "--timestep", "0.5",
                 "-o", out]) == 0
    frames = ase.io.read(out, ":")
    assert len(frames) == 3                                 # steps 0, 2, 4
    assert np.isfinite(frames[-1].get_potential_energy())
    assert frames[-1].get_forces().shape == (len(frames[0]), 3)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[0].split()[0] == "step" and len(lines) == 4
    if ensemble == "nve":
        etot = [float(line.split()[4]) for line in lines[1:]]
        assert max(etot) - min(etot) < 1e-3 * len(frames[0])


def test_md_example_bad_input(tmp_path, capsys):
    from mlip.deploy.md import main

    assert main([str(tmp_path / "missing.nequip.pth"), "--steps", "1"]) == 2
    assert "file not found" in capsys.readouterr().err


def _si_checkpoint(tmp_path):
    return make_checkpoint(tmp_path / "si.pth", type_names=["Si"],
                           config=dict(architecture="nequip", r_max=3.0, num_layers=1, channels=4, l_max=1,
                                       num_bessel=4, radial_hidden=8, readout_hidden=4))


def test_md_compile_refuses_exported_file(tmp_path, capsys):
    from mlip.deploy.export import export_model
    from mlip.deploy.md import main

    model = str(tmp_path / "si.nequip.pth")
    export_model(_si_checkpoint(tmp_path), model)
    assert main([model, "--compile", "--steps", "1", "-o", str(tmp_path / "x.traj")]) == 2
    assert "compile applies to checkpoints" in capsys.readouterr().err


@pytest.mark.slow
def test_md_compiled_follows_eager(tmp_path, capsys):
    """NVE from the same start with the compiled and the eager model: the same trajectory."""
    from mlip.deploy.md import main

    ck = str(_si_checkpoint(tmp_path))
    runs = {}
    for flag in ([], ["--compile"]):
        out = str(tmp_path / f"md{len(flag)}.traj")
        assert main([ck, "--ensemble", "nve", "--steps", "6", "--interval", "3", "-o", out, *flag]) == 0
        runs[len(flag)] = ase.io.read(out, ":")
    for eager, compiled in zip(runs[0], runs[1]):
        np.testing.assert_allclose(compiled.positions, eager.positions, atol=1e-5)
        np.testing.assert_allclose(compiled.get_potential_energy(), eager.get_potential_energy(), atol=1e-4)
