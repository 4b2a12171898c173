"""End to end (slow): train with the example config for a few epochs, export, load standalone
in a Python without mlip, certify with ``mlip check``, and run NVE MD with the calculator."""
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_example_config_trains_exports_and_passes_check(tmp_path):
    from mlip.cli import COMMANDS

    import importlib.util
    if importlib.util.find_spec(COMMANDS["train"][0]) is None:
        pytest.skip("trainer not available")
    from mlip.cli import main

    out = tmp_path / "run"
    code = main(["train", os.path.join(REPO, "configs", "example.yaml"), "--set", "optim.max_epochs=2",
                 f"output_dir={out}", "logging.progress_bar=false", "stage_two.enabled=false",
                 f"data.root={REPO}", "device=cpu"])
    assert code == 0
    best = [p for p in os.listdir(out) if p.startswith("best_model")]
    assert best
    model = str(tmp_path / "si.nequip.pth")
    assert main(["export", str(out / best[0]), "-o", model]) == 0

    probe = ("import sys; sys.modules['mlip'] = None; import torch; "
             "m = torch.jit.load(sys.argv[1]); print('ok', type(m).__name__)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-I", "-c", probe, model], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr

    assert main(["check", model, "--md-steps", "50"]) == 0

    import ase.io
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from mlip import MLIPCalculator

    atoms = ase.io.read(os.path.join(REPO, "data", "si_test.extxyz"), index=0)
    atoms.calc = MLIPCalculator(model)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    e0 = atoms.get_total_energy()
    VelocityVerlet(atoms, timestep=0.5 * units.fs).run(40)
    assert abs(atoms.get_total_energy() - e0) / len(atoms) < 1e-3
