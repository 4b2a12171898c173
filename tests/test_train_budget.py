"""train.max_time_minutes: a clean stop after the batch during which the budget runs out."""
import glob
import os

import torch

from test_train_helpers import tiny_config, write_frames


def _latest(run_dir):
    return torch.load(sorted(glob.glob(os.path.join(run_dir, "checkpoints", "ckpt-*.pt")))[-1], weights_only=True)


def test_time_budget_stops_then_resume_continues_exactly(tmp_path):
    from mlip.train.config import validate
    from mlip.train.trainer import train

    data = write_frames(str(tmp_path / "train.extxyz"), 12, seed=5)
    raw = tiny_config(tmp_path, data, optim={"lr": 0.01, "max_epochs": 2})
    raw["output_dir"] = str(tmp_path / "full")
    full = train(validate(raw), echo=False)
    assert not full["stopped_by_time"]

    raw["output_dir"] = str(tmp_path / "budget")
    raw["train"] = {"max_time_minutes": 1e-7}
    out = train(validate(raw), echo=False)
    # stopped after its first batch, mid-epoch, and still finished normally
    assert out["stopped_by_time"] and out["global_step"] == 1
    run = tmp_path / "budget"
    for name in ("last_model.pt", "statistics.json", "test/valid_metrics.json"):
        assert (run / name).exists(), name
    assert not (run / "learning_curve.png").exists()  # no epoch finished: nothing to plot
    assert out["best_model"] == out["last_model"]  # no validation happened yet
    assert "valid" in out["results"]  # the final evaluation ran
    ckpt = _latest(str(run))
    assert ckpt["global_step"] == 1 and ckpt["step_in_epoch"] == 1 and ckpt["epoch"] == 0
    assert "time budget of 1e-07 min reached after step 1" in open(run / "log.txt").read()

    # the budget counts this process only: without it the run continues exactly where it stopped
    raw["train"] = {"max_time_minutes": None}
    resumed = train(validate(raw), echo=False)
    assert not resumed["stopped_by_time"]
    a, b = _latest(str(tmp_path / "full")), _latest(str(run))
    assert a["global_step"] == b["global_step"]
    for k, v in a["model"]["state_dict"].items():
        assert torch.equal(v, b["model"]["state_dict"][k]), k
