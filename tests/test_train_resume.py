"""Exact resume: a run killed with SIGKILL mid-epoch, or whose newest checkpoint is truncated,
continues to exactly the weights of an uninterrupted run (CPU, fixed seed)."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_train_helpers import tiny_config, write_config, write_frames

from mlip.cli import main
from mlip.train.config import validate
from mlip.train.trainer import Trainer, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCHES = 7      # 16 structures, 2 held out, batch size 2
EPOCHS = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    data = write_frames(str(folder / "lj.extxyz"), 16, seed=5)

    def make(name):
        return tiny_config(folder, data, output_dir=str(folder / name), optim={"max_epochs": EPOCHS, "lr": 0.01},
                           schedule={"type": "cosine", "warmup_epochs": 1},
                           train={"checkpoint_every_steps": 1})

    clean = train(validate(make("clean")), echo=False)
    final = torch.load(clean["checkpoint"], weights_only=True)
    assert final["global_step"] == EPOCHS * BATCHES
    return folder, make, final


def assert_same_run(a, b):
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    for key in ("model", "ema"):
        sa = a["model"]["state_dict"] if key == "model" else a["ema_state_dict"]
        sb = b["model"]["state_dict"] if key == "model" else b["ema_state_dict"]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{key} weights differ in {k}: {(sa[k] - sb[k]).abs().max()}"
    oa, ob = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in oa:
        for k in oa[i]:
            assert torch.equal(oa[i][k], ob[i][k]), (i, k)
    strip = lambda hist: [{k: v for k, v in h.items() if k != "time_s"} for h in hist]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])  # same metrics every epoch, bit for bit


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(setup):
    folder, make, final = setup
    raw = make("killed")
    path = write_config(str(folder / "killed.yaml"), raw)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "mlip", "train", path], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpt_dir = os.path.join(raw["output_dir"], "checkpoints")
    seen = None
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None and seen is None:
            names = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
            for name in names:
                m = re.match(r"ckpt-(\d+)-e(\d+)\.pt$", name)
                if m:
                    step, epoch = int(m.group(1)), int(m.group(2))
                    # a checkpoint early in the second epoch or later: kill at once, mid-epoch
                    if epoch >= 1 and 1 <= step - epoch * BATCHES <= 3:
                        seen = name
            if seen:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and seen is None:
            proc.kill()
        output = proc.communicate()[0].decode(errors="replace")
    assert seen is not None, f"no mid-epoch checkpoint seen before the run ended:\n{output}"
    assert proc.returncode == -signal.SIGKILL, output
    assert not os.path.exists(os.path.join(raw["output_dir"], "last_model.pt"))
    latest = sorted(n for n in os.listdir(ckpt_dir) if n.startswith("ckpt-"))[-1]
    state = torch.load(os.path.join(ckpt_dir, latest), weights_only=True)
    assert state["step_in_epoch"] > 0 and state["global_step"] < EPOCHS * BATCHES  # killed mid-epoch

    assert main(["train", path, "--resume"]) == 0
    log = open(os.path.join(raw["output_dir"], "log.txt")).read()
    assert re.search(rf"resumed from .*: epoch {state['epoch']}, batch {state['step_in_epoch']}/{BATCHES}", log)
    resumed = torch.load(Trainer(validate(raw), echo=False).last_checkpoint, weights_only=True)
    assert_same_run(final, resumed)
    # the metrics CSV has one row per epoch, none repeated by the replayed part of the epoch
    rows = open(os.path.join(raw["output_dir"], "metrics.csv")).read().strip().splitlines()
    assert len(rows) == 1 + EPOCHS


def test_truncated_latest_checkpoint_is_detected_and_previous_used(setup, monkeypatch):
    folder, make, final = setup
    cfg = validate(make("truncated"))
    tr = Trainer(cfg, echo=False)
    real_save = Trainer.save_checkpoint
    stop_at = BATCHES + 4  # mid second epoch

    def save_then_crash(self):
        path = real_save(self)
        if self.state.global_step == stop_at:
            raise KeyboardInterrupt  # the process dies right after this checkpoint
        return path

    monkeypatch.setattr(Trainer, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        tr.fit()
    monkeypatch.setattr(Trainer, "save_checkpoint", real_save)
    newest = tr.ckpts.list()[-1]
    size = os.path.getsize(newest)
    with open(newest, "r+b") as fh:
        fh.truncate(size // 2)

    resumed = Trainer(cfg, resume=True, echo=False)
    assert resumed.state.global_step == stop_at - 1 and resumed.state.step_in_epoch == 3
    assert os.path.exists(newest + ".corrupt") and not os.path.exists(newest)
    log = open(os.path.join(cfg["output_dir"], "log.txt")).read()
    assert "skipping unreadable checkpoint" in log
    result = resumed.fit()
    assert_same_run(final, torch.load(result["checkpoint"], weights_only=True))


def test_resume_at_an_epoch_boundary_with_more_epochs(setup):
    """Raising max_epochs continues a finished run; the first part is the clean run itself."""
    folder, make, final = setup
    raw = make("extended")
    raw["optim"]["max_epochs"] = EPOCHS - 1
    train(validate(raw), echo=False)
    raw["optim"]["max_epochs"] = EPOCHS
    # cosine anneals over max_epochs: changing it changes the schedule, so only check continuity
    tr = Trainer(validate(raw), echo=False)
    assert tr.state.epoch == EPOCHS - 1 and tr.state.step_in_epoch == 0
    tr.fit()
    assert len(tr.state.history) == EPOCHS and tr.state.global_step == EPOCHS * BATCHES


def test_checkpoint_of_an_older_version_resumes(tmp_path):
    """Keys added to the schema after a checkpoint was written (here data.keys.dipole and
    train.schedule_follows_budget) read as their defaults: the run resumes instead of being
    refused as 'a run whose config differs'."""
    from mlip.train.config import validate
    from mlip.train.trainer import Trainer, train

    from test_train_helpers import tiny_config, write_frames

    data = write_frames(str(tmp_path / "train.extxyz"), 8, seed=3)
    raw = tiny_config(tmp_path, data, optim={"lr": 0.01, "max_epochs": 1})
    train(validate(raw), echo=False)
    tr = Trainer(validate(raw), echo=False)
    path = tr.ckpts.list()[-1]
    obj = torch.load(path, weights_only=True)
    del obj["config"]["data"]["keys"]["dipole"], obj["config"]["train"]["schedule_follows_budget"]
    torch.save(obj, path)
    raw["optim"]["max_epochs"] = 2
    resumed = Trainer(validate(raw), resume=True, echo=False)
    assert resumed.state.epoch == 1
