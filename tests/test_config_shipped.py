"""The configs shipped in mlip/examples/configs (the checkout's configs/ is a symlink to it)
validate, find their data, and train (a tiny version of their model on a few structures, one
epoch). Benchmark configs are skipped without ../shared/data."""
import glob
import os

import pytest

from mlip.train.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "mlip", "examples", "configs", "*.yaml")))
assert CONFIGS, "no shipped configs found"
TINY = {"nequip": ["model.channels=4", "model.num_layers=1", "model.l_max=1"],
        "mace": ["model.channels=4", "model.num_interactions=1", "model.correlation=1", "model.l_max=1",
                 "model.max_L=0"]}


def needs_shared(path):
    return "shared/data" in open(path).read()


def missing_foundation(path):
    """A fine-tuning config whose foundation model (made by another config) is not there."""
    src = load_config(path, check_files=False)["finetune"]["from"]
    return src is not None and not os.path.exists(os.path.join(REPO, src))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_config_validates(path, monkeypatch):
    monkeypatch.chdir(REPO)  # data paths are relative to the directory mlip is started from
    cfg = load_config(path, check_files=False)
    if needs_shared(path) and not os.path.isdir(os.path.join(REPO, "..", "shared", "data")):
        pytest.skip("shared benchmark data not found")
    if missing_foundation(path):
        pytest.skip("foundation model not trained yet (see the config's header)")
    load_config(path)  # every file it names exists
    assert cfg["output_dir"].startswith("runs/")


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_shipped_config_sets_up_and_trains_one_small_epoch(path, tmp_path, monkeypatch):
    from mlip.train.trainer import Trainer

    monkeypatch.chdir(REPO)
    if needs_shared(path) and not os.path.isdir(os.path.join(REPO, "..", "shared", "data")):
        pytest.skip("shared benchmark data not found")
    if missing_foundation(path):
        pytest.skip("foundation model not trained yet (see the config's header)")
    raw_cfg = load_config(path, check_files=False)
    arch = raw_cfg["model"].get("architecture", "nequip")
    if raw_cfg["finetune"]["from"]:
        arch = "finetune"  # the model is the foundation's: no tiny version
    overrides = [f"output_dir={tmp_path / 'run'}", "data.train_index=0:12", "data.valid_fraction=0.2",
                 "data.batch_size=4", "optim.max_epochs=1", "logging.progress_bar=false", "device=cpu",
                 "data.valid_file=null"] + TINY.get(arch, [])
    if raw_cfg["model"].get("polarizability"):
        # the polarizability head reads 2e features: keep the config's l_max and layers
        overrides = [o for o in overrides if not o.startswith(("model.l_max", "model.num_layers"))]
    cfg = load_config(path, overrides)
    tr = Trainer(cfg, echo=False)
    assert tr.type_names and len(tr.train_set) >= 8
    tr.train_epoch()
    metrics = tr.state.epoch_acc.result()
    assert metrics["forces_rmse"] > 0 and metrics["loss"] == metrics["loss"]  # finite, not NaN
