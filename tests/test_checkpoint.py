"""Model files: round trip, atomic writes, and loading never executes pickled code."""
import os
import pickle

import pytest
import torch

from mlip.checkpoint import atomic_save, build_from_record, load_file, load_model, model_record, save_model_file
from mlip.errors import InputError
from mlip.nn import build_model

CFG = dict(architecture="nequip", num_layers=1, channels=4, l_max=1, r_max=3.0, avg_num_neighbors=3.0,
           atomic_energy_shifts=[-1.0, -2.0])


def test_round_trip_and_float64_rebuild(tmp_path):
    torch.manual_seed(0)
    model = build_model(CFG, ["H", "O"], "float32")
    path = str(tmp_path / "m.pt")
    save_model_file(path, model_record(CFG, ["H", "O"], "float32", model.state_dict()))
    loaded = load_model(path)
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    as64 = build_from_record(load_file(path)["model"], dtype="float64")
    assert next(as64.parameters()).dtype == torch.float64


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickled_code_is_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": "mlip-1", "model": _Evil()}, str(path), pickle_module=pickle)
    with pytest.raises(InputError, match="not a readable mlip checkpoint"):
        load_file(str(path))
    assert not (tmp_path / "pwned").exists()


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    atomic_save({"a": torch.ones(2)}, path)

    def crash_halfway(obj, fh):  # a crash after part of the new file was written
        fh.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")] == []


def test_wrong_format_named(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.ones(1)}, str(path))
    with pytest.raises(InputError, match="x.pt: not an mlip checkpoint"):
        load_file(str(path))


def test_exported_torchscript_is_refused_before_loading(tmp_path):
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    path = str(tmp_path / "m.nequip.pth")
    torch.jit.save(scripted, path)
    with pytest.raises(InputError, match="exported TorchScript model, not a checkpoint"):
        load_file(path)
