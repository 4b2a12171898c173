"""The README's main command, ``mlip train configs/example.yaml``, end to end, and the trained model
against PBE with ``mlip validate`` (slow: about 4 minutes)."""
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

    # Issue #20's thresholds for the quickstart model, checked by `mlip validate` against the
    # shipped PBE reference: lattice constant within 1 %, bulk modulus and elastic constants
    # within 15 %, no imaginary phonons in bulk Si, stable NVT at 300 K and 1200 K (1 ps here;
    # docs/validation.md has the 10 ps run). The vacancy energy is reported but not required.
    out_dir = tmp_path / "validate"
    code = main(["validate", os.path.join(run, "best_model.pt"), "--dtype", "float64",
                 "--md-temperatures", "300", "1200", "--md-time-ps", "1",
                 "--structures", "data/si_test.extxyz", "--index", "0", "--out", str(out_dir)])
    assert code in (0, 1)
    rows = json.load(open(out_dir / "results.json"))["rows"]
    status = {(r["system"], r["property"]): r["status"] for r in rows}
    for prop in ("lattice_constant", "bulk_modulus", "C11", "C12", "C44", "elastic: Born stability",
                 "phonons: imaginary modes", "MD NVT 300 K, 1 ps", "MD NVT 1200 K, 1 ps"):
        assert status[("si_diamond", prop)] == "PASS", (prop, [r for r in rows if r["property"] == prop])
    for prop in ("MD NVT 300 K, 1 ps", "MD NVT 1200 K, 1 ps"):
        assert status[("si_test.extxyz:0", prop)] == "PASS", prop
