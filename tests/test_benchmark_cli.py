"""`mlip benchmark`: a tiny budget run end to end prints our errors beside the published ones."""
import json
import os

import pytest

from conftest import shared_path

from mlip.benchmark_cli import PUBLISHED, comparison_table
from mlip.cli import main
from mlip.errors import InputError


def test_budget_run_end_to_end(tmp_path, capsys):
    data_root = os.path.dirname(shared_path("rmd17"))
    out = tmp_path / "bench"
    code = main(["benchmark", "rmd17-ethanol", "--budget", "0.05", "--data-root", data_root, "--output-dir", str(out),
                 "--set", "data.train_index=0:40", "model.num_layers=1", "model.channels=4", "model.l_max=1",
                 "optim.max_epochs=50", "data.batch_size=10", "logging.progress_bar=false", "dtype=float32"])
    assert code == 0
    text = capsys.readouterr().out
    assert "budget run (0.05 min)" in text and "rmd17_ethanol_test_01" in text and "0.4 / 2.8" in text
    summary = json.loads((out / "benchmark.json").read_text())
    ours = summary["results"]["rmd17_ethanol_test_01"]
    assert ours["forces_mae"] > 0 and summary["budget_minutes"] == 0.05
    assert (out / "learning_curve.png").exists()


def test_table_marks_full_runs_and_missing_sets():
    table = comparison_table("3bpa", {"test_300K": {"energy_total_rmse": 0.0123, "forces_rmse": 0.0456}}, None)
    assert "full run" in table and "12.3 / 45.6" in table and "not run" in table  # test_600K missing
    assert set(PUBLISHED["3bpa"]) == {"test_300K", "test_600K"}


def test_missing_data_root_is_named(tmp_path):
    with pytest.raises(InputError, match="benchmark data not found"):
        from mlip.benchmark_cli import build_config
        import argparse
        build_config(argparse.Namespace(name="3bpa", data_root=str(tmp_path), budget=None, output_dir=None,
                                        architecture=None, overrides=[]))
