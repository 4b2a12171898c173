"""The short public API (``mlip.train``, ``mlip.load_model``, ``mlip.export``,
``mlip.MLIPCalculator``) and the example files shipped as package data (``mlip.examples``)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

import mlip
from mlip.errors import InputError
from mlip.demo import copy_examples
from mlip.examples import example_files, example_path
from test_train_helpers import tiny_config, write_config, write_frames

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLIC = {"MLIPCalculator", "export", "load_model", "train"}


def _python(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (import order and sys.modules start empty)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_all_lists_exactly_the_public_names_and_each_resolves():
    assert set(mlip.__all__) == PUBLIC and len(mlip.__all__) == len(PUBLIC)
    for name in mlip.__all__:
        assert callable(getattr(mlip, name)), name
    assert PUBLIC <= set(dir(mlip))
    from mlip.deploy.calculator import MLIPCalculator
    assert mlip.MLIPCalculator is MLIPCalculator
    assert mlip.train is sys.modules["mlip.train"]  # the package itself, callable
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        mlip.nonsense


def test_import_mlip_and_mlip_train_stay_light():
    res = _python("import sys, mlip, mlip.train\n"
                  "from mlip.train.config import load_config\n"
                  "assert callable(mlip.train), type(mlip.train)\n"
                  "heavy = sorted(m for m in ('torch', 'e3nn', 'ase', 'matplotlib') if m in sys.modules)\n"
                  "print('heavy:', heavy)")
    assert res.returncode == 0, res.stderr
    assert "heavy: []" in res.stdout


@pytest.mark.parametrize("order", [
    # the public name first, then a submodule (which rebinds the attribute mlip.train) ...
    "import mlip\nt = mlip.train\nfrom mlip.train.config import validate\nimport mlip.train.cli",
    # ... and a submodule first, then the public name
    "from mlip.train.config import validate\nimport mlip.train.cli\nimport mlip\nt = mlip.train",
    "from mlip import train as t\nfrom mlip.train import config\nimport mlip",
])
def test_mlip_train_is_callable_whatever_was_imported_first(order):
    res = _python(order + "\nimport sys\nassert t is mlip.train is sys.modules['mlip.train']\n"
                  "assert callable(mlip.train) and callable(mlip.train.config.validate)\nprint('ok')")
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def _energy_of_model(model, atoms) -> float:
    """Total energy in eV of ``atoms`` from an mlip Potential (the checkpoint's network itself)."""
    from mlip.data import GraphDataset, collate
    from mlip.data import keys as K
    from mlip.data.frames import frame_from_atoms

    dtype = next(model.parameters()).dtype
    ds = GraphDataset([frame_from_atoms(atoms)], model.type_names, model.r_max, dtype)
    out = model(collate(ds.graphs), compute_forces=False, compute_stress=False)
    return float(out[K.TOTAL_ENERGY][0].detach())


def test_train_dict_then_load_model_export_and_calculator_agree(tmp_path):
    train_file = write_frames(str(tmp_path / "train.extxyz"), 10, seed=3)
    cfg = tiny_config(tmp_path, train_file, optim={"lr": 0.01, "max_epochs": 1})
    result = mlip.train(cfg, echo=False)
    assert os.path.isfile(result["best_model"]) and result["run_dir"] == cfg["output_dir"]

    # the package still imports its submodules after being called, and stays callable
    from mlip.train.config import validate
    assert validate(cfg)["optim"]["max_epochs"] == 1 and callable(mlip.train)

    model = mlip.load_model(result["best_model"])
    assert not model.training and model.type_names == ["C", "Si"]
    exported = str(tmp_path / "tiny.nequip.pth")
    metadata = mlip.export(result["best_model"], exported)
    assert os.path.isfile(exported) and metadata

    import ase.io
    atoms = ase.io.read(train_file, index=0)
    e_checkpoint = _energy_of_model(model, atoms)
    atoms.calc = mlip.MLIPCalculator(exported)
    e_exported = atoms.get_potential_energy()
    assert np.isfinite(e_checkpoint) and abs(e_exported - e_checkpoint) < 1e-6, (e_exported, e_checkpoint)


def test_train_yaml_path_with_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative data path is taken from the current directory
    write_frames("user.extxyz", 10, seed=5)
    cfg = tiny_config(tmp_path, "user.extxyz", optim={"lr": 0.01, "max_epochs": 3})
    path = write_config(str(tmp_path / "run.yaml"), cfg)
    out_dir = str(tmp_path / "override_run")
    result = mlip.train(path, overrides=["optim.max_epochs=1", f"output_dir={out_dir}"], echo=False)
    assert result["run_dir"] == out_dir and os.path.isfile(result["best_model"])
    resolved = yaml.safe_load(open(os.path.join(out_dir, "config.yaml")))
    assert resolved["optim"]["max_epochs"] == 1  # the override, not the file's 3
    # the same run again: its checkpoint is there, and resume=False refuses to start over it
    with pytest.raises(InputError):
        mlip.train(path, overrides=["optim.max_epochs=1", f"output_dir={out_dir}"], resume=False, echo=False)


def test_bad_arguments_are_one_line_errors(tmp_path):
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="missing.yaml: file not found"):
        mlip.train(missing)
    with pytest.raises(InputError, match="data.train_file"):
        mlip.train({"data": {"train_file": str(tmp_path / "nothing.extxyz")}})
    with pytest.raises(TypeError, match="path to a YAML file or a dict"):
        mlip.train(42)
    with pytest.raises(InputError, match="missing.pt: file not found"):
        mlip.load_model(str(tmp_path / "missing.pt"))
    with pytest.raises(InputError, match="must end in '.nequip.pth'"):
        mlip.export(str(tmp_path / "missing.pt"), str(tmp_path / "model.pth"))


def test_examples_are_package_data_and_the_checkout_paths_point_at_them():
    files = example_files()
    for rel in ("data/si_train.extxyz", "data/si_test.extxyz", "data/LICENSE-mlearn-si", "data/README.md",
                "configs/example.yaml", "configs/3bpa.yaml", "configs/rmd17_ethanol.yaml"):
        assert rel in files, rel
    assert example_path("data", "si_test.extxyz").startswith(os.path.join(REPO, "mlip", "examples"))
    # README and scripts say configs/example.yaml and data/si_test.extxyz: one copy, not two
    for rel in files:
        assert os.path.samefile(os.path.join(REPO, rel), example_path(*rel.split("/"))), rel
    from mlip.deploy.md import DEFAULT_STRUCTURE
    assert os.path.samefile(DEFAULT_STRUCTURE, example_path("data", "si_test.extxyz"))


def test_copy_examples_gives_a_folder_where_the_readme_commands_work(tmp_path, monkeypatch):
    from mlip.train.config import load_config

    dest = tmp_path / "examples"
    written = copy_examples(str(dest))
    assert len(written) == len(example_files())
    monkeypatch.chdir(dest)
    for name in ("example.yaml", "mace_example.yaml"):
        load_config(os.path.join("configs", name))  # every data file it names is found from here
    assert copy_examples(str(dest)) == []  # identical files are left alone
    (dest / "configs" / "example.yaml").write_text("seed: 1\n")  # a user's edit is never overwritten
    with pytest.raises(InputError, match="example.yaml: exists with other content"):
        copy_examples(str(dest))
    assert (dest / "configs" / "example.yaml").read_text() == "seed: 1\n"
    with pytest.raises(InputError, match="not a folder"):
        copy_examples(str(dest / "configs" / "example.yaml"))


def test_demo_copy_examples_and_default_structures(tmp_path, capsys):
    from mlip.cli import main

    assert main(["demo", "--copy-examples", str(tmp_path / "ex")]) == 0
    assert "mlip train configs/example.yaml" in capsys.readouterr().out
    assert (tmp_path / "ex" / "data" / "si_train.extxyz").is_file()
    assert main(["demo", "--limit", "1"]) == 0  # no file given: the shipped Si example
    assert "si_test.extxyz:0" in capsys.readouterr().out


def test_benchmark_data_root_defaults_to_the_shared_data_beside_a_checkout():
    from mlip.benchmark_cli import default_data_root

    # (an installed mlip has no default and asks for --data-root: tests/test_wheel.py)
    assert os.path.normpath(default_data_root()) == os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
