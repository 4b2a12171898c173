"""``mlip check``: passes on good models (mlip's own, float64 and float32, and an independent
smooth pair potential), FAILS with a non-zero exit on deliberately broken TorchScript models
(orientation-dependent energy, forces that are not -dE/dr, a hard cutoff)."""
from typing import Dict

import numpy as np
import pytest
import torch

from test_deploy_common import TINY_CONFIG, make_checkpoint, molecule, triclinic

GOOD, ORIENTATION, BAD_FORCES, HARD_CUTOFF, ABSOLUTE = 0, 1, 2, 3, 4


class PairModel(torch.nn.Module):
    """A Morse pair potential that speaks the pair_style nequip contract; ``mode`` breaks it."""

    def __init__(self, r_max: float, mode: int):
        super().__init__()
        self.r_max = r_max
        self.hard_cutoff = mode == HARD_CUTOFF
        self.orientation = mode == ORIENTATION
        self.absolute = mode == ABSOLUTE
        self.bad_forces = mode == BAD_FORCES

    def forward(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        pos = data["pos"].detach().requires_grad_(True)
        n = pos.shape[0]
        cell = data["cell"].view(1, 3, 3)
        strain = torch.zeros(1, 3, 3, dtype=pos.dtype).requires_grad_(True)
        sym = 0.5 * (strain + strain.transpose(1, 2))
        pos_s = pos + pos @ sym[0]
        cell_s = cell + torch.bmm(cell, sym)
        i, j = data["edge_index"][0], data["edge_index"][1]
        vec = pos_s[j] - pos_s[i] + data["edge_cell_shift"] @ cell_s[0]
        r = torch.linalg.vector_norm(vec, dim=-1)
        x = r / self.r_max
        if self.hard_cutoff:
            env = (x <= 1.0).to(r.dtype)
        else:
            env = (1 - 28 * x ** 6 + 48 * x ** 7 - 21 * x ** 8) * (x < 1.0).to(r.dtype)
        pair = env * (torch.exp(-3.0 * (r - 2.3)) - 2.0 * torch.exp(-1.5 * (r - 2.3)))
        if self.orientation:
            pair = pair * (1.0 + 0.3 * (vec[:, 2] / r) ** 2)
        atomic = torch.zeros(n, dtype=pos.dtype).index_add(0, i, 0.5 * pair)
        atomic = atomic - 3.0 - 0.5 * data["atom_types"].to(pos.dtype)
        if self.absolute:
            atomic = atomic + 0.05 * torch.sin(pos_s[:, 0])
        total = atomic.sum()
        grads = torch.autograd.grad([total], [pos, strain], allow_unused=True)
        g_pos, g_strain = grads[0], grads[1]
        assert g_pos is not None and g_strain is not None
        forces = -g_pos
        if self.bad_forces:
            forces = 0.7 * forces
        return {"atomic_energy": atomic.view(n, 1).detach(), "total_energy": total.view(1, 1).detach(),
                "forces": forces.detach(), "virial": (-g_strain).detach()}


def save_pair_model(path, mode, r_max=4.0):
    module = torch.jit.script(PairModel(r_max, mode))
    torch.jit.save(module, str(path), _extra_files={"r_max": str(r_max), "type_names": "Si C", "num_types": "2",
                                                    "allow_tf32": "0", "model_dtype": "float64"})
    return str(path)


def _run(argv, capsys):
    from mlip.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _failed_checks(table):
    return {line.split("  ")[0].strip() for line in table.splitlines() if " FAIL " in line}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mlip_model_passes(tmp_path, capsys, dtype):
    from mlip.deploy.export import export_model

    ck = make_checkpoint(tmp_path / "m.pth", dtype=dtype, seed=11)
    x = str(tmp_path / "m.nequip.pth")
    export_model(ck, x)
    code, out, err = _run(["check", x, "--md-steps", "40", "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0, out
    assert "model certified" in out and " FAIL " not in out
    for name in ("rotation: forces", "reflection: energy", "translation: stress", "permutation: forces",
                 "cell basis: energy", "forces = -dE/dr", "stress = dE/de", "NVE energy drift", "smooth at r_max"):
        assert name in out
    import json
    rows = json.loads((tmp_path / "r.json").read_text())
    assert rows and all(r["status"] == "PASS" for r in rows)


def test_independent_pair_potential_passes(tmp_path, capsys):
    code, out, _ = _run(["check", save_pair_model(tmp_path / "good.nequip.pth", GOOD)], capsys)
    assert code == 0, out


@pytest.mark.parametrize("mode,expected", [
    (ORIENTATION, {"rotation: energy", "rotation: forces", "rotation: stress"}),
    (ABSOLUTE, {"translation: energy", "translation: forces"}),
    (BAD_FORCES, {"forces = -dE/dr (finite diff.)", "NVE energy drift"}),
    (HARD_CUTOFF, {"smooth at r_max"}),
], ids=["not-rotation-invariant", "not-translation-invariant", "forces-not-gradient", "hard-cutoff"])
def test_broken_models_fail(tmp_path, capsys, mode, expected):
    path = save_pair_model(tmp_path / "broken.nequip.pth", mode)
    code, out, err = _run(["check", path], capsys)
    assert code == 1, out
    assert "FAILED" in err
    failed = _failed_checks(out)
    assert expected <= failed, (expected, failed, out)
    if mode == BAD_FORCES:   # symmetric, just not conservative: the symmetry rows still pass
        assert not any(f.startswith(("rotation", "reflection", "permutation")) for f in failed), out
    if mode == HARD_CUTOFF:  # energy jumps as atoms cross r_max (in the MD too), but derivatives are right
        assert failed <= {"smooth at r_max", "NVE energy drift"}, out


def test_structures_file_and_so3_model(tmp_path, capsys):
    import ase.io
    from mlip.deploy.export import export_model

    frames = [molecule(seed=1), triclinic(seed=2)]
    frames[0].info["name"] = "my-molecule"
    ase.io.write(tmp_path / "s.extxyz", frames)
    config = dict(TINY_CONFIG, parity=False)
    ck = make_checkpoint(tmp_path / "so3.pth", seed=2, config=config)
    x = str(tmp_path / "so3.nequip.pth")
    export_model(ck, x)
    code, out, _ = _run(["check", x, str(tmp_path / "s.extxyz"), "--md-steps", "20"], capsys)
    assert code == 0, out
    assert "my-molecule" in out and "s.extxyz:1" in out
    assert "SKIP" in out and "parity: false" in out


def test_check_input_errors(tmp_path, capsys):
    import ase.io
    from ase import Atoms

    model = save_pair_model(tmp_path / "good.nequip.pth", GOOD)
    code, _, err = _run(["check", str(tmp_path / "missing.nequip.pth")], capsys)
    assert code == 2 and "file not found" in err
    ase.io.write(tmp_path / "o.extxyz", Atoms("SiO", positions=[[0, 0, 0], [1.6, 0, 0]]))
    code, _, err = _run(["check", model, str(tmp_path / "o.extxyz")], capsys)
    assert code == 2 and "'O'" in err
    code, _, err = _run(["check", model, str(tmp_path / "none.extxyz")], capsys)
    assert code == 2 and "file not found" in err
