"""Fine-tuning from a trained model: copied weights, frozen parameters, a new species."""
import glob
import os

import numpy as np
import pytest
import torch

from mlip.errors import InputError
from test_train_helpers import lj_frames, tiny_config, write_frames


def _first_checkpoint(run_dir):
    return torch.load(sorted(glob.glob(os.path.join(run_dir, "checkpoints", "ckpt-*.pt")))[0], weights_only=True)


@pytest.fixture(scope="module")
def foundation(tmp_path_factory):
    from mlip.train.config import validate
    from mlip.train.trainer import train

    tmp = tmp_path_factory.mktemp("foundation")
    data = write_frames(str(tmp / "train.extxyz"), 10, seed=11)
    raw = tiny_config(tmp, data, optim={"lr": 0.01, "max_epochs": 1})
    raw["output_dir"] = str(tmp / "run")
    return train(validate(raw), echo=False)["best_model"]


def _ge_data(path, n=10):
    """LJ structures where some C atoms became Ge (a species the foundation does not know)."""
    import ase.io

    frames = lj_frames(n, seed=21)
    for i, atoms in enumerate(frames):
        calc = atoms.calc
        symbols = atoms.get_chemical_symbols()
        for j, s in enumerate(symbols):
            if s == "C" and (i + j) % 2 == 0:
                symbols[j] = "Ge"
        atoms.set_chemical_symbols(symbols)
        atoms.calc = calc
        calc.atoms = atoms
    ase.io.write(path, frames, format="extxyz")
    return path


def test_finetune_new_species_and_frozen_layers(tmp_path, foundation):
    from mlip.checkpoint import load_file, load_model
    from mlip.train.config import validate
    from mlip.train.trainer import train

    data = _ge_data(str(tmp_path / "ge.extxyz"))
    raw = tiny_config(tmp_path, data, optim={"lr": 0.01, "max_epochs": 2}, train={"keep_checkpoints": 50},
                      finetune={"from": foundation, "freeze": ["embedding", 0]})
    raw.pop("model")  # architecture and statistics come from the foundation
    out = train(validate(raw), echo=False)
    old = load_file(foundation)["model"]
    start = _first_checkpoint(out["run_dir"])["model"]  # the weights before the first step
    end = load_file(out["last_model"])
    new_state = _first_checkpoint(out["run_dir"])["model"]["state_dict"]
    assert start["type_names"] == old["type_names"] + ["Ge"]
    ref = old["state_dict"]  # a model file holds the EMA weights
    # copied weights start equal; per-species tensors get the old rows, a fresh row for Ge
    for key, value in ref.items():
        if "scale_shift" in key:
            continue
        if value.shape == new_state[key].shape:
            assert torch.equal(value, new_state[key]), key
        else:
            (d,) = [d for d in range(value.dim()) if value.shape[d] != new_state[key].shape[d]]
            assert torch.equal(value, new_state[key].narrow(d, 0, value.shape[d])), key
    assert new_state["energy_model.embedding.weight"].shape[0] == 3
    # so the starting model is the foundation itself on structures of the old species
    from mlip.checkpoint import build_from_record
    from mlip.data.frames import frame_from_atoms
    from mlip.data.graph import TypeMapper, collate, frame_to_graph

    frame = frame_from_atoms(lj_frames(1, seed=99)[0])
    preds = []
    for m in (load_model(foundation), build_from_record(start)):
        batch = collate([frame_to_graph(frame, TypeMapper(m.type_names), m.r_max, torch.float64)])
        pred = m(batch, compute_forces=True)
        preds.append((pred["total_energy"].detach(), pred["forces"].detach()))
    assert torch.allclose(preds[0][0], preds[1][0], rtol=0, atol=1e-10)
    assert torch.allclose(preds[0][1], preds[1][1], rtol=0, atol=1e-10)
    # statistics: E0s of old species and avg_num_neighbors kept, Ge got a fitted E0
    cfg_old, cfg_new = old["config"], end["model"]["config"]
    assert cfg_new["avg_num_neighbors"] == cfg_old["avg_num_neighbors"]
    assert cfg_new["atomic_energy_shifts"][:2] == cfg_old["atomic_energy_shifts"]
    assert np.isfinite(cfg_new["atomic_energy_shifts"][2])
    assert cfg_new["atomic_energy_scales"][:2] == cfg_old["atomic_energy_scales"]
    # frozen parameters did not move (raw weights at the end, from the last checkpoint); others did
    last = torch.load(sorted(glob.glob(os.path.join(out["run_dir"], "checkpoints", "ckpt-*.pt")))[-1],
                      weights_only=True)["model"]["state_dict"]
    frozen = [k for k in last if k.startswith(("energy_model.embedding.", "energy_model.layers.0."))
              and k in dict(load_model(foundation).named_parameters())]
    assert frozen
    for key in frozen:
        assert torch.equal(last[key], new_state[key]), key
    assert not torch.equal(last["energy_model.readout.w1"], new_state["energy_model.readout.w1"])
    # the fine-tuned model predicts for structures with the new species
    model = load_model(out["best_model"])
    assert model.type_names == ["C", "Si", "Ge"]
    assert "valid" in out["results"] and np.isfinite(out["results"]["valid"]["forces_rmse"])


def test_finetune_config_errors(tmp_path, foundation):
    from mlip.train.config import validate
    from mlip.train.trainer import Trainer

    data = write_frames(str(tmp_path / "t.extxyz"), 6, seed=2)
    with pytest.raises(InputError, match="finetune.from"):
        validate(tiny_config(tmp_path, data, finetune={"freeze": [0]}))
    with pytest.raises(InputError, match="selects no parameter"):
        raw = tiny_config(tmp_path, data, finetune={"from": foundation, "freeze": ["nonexistent"]})
        raw.pop("model")
        Trainer(validate(raw), echo=False)
    raw = tiny_config(tmp_path, data, finetune={"from": foundation})
    raw["model"]["channels"] = 8
    raw["output_dir"] = str(tmp_path / "run2")
    with pytest.raises(InputError, match="model.channels"):
        Trainer(validate(raw), echo=False)
