"""``mlip export``: metadata, standalone loading (no mlip on the path), equality with the
in-Python model, float64 option, EMA weights, and clear errors for bad inputs."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from test_deploy_common import (TINY_CONFIG, TYPE_NAMES, contract_inputs, make_checkpoint, molecule,
                                python_model_outputs, triclinic)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from mlip.cli import main

    d = tmp_path_factory.mktemp("export")
    ck64 = make_checkpoint(d / "m64.pth", dtype="float64", seed=3)
    ck32 = make_checkpoint(d / "m32.pth", dtype="float32", seed=4)
    paths = {"ck64": ck64, "ck32": ck32, "x64": str(d / "a.nequip.pth"), "x32": str(d / "b.nequip.pth"),
             "x32as64": str(d / "c.nequip.pth"), "dir": d}
    assert main(["export", ck64, "-o", paths["x64"]]) == 0
    assert main(["export", ck32, "-o", paths["x32"], "--allow-tf32"]) == 0
    assert main(["export", ck32, "-o", paths["x32as64"], "--dtype", "float64"]) == 0
    return paths


def _meta(path):
    keys = ("r_max", "type_names", "num_types", "allow_tf32", "mlip_version", "model_dtype", "config", "units",
            "model_r_max", "num_message_layers")
    extra = {k: "" for k in keys}
    torch.jit.load(path, _extra_files=extra)
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in extra.items()}


def test_metadata(files):
    import mlip

    m = _meta(files["x64"])
    # LAMMPS' neighbour and ghost cutoff is the interaction range: layers x the network's cutoff
    assert float(m["model_r_max"]) == TINY_CONFIG["r_max"]
    assert int(m["num_message_layers"]) == TINY_CONFIG["num_layers"] > 1
    assert float(m["r_max"]) == TINY_CONFIG["num_layers"] * TINY_CONFIG["r_max"]
    assert m["type_names"] == "Si C" and m["num_types"] == "2"
    assert m["allow_tf32"] == "0" and _meta(files["x32"])["allow_tf32"] == "1"
    assert m["model_dtype"] == "float64" and _meta(files["x32"])["model_dtype"] == "float32"
    assert _meta(files["x32as64"])["model_dtype"] == "float64"
    assert m["mlip_version"] == mlip.__version__
    assert m["units"] == "metal"
    assert json.loads(m["config"])["r_max"] == TINY_CONFIG["r_max"]


@pytest.mark.parametrize("atoms_fn", [molecule, triclinic], ids=["molecule", "triclinic"])
def test_exported_equals_python_model_float64(files, atoms_fn):
    from mlip.checkpoint import load_model

    model = load_model(files["ck64"], dtype="float64")
    atoms = atoms_fn()
    ref, graph = python_model_outputs(model, atoms)
    out = torch.jit.load(files["x64"])(contract_inputs(graph))
    n = len(atoms)
    assert out["forces"].shape == (n, 3) and out["atomic_energy"].shape == (n, 1)
    assert out["virial"].shape == (1, 3, 3) and out["total_energy"].shape == (1, 1)
    assert all(v.dtype == torch.float64 for v in out.values())
    torch.testing.assert_close(out["total_energy"].view(-1), ref["total_energy"], atol=1e-10, rtol=0)
    torch.testing.assert_close(out["atomic_energy"], ref["atomic_energy"], atol=1e-10, rtol=0)
    torch.testing.assert_close(out["forces"], ref["forces"], atol=1e-10, rtol=0)
    torch.testing.assert_close(out["virial"], ref["virial"], atol=1e-10, rtol=0)
    assert abs(float(out["atomic_energy"].sum()) - float(out["total_energy"])) < 1e-10


def test_float32_export_and_float64_option(files):
    from mlip.checkpoint import build_from_record, load_file, load_model

    atoms = triclinic(seed=1)
    model32 = load_model(files["ck32"])
    assert next(model32.parameters()).dtype == torch.float32
    ref32, g32 = python_model_outputs(model32, atoms)
    out32 = torch.jit.load(files["x32"])(contract_inputs(g32))
    assert out32["forces"].dtype == torch.float64          # computed in float32, handed out as float64
    scale = max(1.0, float(ref32["forces"].abs().max()))
    torch.testing.assert_close(out32["forces"], ref32["forces"], atol=1e-4 * scale, rtol=0)
    torch.testing.assert_close(out32["total_energy"].view(-1), ref32["total_energy"], atol=1e-4, rtol=0)

    # --dtype float64 rebuilds the float32 weights in float64: equal to that model to 1e-10
    model64 = build_from_record(load_file(files["ck32"])["model"], dtype="float64")
    ref64, g64 = python_model_outputs(model64, atoms)
    out64 = torch.jit.load(files["x32as64"])(contract_inputs(g64))
    torch.testing.assert_close(out64["forces"], ref64["forces"], atol=1e-10, rtol=0)
    torch.testing.assert_close(out64["virial"], ref64["virial"], atol=1e-10, rtol=0)
    # and close to the float32 model (same weights)
    torch.testing.assert_close(out64["forces"], out32["forces"], atol=1e-4 * scale, rtol=0)


def test_ema_weights_are_exported(tmp_path):
    from mlip.checkpoint import load_model
    from mlip.cli import main

    ck = make_checkpoint(tmp_path / "ema.pth", seed=5, ema_seed=6)
    assert main(["export", ck, "-o", str(tmp_path / "ema.nequip.pth")]) == 0
    assert main(["export", ck, "-o", str(tmp_path / "raw.nequip.pth"), "--no-ema"]) == 0
    atoms = molecule()
    for name, use_ema in (("ema", True), ("raw", False)):
        ref, g = python_model_outputs(load_model(ck, use_ema=use_ema), atoms)
        out = torch.jit.load(str(tmp_path / f"{name}.nequip.pth"))(contract_inputs(g))
        torch.testing.assert_close(out["forces"], ref["forces"], atol=1e-10, rtol=0)


STANDALONE = textwrap.dedent("""
    import sys
    sys.modules["mlip"] = None          # any import of mlip now fails
    import os
    repo = os.path.realpath(sys.argv[3])
    assert all(os.path.realpath(p or ".") != repo for p in sys.path), sys.path
    try:
        import mlip  # noqa: F401
        raise SystemExit("mlip was importable")
    except ImportError:
        pass
    import torch
    extra = {k: "" for k in ("r_max", "per_edge_type_cutoff", "type_names", "num_types", "allow_tf32")}
    model = torch.jit.load(sys.argv[1], map_location="cpu", _extra_files=extra)
    assert float(extra["r_max"]) > 0 and extra["type_names"].decode().split() == ["Si", "C"]
    model.eval()
    frozen = torch.jit.freeze(model)   # what the LAMMPS plugin does
    case = torch.load(sys.argv[2], weights_only=True)
    for m in (model, frozen, frozen):
        out = m(dict(case["inputs"]))
        for key, ref in case["outputs"].items():
            assert out[key].dtype == torch.float64, key
            err = (out[key].detach() - ref).abs().max().item()
            assert err < 1e-10, (key, err)
    print("standalone-ok", sorted(out))
""")


def test_loads_without_mlip(files, tmp_path):
    """torch.jit.load in a fresh, isolated interpreter whose path holds no mlip."""
    from mlip.checkpoint import load_model

    ref, g = python_model_outputs(load_model(files["ck64"]), triclinic())
    case = {"inputs": contract_inputs(g),
            "outputs": {k: ref[k].detach() for k in ("forces", "atomic_energy", "virial")}}
    case_path = tmp_path / "case.pt"
    torch.save(case, case_path)
    script = tmp_path / "standalone.py"
    script.write_text(STANDALONE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run([sys.executable, "-I", str(script), files["x64"], str(case_path), REPO], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "standalone-ok" in res.stdout


def test_bad_inputs_give_one_line_errors(files, tmp_path, capsys):
    from mlip.cli import main

    # wrong extension (the plugin refuses anything but .nequip.pth)
    assert main(["export", files["ck64"], "-o", str(tmp_path / "model.pt")]) == 2
    assert ".nequip.pth" in capsys.readouterr().err
    # missing checkpoint
    assert main(["export", str(tmp_path / "nope.pth"), "-o", str(tmp_path / "x.nequip.pth")]) == 2
    assert "file not found" in capsys.readouterr().err
    # not a checkpoint: a text file, and an exported model given as checkpoint
    bad = tmp_path / "bad.pth"
    bad.write_text("not a model\n")
    assert main(["export", str(bad), "-o", str(tmp_path / "x.nequip.pth")]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert main(["export", files["x64"], "-o", str(tmp_path / "x.nequip.pth")]) == 2
    assert "checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x.nequip.pth").exists()


def test_mace_export_equals_python_model(tmp_path):
    from mlip.checkpoint import load_model
    from mlip.deploy.export import export_model
    from mlip.nn.build import ARCHITECTURES, load_architectures

    load_architectures()
    if "mace" not in ARCHITECTURES:
        pytest.skip("MACE architecture not available")
    config = dict(architecture="mace", r_max=3.5, num_interactions=2, channels=4, max_L=1, l_max=2, correlation=2,
                  num_bessel=4, radial_hidden=8, radial_depth=2, readout_hidden=4, avg_num_neighbors=8.0)
    ck = make_checkpoint(tmp_path / "mace.pth", config=config, seed=1)
    x = str(tmp_path / "mace.nequip.pth")
    export_model(ck, x)
    ref, g = python_model_outputs(load_model(ck), triclinic())
    out = torch.jit.load(x)(contract_inputs(g))
    torch.testing.assert_close(out["forces"], ref["forces"], atol=1e-10, rtol=0)
    torch.testing.assert_close(out["virial"], ref["virial"], atol=1e-10, rtol=0)
    torch.testing.assert_close(out["atomic_energy"], ref["atomic_energy"], atol=1e-10, rtol=0)


class _RecordingEnergyModel(torch.nn.Module):
    """A stand-in network in ``dtype`` that records what it is given; its atomic energies (float64,
    as mlip's ScaleShift returns them) are the summed squared lengths of each atom's edges (eV)."""

    def __init__(self, dtype):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones((), dtype=dtype))
        self.seen = {}
        self.num_message_layers = 1

    def forward(self, data):
        from mlip.data import keys as K

        self.seen = {k: v.dtype for k, v in data.items()}
        vectors = data[K.EDGE_VECTORS]
        per_edge = self.weight * (vectors * vectors).sum(-1)
        energy = torch.zeros(data[K.POSITIONS].shape[0], dtype=per_edge.dtype).index_add(0, data[K.EDGE_INDEX][0],
                                                                                           per_edge)
        data[K.ATOMIC_ENERGY] = energy.to(torch.float64).unsqueeze(-1)
        return data


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_wrapper_translates_onto_the_potential(dtype, monkeypatch):
    """LammpsModel builds the Potential's graph from the plugin's dictionary (registry names;
    geometry in float64, the network's input cast to its dtype; registry-declared optional
    inputs passed on) and takes energy, forces and virial from the Potential's own code path."""
    from mlip.data import keys as K
    from mlip.data.frames import frames_from_atoms_list
    from mlip.data.graph import TypeMapper, frame_to_graph, to_device
    from mlip.deploy.export import LammpsModel
    from mlip.nn import Potential

    # an optional field declared in the registry only: it reaches the network with no other change
    monkeypatch.setitem(K.FIELDS, "edge_test_label", K.Field("edge_test_label", "edge", optional=True))
    net = _RecordingEnergyModel(dtype)
    potential = Potential(net, TYPE_NAMES, 3.5)
    graph = frame_to_graph(frames_from_atoms_list([triclinic()])[0], TypeMapper(TYPE_NAMES), 3.5, torch.float64)
    inputs = contract_inputs(graph)
    inputs["edge_test_label"] = torch.ones(inputs["edge_index"].shape[1], dtype=torch.float64)
    out = LammpsModel(potential, dtype)(dict(inputs))
    assert sorted(out) == ["atomic_energy", "forces", "total_energy", "virial"]
    assert all(v.dtype == torch.float64 and not v.requires_grad for v in out.values())
    seen = dict(net.seen)
    for name in (K.EDGE_VECTORS, K.POSITIONS, K.CELL, K.EDGE_CELL_SHIFT, "edge_test_label"):
        assert seen.pop(name) == dtype, name
    assert seen == {K.ATOM_TYPES: torch.long, K.EDGE_INDEX: torch.long, K.BATCH: torch.long,
                    K.NUM_ATOMS: torch.long, K.PBC: torch.bool}

    # the numbers of Potential.forward on the same structure: bit for bit for a float64 network
    ref = potential(to_device(graph, "cpu", dtype), compute_forces=True, compute_stress=True)
    if dtype == torch.float64:
        for key in ("forces", "virial", "atomic_energy"):
            assert torch.equal(out[key], ref[key]), key
        assert torch.equal(out["total_energy"].view(-1), ref[K.TOTAL_ENERGY])
    else:  # float64 geometry against float32 geometry
        torch.testing.assert_close(out["forces"], ref[K.FORCES].to(torch.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("missing", ["cell", "edge_cell_shift"])
def test_inputs_of_pair_style_allegro_are_refused(files, missing):
    """pair_style allegro passes ghost atoms as nodes and no cell / edge_cell_shift: a
    message-passing model cannot compute that exactly, so the exported model raises instead of
    filling in zeros (which gave wrong energies and forces with exit status 0)."""
    model = torch.jit.load(files["x64"])
    inputs = contract_inputs(python_model_outputs(__import__("mlip.checkpoint").checkpoint.load_model(files["ck64"]),
                                                  molecule())[1])
    model(inputs)  # the full input (a molecule: zero cell) is fine
    del inputs[missing]
    with pytest.raises(Exception, match="pair_style nequip"):
        model(inputs)
