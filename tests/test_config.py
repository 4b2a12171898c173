"""Config validation: unknown keys with suggestions, wrong types and ranges, missing files,
``--set`` overrides, and the resolved config. These tests read no data and train nothing."""
import os

import pytest
import yaml

from mlip.cli import main
from mlip.errors import InputError
from mlip.train.config import SCHEMA, apply_overrides, describe, load_config, validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SI_TRAIN = os.path.join(REPO, "data", "si_train.extxyz")


def write(tmp_path, cfg, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def base():
    return {"data": {"train_file": SI_TRAIN}, "model": {"r_max": 4.0}, "output_dir": "runs/x"}


def error_of(tmp_path, cfg, overrides=()):
    with pytest.raises(InputError) as info:
        load_config(write(tmp_path, cfg), overrides)
    return str(info.value)


def test_defaults_are_filled_in(tmp_path):
    cfg = load_config(write(tmp_path, base()))
    assert cfg["optim"]["optimizer"] == "adam"
    assert cfg["loss"]["type"] == "mse"
    assert cfg["data"]["E0s"] == "least_squares"
    assert cfg["model"] == {"r_max": 4.0}  # passed through untouched
    assert cfg["dtype"] == "float32" and cfg["device"] == "auto"


def test_unknown_key_suggests_the_right_one(tmp_path):
    cfg = base()
    cfg["optim"] = {"learning_rate": 0.01, "lr": 0.01, "max_epoch": 3}
    msg = error_of(tmp_path, cfg)
    assert "optim.learning_rate" in msg or "optim.max_epoch" in msg
    cfg["optim"] = {"max_epoch": 3}
    msg = error_of(tmp_path, cfg)
    assert "optim.max_epoch" in msg and "did you mean 'optim.max_epochs'" in msg
    assert "cfg.yaml" in msg  # names the file


def test_key_in_the_wrong_section_points_to_it(tmp_path):
    cfg = base()
    cfg["lr"] = 0.01
    assert "did you mean 'optim.lr'" in error_of(tmp_path, cfg)
    cfg = base()
    cfg["data"]["r_max"] = 5.0
    assert "model.r_max" in error_of(tmp_path, cfg)
    cfg = base()
    cfg["data"]["batchsize"] = 5
    assert "did you mean 'data.batch_size'" in error_of(tmp_path, cfg)


@pytest.mark.parametrize("section,key,value,expect", [
    ("optim", "lr", "fast", ["optim.lr", "expected a number", "'fast'"]),
    ("optim", "lr", -0.1, ["optim.lr", "out of range", "(0, inf)"]),
    ("optim", "max_epochs", 2.5, ["optim.max_epochs", "integer"]),
    ("optim", "optimizer", "sgd", ["optim.optimizer", "allowed values: adam, adamw"]),
    ("optim", "amsgrad", "yes", ["optim.amsgrad", "true or false"]),
    ("schedule", "type", "cosin", ["schedule.type", "constant, plateau, cosine", "did you mean 'cosine'"]),
    ("data", "valid_fraction", 1.5, ["data.valid_fraction", "out of range"]),
    ("data", "E0s", "average", ["data.E0s", "isolated, least_squares"]),
    ("data", "type_names", ["Si", "Xx"], ["data.type_names", "Xx"]),
    ("ema", "decay", 2.0, ["ema.decay", "[0, 1]"]),
])
def test_wrong_type_or_range_names_key_and_allowed_values(tmp_path, section, key, value, expect):
    cfg = base()
    cfg.setdefault(section, {})[key] = value
    msg = error_of(tmp_path, cfg)
    for text in expect:
        assert text in msg, (text, msg)


def test_top_level_choices(tmp_path):
    cfg = base()
    cfg["dtype"] = "float16"
    msg = error_of(tmp_path, cfg)
    assert "dtype" in msg and "float32, float64" in msg
    cfg = base()
    cfg["device"] = "gpu"
    assert "auto, cpu, cuda" in error_of(tmp_path, cfg)


def test_missing_file_names_the_path(tmp_path):
    cfg = base()
    cfg["data"]["test_files"] = ["no/such/test.xyz"]
    msg = error_of(tmp_path, cfg)
    assert "no/such/test.xyz" in msg and "not found" in msg and "data.test_files[0]" in msg
    cfg = base()
    cfg["data"]["train_file"] = "missing_train.extxyz"
    assert "missing_train.extxyz" in error_of(tmp_path, cfg)
    with pytest.raises(InputError, match="nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))


def test_data_root_resolves_relative_paths(tmp_path):
    cfg = base()
    cfg["data"] = {"root": os.path.join(REPO, "data"), "train_file": "si_train.extxyz", "test_files": "si_test.extxyz"}
    out = load_config(write(tmp_path, cfg))
    assert out["data"]["test_files"] == ["si_test.extxyz"]  # a single path becomes a list
    cfg["data"]["root"] = str(tmp_path)
    assert "si_train.extxyz" in error_of(tmp_path, cfg)


def test_set_overrides_types_nesting_and_typos(tmp_path):
    path = write(tmp_path, base())
    cfg = load_config(path, ["optim.lr=1e-3", "data.keys.energy=REF_energy", "seed=3",
                             "data.E0s={Si: -5.0}", "stage_two.enabled=true", "data.test_files=[]"])
    assert cfg["optim"]["lr"] == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as a string; accepted
    assert cfg["data"]["keys"]["energy"] == "REF_energy"
    assert cfg["seed"] == 3
    assert cfg["data"]["E0s"] == {"Si": -5.0}
    assert cfg["stage_two"]["start_epoch"] == 75  # default: 75% of max_epochs
    with pytest.raises(InputError, match="did you mean 'optim.lr'"):
        load_config(path, ["optim.lrr=0.1"])
    with pytest.raises(InputError, match="section.key=value"):
        load_config(path, ["optim.lr"])
    with pytest.raises(InputError, match="not a section"):
        apply_overrides({"seed": 1}, ["seed.x=1"])


def test_model_section_is_checked_against_the_architecture_before_data(tmp_path):
    """The model section is validated with the config (no data read, no model built): unknown
    keys with a suggestion, wrong kinds, unknown architectures; upstream names are accepted
    and the section is kept as written (the trainer logs the mlip names)."""
    cfg = base()
    cfg["model"] = {"r_max": 4.0, "channels": 8, "anything": [1, 2]}
    assert "model.anything" in error_of(tmp_path, cfg)
    cfg["model"] = {"r_max": 4.0, "chanels": 8}
    assert "did you mean 'model.channels'" in error_of(tmp_path, cfg)
    cfg["model"] = {"num_layers": 2.5}
    assert "model.num_layers" in error_of(tmp_path, cfg) and "integer" in error_of(tmp_path, cfg)
    cfg["model"] = {"parity": "yes"}
    assert "model.parity" in error_of(tmp_path, cfg)
    cfg["model"] = {"architecture": "allegro"}
    assert "model.architecture" in error_of(tmp_path, cfg)
    cfg["model"] = {"architecture": "mace", "max_ell": 2, "num_channels": 8}  # mace-torch's names
    assert load_config(write(tmp_path, cfg))["model"] == {"architecture": "mace", "max_ell": 2, "num_channels": 8}
    cfg["model"] = {"architecture": "mace", "max_ell": 2, "l_max": 2}
    assert "same hyperparameter" in error_of(tmp_path, cfg)
    cfg["model"] = {"r_max": -1.0}
    assert "model.r_max" in error_of(tmp_path, cfg)
    cfg["model"] = {"type_names": ["Si"]}
    assert "data.type_names" in error_of(tmp_path, cfg)


def test_stage_two_and_loss_consistency(tmp_path):
    cfg = base()
    cfg["stage_two"] = {"enabled": True}
    cfg["optim"] = {"max_epochs": 8}
    assert load_config(write(tmp_path, cfg))["stage_two"]["start_epoch"] == 6
    cfg["stage_two"] = {"enabled": True, "energy_weight": 0, "forces_weight": 0}
    assert "stage-two loss weights are zero" in error_of(tmp_path, cfg)
    cfg = base()
    cfg["loss"] = {"energy_weight": 0, "forces_weight": 0, "stress_weight": 0}
    assert "all loss weights are zero" in error_of(tmp_path, cfg)


def test_cli_reports_config_errors_as_one_line(tmp_path, capsys):
    cfg = base()
    cfg["optim"] = {"max_epoch": 3}
    code = main(["train", write(tmp_path, cfg)])
    err = capsys.readouterr().err
    assert code == 2
    assert "did you mean 'optim.max_epochs'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_show_keys_lists_every_key(capsys):
    assert main(["train", "--show-keys"]) == 0
    out = capsys.readouterr().out
    assert "optim.lr = 0.005" in out and "data.E0s" in out and "stage_two.start_epoch" in out
    assert len(describe()) > 50


def test_every_model_key_of_every_architecture_is_explained(capsys):
    from mlip.nn.build import ARCHITECTURES, load_architectures
    from mlip.nn.hyperparameters import hyperparameter_doc

    load_architectures()
    missing = [f"{a.name}.{k}" for a in ARCHITECTURES.values() for k in a.hyperparameters()
               if not hyperparameter_doc(a.name, k)]
    assert not missing, f"add these to mlip/nn/hyperparameters.py: {missing}"
    assert main(["train", "--show-keys"]) == 0
    out = capsys.readouterr().out
    assert "model.correlation = 3  (mace)  # order of the symmetric contraction" in out
    assert "model.l_max = 3  (mace)  # highest rotation order of the edge spherical harmonics" in out
    assert "(also: max_ell)" in out and "passed to the model as is" not in out


def test_schema_docs_exist():
    def walk(s):
        for k, v in s.items():
            if isinstance(v, dict):
                yield from walk(v)
            else:
                yield k, v
    assert all(field.doc for _, field in walk(SCHEMA))


def test_validate_without_files_checks():
    cfg = validate({"data": {"train_file": "not/checked.xyz"}}, check_files=False)
    assert cfg["data"]["train_file"] == "not/checked.xyz"
    with pytest.raises(InputError, match="data.train_file"):
        validate({}, check_files=False)
