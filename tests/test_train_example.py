"""The README's main command, ``mlip train configs/example.yaml``, end to end (slow: minutes)."""
import json
import os

import pytest

from mlip.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_example_config_trains_a_usable_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    run = str(tmp_path / "example")
    assert main(["train", "configs/example.yaml", "--set", f"output_dir={run}", "logging.progress_bar=false"]) == 0
    out = capsys.readouterr().out
    assert "si_test" in out and "best_model.pt" in out
    for name in ("best_model.pt", "learning_curve.png", "metrics.csv", "test/si_test_parity_forces.png",
                 "test/si_test_per_structure.csv"):
        assert os.path.exists(os.path.join(run, name)), name
    metrics = json.load(open(os.path.join(run, "test", "si_test_metrics.json")))
    # far better than predicting zero forces (RMS 0.92 eV/A) or the mean energy (std 0.28 eV/atom)
    assert metrics["forces_rmse"] < 0.45
    assert metrics["energy_rmse"] < 0.1
