"""train.max_time_minutes: a clean stop after the batch during which the budget runs out."""
import csv
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

    # without the budget the run continues exactly where it stopped (the schedule follows steps)
    raw["train"] = {"max_time_minutes": None}
    resumed = train(validate(raw), echo=False)
    assert not resumed["stopped_by_time"]
    a, b = _latest(str(tmp_path / "full")), _latest(str(run))
    assert a["global_step"] == b["global_step"]
    for k, v in a["model"]["state_dict"].items():
        assert torch.equal(v, b["model"]["state_dict"][k]), k


class FakeClock:
    """A perf_counter for mlip.train.clock that advances one second per reading, so a budget
    run's timing is the same on every machine."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 1.0
        return self.now


def _budget_run(tmp_path, monkeypatch, follow: bool, name: str):
    import mlip.train.clock as clock
    from mlip.train.config import validate
    from mlip.train.trainer import train

    monkeypatch.setattr(clock, "time", FakeClock())
    data = write_frames(str(tmp_path / "train.extxyz"), 9, seed=5)  # 8 training structures: 4 batches
    raw = tiny_config(tmp_path, data, optim={"lr": 0.01, "max_epochs": 1000},
                      schedule={"type": "cosine", "warmup_epochs": 0.0, "min_lr": 0.0},
                      stage_two={"enabled": True, "start_epoch": 750, "lr": 0.0005},
                      train={"max_time_minutes": 1.0, "schedule_follows_budget": follow})  # 60 fake seconds
    raw["output_dir"] = str(tmp_path / name)
    out = train(validate(raw), echo=False)
    history = list(csv.DictReader(open(tmp_path / name / "metrics.csv")))
    return out, history, open(tmp_path / name / "log.txt").read()


def test_budget_run_ends_annealed(tmp_path, monkeypatch):
    """With a time budget far shorter than max_epochs, the cosine runs over the budget and stage
    two starts at its 75 %, as the epochs would have it for a full run; without
    schedule_follows_budget the run is cut off at the top of its schedule."""
    out, history, log = _budget_run(tmp_path, monkeypatch, True, "follow")
    assert out["stopped_by_time"] and 8 <= len(history) <= 20
    stages = [int(h["stage"]) for h in history]
    assert stages[0] == 1 and stages[-1] == 2 and stages == sorted(stages)
    assert "of the time budget used: stage two starts now" in log
    first_two = stages.index(2)
    assert 0.6 <= first_two / len(history) <= 0.9  # about 75 % of the epochs the budget allowed
    lrs = [float(h["lr"]) for h in history[:first_two]]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.2 * lrs[0]  # annealed along the cosine
    assert float(history[-1]["lr"]) == 0.0005

    out, history, log = _budget_run(tmp_path, monkeypatch, False, "cut")
    assert out["stopped_by_time"] and all(int(h["stage"]) == 1 for h in history)
    assert float(history[-1]["lr"]) > 0.99 * 0.01  # epoch 15 of 1000: still at the top of the cosine


def test_budget_is_counted_over_resumptions(tmp_path, monkeypatch):
    """The budget is the run's, not one process's: a resumed run continues the clock (and the
    schedule) where the checkpoint left it, and a run whose budget is used does not restart."""
    out, history, _ = _budget_run(tmp_path, monkeypatch, True, "again")
    last = _latest(str(tmp_path / "again"))
    assert last["train_seconds"] >= 60.0
    out2, history2, log = _budget_run(tmp_path, monkeypatch, True, "again")
    assert "has used its time budget" in log and out2["global_step"] == out["global_step"]
    assert len(history2) == len(history)
