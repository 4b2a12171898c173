"""The traced/compiled potential (mlip.nn.compiled) computes what the eager one does: energies,
forces, stress and the parameter gradients of a force loss, also on batches of other sizes than
the one it was traced with. The fast tier checks the traced graph as it is; compiling it with
inductor (slow: a C++ compile) is in the slow tier."""
import os
import shutil

import numpy as np
import pytest
import torch

from test_train_helpers import TINY_MODEL, lj_frames

from mlip.data import GraphDataset, collate
from mlip.data import keys as K
from mlip.nn import build_model
from mlip.nn.compiled import CompiledPotential

MACE_TINY = {"architecture": "mace", "r_max": 3.5, "num_interactions": 2, "channels": 4, "l_max": 2, "max_L": 1,
             "correlation": 3, "num_bessel": 4, "radial_hidden": 8, "radial_depth": 1}


def _batches(dtype):
    ds = GraphDataset([f for f in _frames()], ["C", "Si"], 3.5, dtype)
    g = ds.graphs
    # traced with 3 structures, then used on 4 (other sizes), on 1, and again on 3
    return [collate(g[0:3]), collate(g[3:7]), collate(g[7:8]), collate(g[8:11])]


def _frames():
    from mlip.data import frames_from_atoms_list

    atoms = lj_frames(6, seed=1) + lj_frames(5, seed=2, reps=3)
    rng = np.random.default_rng(0)
    for a in atoms[::2]:  # some without a cell: molecules and crystals in one batch
        a.pbc = False
        a.positions += rng.normal(scale=0.01, size=a.positions.shape)
    return frames_from_atoms_list(atoms)


def _grads(model, out, batch):
    loss = ((out[K.TOTAL_ENERGY] - batch[K.REF_ENERGY].to(out[K.TOTAL_ENERGY].dtype)) ** 2).sum() \
        + ((out[K.FORCES] - batch[K.REF_FORCES]) ** 2).sum() + (out[K.STRESS] ** 2).sum()
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params)


def test_traced_graph_equals_eager():
    torch.manual_seed(0)
    model = build_model(dict(TINY_MODEL, avg_num_neighbors=10.0), ["C", "Si"], torch.float64)
    traced = CompiledPotential(model, backend=None)
    for batch in _batches(torch.float64):
        for training in (False, True):
            ref = model(batch, compute_forces=True, compute_stress=True, training=training)
            out = traced(batch, compute_forces=True, compute_stress=True, training=training)
            for key in (K.TOTAL_ENERGY, K.FORCES, K.STRESS, K.VIRIAL):
                torch.testing.assert_close(out[key], ref[key], rtol=1e-10, atol=1e-12, msg=key)
            if training:
                for a, b in zip(_grads(model, out, batch), _grads(model, ref, batch)):
                    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # one graph per pattern of sizes (here: several structures or one) and mode
    assert len(traced._graphs) == 4


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler for the CPU kernel")
def test_traced_graph_holds_the_cpu_kernel():
    """The fused CPU message kernel stays in the traced graph as an opaque call (registered shapes
    and derivative), and that graph, its forces, stress and force-loss gradients equal the plain
    torch model's."""
    from mlip.ops import reference_ops

    torch.manual_seed(0)
    model = build_model(dict(TINY_MODEL, avg_num_neighbors=10.0), ["C", "Si"], torch.float64)
    traced = CompiledPotential(model, backend=None)
    batch = _batches(torch.float64)[1]
    out = traced(batch, compute_forces=True, compute_stress=True, training=True)
    (graph,) = traced._graphs.values()
    assert "mlip_cpu.contract" in graph.code
    with reference_ops():
        ref = model(batch, compute_forces=True, compute_stress=True, training=True)
        ref_grads = _grads(model, ref, batch)
    for key in (K.TOTAL_ENERGY, K.FORCES, K.STRESS):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-10, atol=1e-12, msg=key)
    for a, b in zip(_grads(model, out, batch), ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_untraceable_model_is_a_clear_error():
    # MACE groups atoms by species with data-dependent sizes: no single graph for all inputs
    model = build_model(dict(MACE_TINY, avg_num_neighbors=10.0), ["C", "Si"], torch.float64)
    with pytest.raises(ValueError, match="cannot be traced.*symmetric_contraction.py"):
        CompiledPotential(model, backend=None)(_batches(torch.float64)[0])


def test_traced_graph_sees_weight_updates():
    torch.manual_seed(0)
    model = build_model(dict(TINY_MODEL, avg_num_neighbors=10.0), ["C", "Si"], torch.float64)
    traced = CompiledPotential(model, backend=None)
    batch = _batches(torch.float64)[0]
    before = traced(batch)[K.TOTAL_ENERGY].detach()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    after = traced(batch)[K.TOTAL_ENERGY].detach()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, model(batch)[K.TOTAL_ENERGY].detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_inductor_compiled_equals_eager():
    torch.manual_seed(0)
    model = build_model(dict(TINY_MODEL, avg_num_neighbors=10.0), ["C", "Si"], torch.float32)
    compiled = CompiledPotential(model)
    for batch in _batches(torch.float32)[:2]:
        ref = model(batch, compute_forces=True, compute_stress=True, training=True)
        out = compiled(batch, compute_forces=True, compute_stress=True, training=True)
        for key in (K.TOTAL_ENERGY, K.FORCES, K.STRESS):
            torch.testing.assert_close(out[key], ref[key], rtol=1e-4, atol=1e-5, msg=key)
        for a, b in zip(_grads(model, out, batch), _grads(model, ref, batch)):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_train_compile_refuses_mace(tmp_path):
    from test_train_helpers import tiny_config, write_frames

    from mlip.errors import InputError
    from mlip.train.config import validate
    from mlip.train.trainer import train

    raw = tiny_config(tmp_path, write_frames(str(tmp_path / "d.extxyz"), 4), train={"compile": True})
    raw["model"] = dict(MACE_TINY)
    with pytest.raises(InputError, match=r"train.compile.*not supported for architecture 'mace' \(supported: nequip\)"):
        train(validate(raw), echo=False)


@pytest.mark.slow
def test_compiled_training_follows_eager_training(tmp_path):
    import glob

    from test_train_helpers import tiny_config, write_frames

    from mlip.train.config import validate
    from mlip.train.trainer import train

    data = write_frames(str(tmp_path / "d.extxyz"), 9, seed=4)
    runs = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        raw = tiny_config(tmp_path, data, train={"compile": compile_}, optim={"lr": 0.01, "max_epochs": 2})
        raw["output_dir"] = str(tmp_path / name)
        train(validate(raw), echo=False)
        path = sorted(glob.glob(str(tmp_path / name / "checkpoints" / "ckpt-*.pt")))[-1]
        runs[name] = torch.load(path, weights_only=True)["model"]["state_dict"]
    assert "training steps run a traced and compiled graph" in open(tmp_path / "compiled" / "log.txt").read()
    for key, value in runs["eager"].items():
        torch.testing.assert_close(runs["compiled"][key], value, rtol=1e-7, atol=1e-9, msg=key)


def test_compiled_step_under_ddp_matches_one_process(tmp_path, monkeypatch):
    """Under torchrun the compiled step bypasses DDP's hooks; the trainer averages gradients
    itself. 2 gloo processes must follow 1 process (the traced graph, uncompiled, for speed)."""
    from test_ddp import _assert_same_run, _latest, _torchrun
    from test_train_helpers import tiny_config, write_config, write_frames

    from mlip.train.config import validate
    from mlip.train.trainer import train

    monkeypatch.setenv("MLIP_COMPILE_BACKEND", "none")
    data = write_frames(str(tmp_path / "d.extxyz"), 15, seed=3)
    raw = tiny_config(tmp_path, data, data={"batch_size": 4, "valid_batch_size": 2},
                      train={"compile": True, "checkpoint_every_steps": 3}, optim={"lr": 0.01, "max_epochs": 2})
    raw["output_dir"] = str(tmp_path / "single")
    train(validate(raw), echo=False)
    ddp = dict(raw, output_dir=str(tmp_path / "ddp"))
    _torchrun(write_config(str(tmp_path / "ddp.yaml"), ddp))
    _assert_same_run(_latest(str(tmp_path / "single")), _latest(str(tmp_path / "ddp")))
    assert "traced and compiled graph" in open(tmp_path / "ddp" / "log.txt").read()


@pytest.mark.slow
def test_inductor_compiles_one_species_and_one_structure():
    """Inductor's vectorised CPU code generation (torch 2.13) cannot compile a scatter into a
    one-element tensor; a single structure and a single species used to produce one (the total
    energy, the gradient of the per-species energy correction). Training step, float32."""
    from mlip.data import frames_from_atoms_list

    torch.manual_seed(0)
    model = build_model(dict(TINY_MODEL, avg_num_neighbors=10.0), ["Si"], torch.float32)
    atoms = lj_frames(3, seed=5, reps=3)
    for a in atoms:
        a.numbers[:] = 14
    graphs = GraphDataset(frames_from_atoms_list(atoms), ["Si"], 3.5, torch.float32).graphs
    compiled = CompiledPotential(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # inductor writes another scatter with one thread (the suite's default)
    try:
        _compare_training_step(model, compiled, (collate(graphs[:2]), collate(graphs[2:3])))
    finally:
        torch.set_num_threads(threads)


def _compare_training_step(model, compiled, batches):
    for batch in batches:
        ref = model(batch, compute_forces=True, training=True)
        out = compiled(batch, compute_forces=True, training=True)
        for key in (K.TOTAL_ENERGY, K.FORCES):
            torch.testing.assert_close(out[key], ref[key], rtol=1e-4, atol=1e-5, msg=key)
        loss = lambda o: ((o[K.TOTAL_ENERGY] - 1.0) ** 2).sum() + (o[K.FORCES] ** 2).sum()
        params = [p for p in model.parameters() if p.requires_grad]
        for a, b in zip(torch.autograd.grad(loss(out), params), torch.autograd.grad(loss(ref), params)):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_compile_caches_are_keyed_by_the_kernel_formulas(monkeypatch):
    """torch.compile's caches know an operator by name only; the version of the CPU kernel's
    registered formulas goes into their key (once, next to a tag the user set)."""
    from mlip.nn import compiled
    from mlip.ops.cpu_message import traced_ops_version

    monkeypatch.setattr(torch.compiler.config, "cache_key_tag", "user-tag")
    graph = compiled.trace_and_compile(lambda x: x * 2, [torch.ones(3)], backend="inductor")  # compiled lazily
    compiled.trace_and_compile(lambda x: x + 1, [torch.ones(3)], backend="inductor")
    tag = torch.compiler.config.cache_key_tag
    assert tag == f"user-tag|mlip-ops-{traced_ops_version()}"
    assert len(traced_ops_version()) == 12 and callable(graph)
