"""The training loop on a tiny synthetic data set: it learns, writes its outputs, switches to
stage two, stops on NaN with the last good checkpoint intact, and saves weights_only files."""
import csv
import math
import os

import pytest
import torch
import yaml
from test_train_helpers import tiny_config, write_frames

from mlip.checkpoint import load_model
from mlip.train import trainer as trainer_mod
from mlip.train.config import load_config, validate
from mlip.train.trainer import Trainer, TrainingDiverged, train


@pytest.fixture(scope="module")
def lj_file(tmp_path_factory):
    return write_frames(str(tmp_path_factory.mktemp("lj") / "lj.extxyz"), 16, seed=1)


def test_short_run_learns_and_writes_every_output(tmp_path):
    train_file = write_frames(str(tmp_path / "train.extxyz"), 24, seed=11)
    test_file = write_frames(str(tmp_path / "test.extxyz"), 4, seed=12)
    raw = tiny_config(tmp_path, train_file, optim={"lr": 0.02, "max_epochs": 12},
                      data={"valid_fraction": 0.25, "test_files": [test_file]},
                      loss={"energy_weight": 1.0, "forces_weight": 100.0, "stress_weight": 0.0},
                      schedule={"type": "cosine", "warmup_epochs": 1, "min_lr": 0.001})
    cfg = validate(raw)
    tr = Trainer(cfg, echo=False)
    before = tr.validate(tr.loss_weights(0))
    result = tr.fit()
    after = result["results"]["valid"]
    # the validation force error falls by a clear factor (typically ~5x here)
    assert after["forces_rmse"] < 0.4 * before["forces_rmse"], (before, after)
    run = cfg["output_dir"]
    for name in ("config.yaml", "statistics.json", "metrics.csv", "learning_curve.png", "best_model.pt",
                 "last_model.pt", "log.txt", "test/test_per_structure.csv", "test/test_parity_forces.png",
                 "test/valid_parity_energy.png"):
        assert os.path.exists(os.path.join(run, name)), name
    with open(os.path.join(run, "learning_curve.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(os.path.join(run, "metrics.csv"))))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 13))
    assert float(rows[-1]["valid_forces_rmse"]) < float(rows[0]["valid_forces_rmse"])
    assert sum(int(r["best"]) for r in rows) >= 1
    # the resolved config in the run dir is complete and valid on its own
    saved = load_config(os.path.join(run, "config.yaml"))
    assert saved == cfg
    # the model file carries the statistics in its config and rebuilds to the same predictions
    obj = torch.load(result["best_model"], weights_only=True)
    mc = obj["model"]["config"]
    assert mc["avg_num_neighbors"] > 1 and len(mc["atomic_energy_shifts"]) == 2 and mc["atomic_energy_scales"][0] > 0
    assert obj["model"]["type_names"] == ["C", "Si"]
    model = load_model(result["best_model"])
    assert model.r_max == cfg["model"]["r_max"]


def test_stage_two_switches_weights_and_lr(tmp_path, lj_file):
    raw = tiny_config(tmp_path, lj_file, optim={"lr": 0.01, "max_epochs": 4},
                      stage_two={"enabled": True, "start_epoch": 2, "lr": 0.0007, "energy_weight": 50.0,
                                 "forces_weight": 2.0})
    seen = []
    real = trainer_mod.compute_loss

    def spy(out, batch, weights, *args, **kw):
        seen.append(weights)
        return real(out, batch, weights, *args, **kw)

    cfg = validate(raw)
    tr = Trainer(cfg, echo=False)
    original = trainer_mod.compute_loss
    trainer_mod.compute_loss = spy
    try:
        tr.fit()
    finally:
        trainer_mod.compute_loss = original
    stages = [(h["stage"], h["lr"], h["energy_weight"], h["forces_weight"]) for h in tr.state.history]
    assert [s[0] for s in stages] == [1, 1, 2, 2]
    assert stages[0][1] == pytest.approx(0.01) and stages[2][1] == pytest.approx(0.0007)
    assert stages[1][2:] == (1.0, 10.0) and stages[2][2:] == (50.0, 2.0)
    assert {(w.energy, w.forces) for w in seen} == {(1.0, 10.0), (50.0, 2.0)}
    assert all(g["lr"] == pytest.approx(0.0007) for g in tr.optimizer.param_groups)


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path, lj_file, monkeypatch):
    cfg = validate(tiny_config(tmp_path, lj_file, train={"checkpoint_every_steps": 1}))
    tr = Trainer(cfg, echo=False)
    real = trainer_mod.compute_loss
    bad_step = 10  # in the second epoch (7 batches per epoch)

    def poisoned(out, batch, weights, *args, **kw):
        loss, terms = real(out, batch, weights, *args, **kw)
        if tr.state.global_step == bad_step and torch.is_grad_enabled() and tr.model.training:
            loss = loss * float("nan")
        return loss, terms

    monkeypatch.setattr(trainer_mod, "compute_loss", poisoned)
    with pytest.raises(TrainingDiverged) as info:
        tr.fit()
    msg = str(info.value)
    assert "loss is nan" in msg and "epoch 1" in msg and "Last good checkpoint" in msg
    assert tr.last_checkpoint in msg
    ckpts = tr.ckpts.list()
    assert ckpts[-1] == tr.last_checkpoint
    obj = torch.load(ckpts[-1], weights_only=True)
    assert obj["global_step"] == bad_step
    # the weights were not touched by the poisoned batch, and match the checkpoint exactly
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v, obj["model"]["state_dict"][k]), k
    assert all(torch.isfinite(v).all() for v in obj["model"]["state_dict"].values())


def test_cli_reports_divergence(tmp_path, lj_file, monkeypatch, capsys):
    from mlip.cli import main
    from test_train_helpers import write_config

    path = write_config(str(tmp_path / "c.yaml"), tiny_config(tmp_path, lj_file, optim={"max_epochs": 1}))

    def nan_loss(out, batch, weights, *args, **kw):
        return out["total_energy"].sum() * float("nan"), {}

    monkeypatch.setattr(trainer_mod, "compute_loss", nan_loss)
    assert main(["train", path, "--set", "optim.max_epochs=2", "seed=3"]) == 1
    saved = yaml.safe_load(open(os.path.join(str(tmp_path), "run", "config.yaml")))
    assert saved["optim"]["max_epochs"] == 2 and saved["seed"] == 3  # overrides reach the resolved config
    err = capsys.readouterr().err
    assert "training stopped: the loss is nan" in err and "Traceback" not in err


def test_checkpoints_are_weights_only_and_complete(tmp_path, lj_file):
    cfg = validate(tiny_config(tmp_path, lj_file, optim={"max_epochs": 1}))
    result = train(cfg, echo=False)
    ckpt = result["checkpoint"]
    obj = torch.load(ckpt, weights_only=True)  # no pickled code anywhere
    for key in ("model", "ema_state_dict", "optimizer", "schedule", "ema", "rng", "epoch", "step_in_epoch",
                "global_step", "config", "statistics", "history"):
        assert key in obj, key
    assert obj["epoch"] == 1 and obj["step_in_epoch"] == 0 and obj["global_step"] == 7
    assert obj["config"]["optim"]["max_epochs"] == 1
    assert isinstance(obj["rng"]["torch"], torch.Tensor)
    for name in ("best_model.pt", "last_model.pt"):
        m = torch.load(os.path.join(cfg["output_dir"], name), weights_only=True)
        assert set(m) >= {"format", "model", "statistics"}
    # at most keep_checkpoints files, no temporary leftovers
    files = os.listdir(os.path.join(cfg["output_dir"], "checkpoints"))
    assert len(files) == 2 and all(f.startswith("ckpt-") for f in files)


def test_interrupted_checkpoint_write_leaves_previous_intact(tmp_path, lj_file, monkeypatch):
    cfg = validate(tiny_config(tmp_path, lj_file, optim={"max_epochs": 1}))
    tr = Trainer(cfg, echo=False)
    first = tr.save_checkpoint()
    tr.state.global_step += 1
    real_save = torch.save

    def dying_save(obj, fh, *a, **kw):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError):
        tr.save_checkpoint()
    monkeypatch.setattr(torch, "save", real_save)
    assert tr.ckpts.list() == [first]
    assert os.listdir(tr.ckpts.folder) == [os.path.basename(first)]  # the temporary file is gone


def test_early_stopping(tmp_path, lj_file, monkeypatch):
    cfg = validate(tiny_config(tmp_path, lj_file, optim={"max_epochs": 10}, train={"early_stopping_patience": 2}))
    monkeypatch.setattr(trainer_mod, "weighted_metric", lambda metrics, weights: 1.0)  # never improves
    tr = Trainer(cfg, echo=False)
    tr.fit()
    assert tr.state.stopped_early and len(tr.state.history) == 3
    assert [h["best"] for h in tr.state.history] == [1, 0, 0]
    log = open(os.path.join(cfg["output_dir"], "log.txt")).read()
    assert "early stopping" in log
    # a finished run is not restarted by running the same config again
    tr2 = Trainer(cfg, echo=False)
    tr2.fit()
    assert len(tr2.state.history) == 3 and "nothing to train" in open(os.path.join(cfg["output_dir"], "log.txt")).read()


def test_resume_refuses_a_different_model(tmp_path, lj_file):
    from mlip.errors import InputError

    cfg = validate(tiny_config(tmp_path, lj_file, optim={"max_epochs": 1}))
    train(cfg, echo=False)
    cfg2 = validate(tiny_config(tmp_path, lj_file, optim={"max_epochs": 1}))
    cfg2["model"]["channels"] = 8
    with pytest.raises(InputError, match="differs in model"):
        Trainer(cfg2, echo=False)
    cfg3 = validate(tiny_config(tmp_path, lj_file, optim={"max_epochs": 1},
                                output_dir=os.path.join(str(tmp_path), "fresh")))
    with pytest.raises(InputError, match="no checkpoint"):
        Trainer(cfg3, resume=True, echo=False)


def test_float32_training_keeps_energies_in_float64(tmp_path, lj_file):
    cfg = validate(tiny_config(tmp_path, lj_file, dtype="float32", optim={"max_epochs": 1}))
    tr = Trainer(cfg, echo=False)
    assert next(tr.model.parameters()).dtype == torch.float32
    tr.fit()
    assert math.isfinite(tr.state.history[-1]["valid_forces_rmse"])
    saved = yaml.safe_load(open(os.path.join(cfg["output_dir"], "config.yaml")))
    assert saved["dtype"] == "float32"


def test_model_typo_is_a_config_error(tmp_path, lj_file):
    from mlip.errors import InputError

    raw = tiny_config(tmp_path, lj_file)
    raw["model"]["chanels"] = 4
    with pytest.raises(InputError, match=r"model.chanels.*did you mean 'model.channels'"):
        Trainer(validate(raw), echo=False)


def test_wandb_logging_is_offline_unless_asked(tmp_path, lj_file, monkeypatch):
    import sys
    import types

    calls = {"init": [], "log": [], "finish": 0}

    class Run:
        id = "abc123"

        def log(self, row, step=None):
            calls["log"].append((step, row))

        def finish(self):
            calls["finish"] += 1

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls["init"].append(kw) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = validate(tiny_config(tmp_path, lj_file, optim={"max_epochs": 2}, logging={"wandb": True,
                                                                                     "progress_bar": False}))
    tr = Trainer(cfg, echo=False)
    tr.fit()
    assert calls["init"][0]["mode"] == "offline" and calls["init"][0]["project"] == "mlip"
    assert [step for step, _ in calls["log"]] == [1, 2]
    assert "valid_forces_rmse" in calls["log"][0][1] and calls["finish"] == 1
    assert torch.load(tr.last_checkpoint, weights_only=True)["wandb_id"] == "abc123"  # resumes the same run


def test_upstream_model_key_names_are_read_as_mlips(tmp_path, lj_file):
    """A model section in NequIP's names trains, says what each name was read as, and stores
    mlip's names in the model file."""
    raw = tiny_config(tmp_path, lj_file, optim={"max_epochs": 1})
    model = dict(raw["model"])
    model["num_features"] = model.pop("channels")
    model["radial_mlp_width"] = model.pop("radial_hidden")
    raw["model"] = model
    result = train(validate(raw), echo=False)
    log = open(os.path.join(raw["output_dir"], "log.txt")).read()
    assert "model.num_features read as model.channels: 4 (mlip's name)" in log
    assert "model.radial_mlp_width read as model.radial_hidden" in log
    config = torch.load(result["best_model"], weights_only=True)["model"]["config"]
    assert config["channels"] == 4 and "num_features" not in config
