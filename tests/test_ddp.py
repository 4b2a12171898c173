"""Distributed training on the CPU: 2 gloo processes launched by torchrun.

The global batch (data.batch_size) is split over the ranks and each rank's loss is its exact
share of the global batch's loss, so 2 processes must follow the single-process run step for
step (float64: equal to ~1e-15). Resume under DDP, and resuming a DDP checkpoint in one process,
must continue the same run.
"""
import glob
import os
import shutil
import subprocess
import sys

import pytest
import torch

from test_train_helpers import tiny_config, write_config, write_frames

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-9


def _torchrun(config_path: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "mlip", "train", config_path]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _latest(run_dir: str) -> dict:
    path = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "ckpt-*.pt")))[-1]
    return torch.load(path, weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert _max_diff(a["model"]["state_dict"], b["model"]["state_dict"]) < TOL
    assert _max_diff(a["ema_state_dict"], b["ema_state_dict"]) < TOL
    assert len(a["history"]) == len(b["history"])
    for ha, hb in zip(a["history"], b["history"]):
        for key, value in ha.items():
            if key == "time_s" or not isinstance(value, float) or value != value:
                continue
            assert hb[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mlip.train.config import validate
    from mlip.train.trainer import train

    tmp = tmp_path_factory.mktemp("ddp")
    # 19 structures: 2 validation, 17 training; global batch 4 -> batches 4,4,4,4,1: in the last
    # one rank 1 has no structure and must still join the gradient all-reduce
    data = write_frames(str(tmp / "train.extxyz"), 19, seed=3)
    raw = tiny_config(tmp, data, data={"batch_size": 4, "valid_batch_size": 1},
                      optim={"lr": 0.01, "max_epochs": 2},
                      train={"checkpoint_every_steps": 3, "keep_checkpoints": 50})
    raw["output_dir"] = str(tmp / "single")
    train(validate(raw), echo=False)
    return tmp, raw


def test_two_processes_match_one(setup):
    tmp, raw = setup
    cfg = dict(raw, output_dir=str(tmp / "ddp"))
    proc = _torchrun(write_config(str(tmp / "ddp.yaml"), cfg))
    single, ddp = _latest(str(tmp / "single")), _latest(str(tmp / "ddp"))
    _assert_same_run(single, ddp)
    # only rank 0 writes and prints: every epoch line once
    log = open(tmp / "ddp" / "log.txt").read()
    assert log.count("epoch    1/2") == 1 and "distributed: 2 processes (gloo)" in log
    assert proc.stdout.count("epoch    2/2") == 1
    for name in ("best_model.pt", "last_model.pt", "metrics.csv", "learning_curve.png", "statistics.json"):
        assert os.path.exists(tmp / "ddp" / name), name


def _cut_after(run_dir: str, step: int) -> None:
    """Delete the checkpoints after ``step``: the run is then as if killed there."""
    for path in glob.glob(os.path.join(run_dir, "checkpoints", "ckpt-*.pt")):
        if int(os.path.basename(path).split("-")[1]) > step:
            os.unlink(path)


def test_resume_under_ddp_and_in_one_process(setup):
    tmp, raw = setup
    if not os.path.exists(tmp / "ddp"):
        pytest.skip("needs test_two_processes_match_one's run")
    single = _latest(str(tmp / "single"))
    # step 3 is inside epoch 0 (5 batches), with partial epoch metrics of both ranks
    for name, nproc in (("resume_ddp", 2), ("resume_one", 1)):
        run = tmp / name
        shutil.copytree(tmp / "ddp", run)
        _cut_after(str(run), 3)
        assert os.path.basename(sorted(glob.glob(str(run / "checkpoints" / "ckpt-*.pt")))[-1]).startswith(
            "ckpt-0000000003-e00000")
        cfg = dict(raw, output_dir=str(run))
        path = write_config(str(tmp / f"{name}.yaml"), cfg)
        if nproc == 2:
            _torchrun(path)
        else:
            from mlip.train.config import validate
            from mlip.train.trainer import train

            train(validate(cfg), echo=False)
        _assert_same_run(single, _latest(str(run)))
