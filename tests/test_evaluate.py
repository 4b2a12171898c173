"""``mlip evaluate``: a table of MAE/RMSE, a per-structure CSV and parity plots, from a model
file or a training checkpoint; the numbers agree with a direct computation."""
import csv
import json
import os

import numpy as np
import pytest
import torch
from test_train_helpers import TINY_MODEL, write_frames

from mlip.checkpoint import model_record, save_model_file
from mlip.cli import main
from mlip.data import read_frames
from mlip.nn import build_model

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluate")
    data = write_frames(str(folder / "lj_test.extxyz"), 5, seed=21)
    torch.manual_seed(0)
    config = dict(TINY_MODEL, avg_num_neighbors=18.0, atomic_energy_shifts=[-7.5, -3.0], atomic_energy_scales=0.3)
    model = build_model(config, ["C", "Si"], "float64")
    path = str(folder / "model.pt")
    save_model_file(path, model_record(config, ["C", "Si"], "float64", model.state_dict()))
    return folder, path, data, model


def test_evaluate_prints_table_writes_csv_and_parity_plots(model_and_data, capsys):
    folder, path, data, model = model_and_data
    out = str(folder / "eval")
    assert main(["evaluate", path, data, "-o", out]) == 0
    text = capsys.readouterr().out
    assert "energy MAE [meV/atom]" in text and "forces RMSE [meV/A]" in text and "stress RMSE [meV/A^3]" in text
    assert "lj_test" in text
    rows = list(csv.DictReader(open(os.path.join(out, "lj_test_per_structure.csv"))))
    assert len(rows) == 5 and rows[0]["source"].endswith(":0") and int(rows[0]["num_atoms"]) == 8
    for q in ("energy", "forces", "stress"):
        with open(os.path.join(out, f"lj_test_parity_{q}.png"), "rb") as fh:
            assert fh.read(8) == PNG
    metrics = json.load(open(os.path.join(out, "lj_test_metrics.json")))

    # the same numbers computed directly
    frames = read_frames(data)
    from mlip.data import TypeMapper, collate, frame_to_graph
    batch = collate([frame_to_graph(f, TypeMapper(["C", "Si"]), model.r_max) for f in frames])
    pred = model(batch, compute_forces=True, compute_stress=True)
    e_err = (pred["total_energy"].detach().numpy() - np.array([f.energy for f in frames])) / 8
    f_err = pred["forces"].detach().numpy() - np.concatenate([f.forces for f in frames])
    s_err = pred["stress"].detach().numpy() - np.stack([f.stress for f in frames])
    assert metrics["energy_mae"] == pytest.approx(np.abs(e_err).mean(), rel=1e-9)
    assert metrics["forces_rmse"] == pytest.approx(np.sqrt((f_err ** 2).mean()), rel=1e-9)
    assert metrics["stress_rmse"] == pytest.approx(np.sqrt((s_err ** 2).mean()), rel=1e-9)
    np.testing.assert_allclose([float(r["energy_error_meV_per_atom"]) for r in rows], 1e3 * e_err, rtol=1e-6)
    assert f"{1e3 * metrics['forces_rmse']:.3f}" in text


def test_evaluate_missing_labels_and_files_are_user_errors(model_and_data, tmp_path, capsys):
    import ase
    import ase.io

    folder, path, data, _ = model_and_data
    assert main(["evaluate", path, str(tmp_path / "nothing.xyz")]) == 2
    assert "nothing.xyz" in capsys.readouterr().err
    unlabelled = str(tmp_path / "bare.xyz")
    ase.io.write(unlabelled, ase.Atoms("SiC", positions=[[0, 0, 0], [1.9, 0, 0]]))
    assert main(["evaluate", path, unlabelled, "-o", str(tmp_path / "e")]) == 2
    assert "no energy or forces labels" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nomodel.pt"), data]) == 2


def test_evaluate_a_training_checkpoint_uses_ema(tmp_path, capsys):
    from test_train_helpers import tiny_config

    from mlip.train.config import validate
    from mlip.train.trainer import train

    data = write_frames(str(tmp_path / "lj.extxyz"), 8, seed=2)
    result = train(validate(tiny_config(tmp_path, data, optim={"max_epochs": 1})), echo=False)
    out_ema, out_raw = str(tmp_path / "ema"), str(tmp_path / "raw")
    assert main(["evaluate", result["checkpoint"], data, "-o", out_ema, "--no-plots"]) == 0
    assert main(["evaluate", result["checkpoint"], data, "-o", out_raw, "--no-plots", "--no-ema"]) == 0
    assert main(["evaluate", result["last_model"], data, "-o", str(tmp_path / "last"), "--no-plots"]) == 0
    capsys.readouterr()
    m = {k: json.load(open(os.path.join(str(tmp_path / k), "lj_metrics.json"))) for k in ("ema", "raw", "last")}
    assert m["ema"]["forces_rmse"] == pytest.approx(m["last"]["forces_rmse"], rel=1e-12)
    assert m["ema"]["forces_rmse"] != m["raw"]["forces_rmse"]
    assert not any(f.endswith(".png") for f in os.listdir(out_ema))


def test_evaluate_an_hdf5_folder_equals_the_file(model_and_data, capsys):
    from mlip.data.hdf5 import write_shards

    folder, path, data, model = model_and_data
    write_shards(read_frames(data), str(folder / "lj_h5"), frames_per_shard=2)
    assert main(["evaluate", path, data, "-o", str(folder / "e1")]) == 0
    assert main(["evaluate", path, str(folder / "lj_h5") + "/", "-o", str(folder / "e2")]) == 0
    a = json.load(open(os.path.join(folder, "e1", "lj_test_metrics.json")))
    b = json.load(open(os.path.join(folder, "e2", "lj_h5_metrics.json")))
    assert a.keys() == b.keys()
    for key in a:
        if a[key] is None:  # a quantity without labels
            assert b[key] is None, key
        else:
            assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), key
    rows = list(csv.DictReader(open(os.path.join(folder, "e2", "lj_h5_per_structure.csv"))))
    assert [r["source"].rsplit("/", 1)[-1] for r in rows] == ["shard_00000.h5:0", "shard_00000.h5:1",
                                                             "shard_00001.h5:0", "shard_00001.h5:1",
                                                             "shard_00002.h5:0"]
