"""Which kernel runs, for every requested message backend x context (eager, ``reference_ops``,
``traceable_ops``, TorchScript) x availability of the kernels, on CPU tensors; and a model's
energy and forces are bit-identical wherever the same kernels run.

The kernels are observed at their entry points (spies on ``fused_message_cpu``,
``triton_message.fused_message``, ``message_grouped`` and the fused SiLU's autograd Function),
so these tests pin down the behaviour, whatever code decides it. The policy itself
(:mod:`mlip.ops.policy`) is checked against the table in its docstring for every device type,
CUDA included, with availability answered by the test.
"""
import contextlib
import os
import shutil
from typing import Dict, List

import numpy as np
import pytest
import torch

from mlip.data import keys as K
from mlip.data.frames import Frame
from mlip.data.graph import TypeMapper, collate, frame_to_graph
from mlip.nn.build import build_model, default_dtype
from mlip.ops import cpu_message, current_policy, message, policy, reference_ops, silu, traceable_ops
from mlip.ops.message import MessagePassing, message_reference
from mlip.ops.tensor_product import TensorProductSpec, reachable_irreps

needs_cpu_kernel = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None,
                                      reason="no C++ compiler to build the fused CPU kernel")
try:
    from mlip.ops import triton_message
except ImportError:  # triton not installed: the "triton" rows cannot be observed
    triton_message = None

CONTEXTS = {"eager": contextlib.nullcontext, "reference": reference_ops, "traceable": traceable_ops}
BACKENDS = ("auto", "torch", "cpu", "triton")

# the message kernel that runs on CPU tensors: (backend, context) -> (with the C++ kernel
# available, without it). An explicit "cpu" or "triton" is honoured in eager mode whether or not
# the kernel can run (its own error then says why); while tracing only the C++ kernel, whose
# shapes and derivatives are registered, stays fused.
MESSAGE_ON_CPU = {
    ("auto", "eager"): ("cpu", "torch"),
    ("torch", "eager"): ("torch", "torch"),
    ("cpu", "eager"): ("cpu", "cpu"),
    ("triton", "eager"): ("triton", "triton"),
    ("auto", "reference"): ("torch", "torch"),
    ("torch", "reference"): ("torch", "torch"),
    ("cpu", "reference"): ("torch", "torch"),
    ("triton", "reference"): ("torch", "torch"),
    ("auto", "traceable"): ("cpu", "torch"),
    ("torch", "traceable"): ("torch", "torch"),
    ("cpu", "traceable"): ("cpu", "torch"),
    ("triton", "traceable"): ("cpu", "torch"),
}
# the fused SiLU runs on CPU tensors (big enough, float32/64) only in eager mode with the kernel
FUSED_SILU_ON_CPU = {"eager": (True, False), "reference": (False, False), "traceable": (False, False)}

E, O = 1, -1


def _spec() -> TensorProductSpec:
    irreps_in, irreps_sh = [(0, E), (1, O)], [(0, E), (1, O)]
    return TensorProductSpec(irreps_in, irreps_sh, reachable_irreps(irreps_in, irreps_sh, [(0, E), (1, O)]))


def _inputs(spec: TensorProductSpec, n_nodes: int = 5, n_edges: int = 12, channels: int = 3):
    g = torch.Generator().manual_seed(0)
    edge_index = torch.randint(0, n_nodes, (2, n_edges), generator=g)
    x = torch.randn(n_nodes, spec.dim_in, channels, generator=g, dtype=torch.float64)
    y = torch.randn(n_edges, spec.dim_sh, generator=g, dtype=torch.float64)
    w = torch.randn(n_edges, spec.num_paths, channels, generator=g, dtype=torch.float64)
    return x, y, w, edge_index


def _spy_message_kernels(monkeypatch, calls: List[str], run: bool) -> None:
    """Record every message-kernel call in ``calls``. ``run``: the fused kernels really run, else
    they return the plain reference result (the choice is what is observed, and a kernel that
    cannot run here, Triton without a GPU, or C++ without a compiler, is still seen chosen)."""
    def spy(name, real):
        def call(node_feats, edge_sh, edge_weights, edge_index, spec, num_nodes, *args, **kwargs):
            calls.append(name)
            if run:
                return real(node_feats, edge_sh, edge_weights, edge_index, spec, num_nodes, *args, **kwargs)
            return message_reference(node_feats, edge_sh, edge_weights, edge_index, spec.cg_tensor(node_feats.dtype),
                                     spec.path_of_output(), num_nodes)
        return call

    monkeypatch.setattr(cpu_message, "fused_message_cpu", spy("cpu", cpu_message.fused_message_cpu))
    if triton_message is not None:
        monkeypatch.setattr(triton_message, "fused_message", spy("triton", triton_message.fused_message))
    real_grouped = message.message_grouped

    def grouped(*args):
        calls.append("torch")
        return real_grouped(*args)

    monkeypatch.setattr(message, "message_grouped", grouped)


def _without_cpu_kernel(monkeypatch) -> None:
    """As on a machine where the C++ kernel cannot be built (no compiler, or switched off)."""
    monkeypatch.setattr(cpu_message, "_STATE", {})
    monkeypatch.setenv("MLIP_CPU_KERNEL", "0")


# with the C++ kernel (needs a compiler), and as on a machine where it cannot be built
AVAILABLE = [pytest.param(True, marks=needs_cpu_kernel, id="kernel"), pytest.param(False, id="no_kernel")]


@pytest.mark.parametrize("available", AVAILABLE)
@pytest.mark.parametrize("interpret", ["0", "1"], ids=["compiled", "interpreted"])
@pytest.mark.parametrize("context", list(CONTEXTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_message_kernel_on_cpu_tensors(backend, context, interpret, available, monkeypatch):
    """The kernel MessagePassing runs for CPU tensors. TRITON_INTERPRET changes no choice: "auto"
    picks Triton for CUDA tensors only, and an explicit "triton" is honoured either way."""
    if backend == "triton" and triton_message is None:
        pytest.skip("triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    if not available:
        _without_cpu_kernel(monkeypatch)
    calls: List[str] = []
    _spy_message_kernels(monkeypatch, calls, run=False)
    with default_dtype(torch.float64):
        mp = MessagePassing(_spec(), 3, backend)
    x, y, w, edge_index = _inputs(mp.spec)
    with CONTEXTS[context]():
        out = mp(x, y, w, edge_index)
    want = MESSAGE_ON_CPU[(backend, context)][0 if available else 1]
    assert calls == [want]
    ref = message_reference(x, y, w, edge_index, mp.cg, mp.spec.path_of_output(), x.shape[0])
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_explicit_cpu_backend_without_the_kernel_is_its_error(monkeypatch):
    """backend="cpu" is not silently replaced by torch where the kernel cannot be built."""
    _without_cpu_kernel(monkeypatch)
    with default_dtype(torch.float64):
        mp = MessagePassing(_spec(), 3, "cpu")
    with pytest.raises(RuntimeError, match="MLIP_CPU_KERNEL=0"):
        mp(*_inputs(mp.spec))


@pytest.mark.parametrize("available", AVAILABLE)
@pytest.mark.parametrize("context", list(CONTEXTS))
def test_fused_silu_on_cpu_tensors(context, available, monkeypatch):
    if not available:
        _without_cpu_kernel(monkeypatch)
    x = torch.randn(300, 256, dtype=torch.float64, requires_grad=True)  # above FUSED_MIN_NUMEL
    with CONTEXTS[context]():
        y = silu.silu_gain(x, 1.7)
        small = silu.silu_gain(x[:2], 1.7)
    assert ("SiLUGain" in type(y.grad_fn).__name__) == FUSED_SILU_ON_CPU[context][0 if available else 1]
    assert "SiLUGain" not in type(small.grad_fn).__name__  # too small: the per-call cost would dominate
    assert "SiLUGain" not in type(silu.silu_gain(x.half(), 1.7).grad_fn).__name__  # no half-precision kernel


# ---- a whole model: the same kernels give bit-identical energies and forces -------------------

MODEL = dict(architecture="nequip", r_max=3.5, num_layers=2, channels=4, l_max=1, num_bessel=4, radial_hidden=8,
             radial_depth=1, readout_hidden=4, avg_num_neighbors=4.0)


def _batch() -> Dict[str, torch.Tensor]:
    """Two small structures: a periodic 2-atom Si cell and a 4-atom Si/O cluster."""
    rng = np.random.default_rng(0)
    a = 5.43
    cell = np.array([[0.0, a / 2, a / 2], [a / 2, 0.0, a / 2], [a / 2, a / 2, 0.0]])
    si2 = Frame(positions=np.array([[0.0, 0.0, 0.0], [a / 4, a / 4, a / 4]]) + 0.05 * rng.standard_normal((2, 3)),
                numbers=np.array([14, 14]), cell=cell, pbc=np.array([True, True, True]))
    cluster = Frame(positions=np.array([[0.0, 0.0, 0.0], [1.6, 0.1, 0.0], [0.2, 1.5, 0.1], [1.0, 0.9, 1.3]])
                    + 0.05 * rng.standard_normal((4, 3)), numbers=np.array([14, 8, 8, 14]),
                    cell=np.zeros((3, 3)), pbc=np.array([False, False, False]))
    mapper = TypeMapper(["O", "Si"])
    return collate([frame_to_graph(f, mapper, MODEL["r_max"]) for f in (si2, cluster)])


@needs_cpu_kernel
def test_model_energy_and_forces_bit_identical_per_kernel_choice(monkeypatch):
    """Energy and forces of one model under every backend and context: the kernels that run are
    the table's, and runs with the same kernels agree bit for bit (all agree to 1e-10). The
    fused SiLU's size threshold is lifted so that its choice shows in a small model; Triton runs
    under its interpreter. TorchScript runs the plain torch path of every op whatever the backend
    (its own group: its autograd of the same ops differs from eager's in the last bits)."""
    batch = _batch()
    backends = [b for b in BACKENDS if b != "triton" or triton_message is not None]
    models, scripted = {}, {}
    for backend in backends:
        torch.manual_seed(0)
        models[backend] = build_model(dict(MODEL, message_backend=backend), ["O", "Si"], torch.float64)
        scripted[backend] = torch.jit.script(models[backend])  # before the spies: TorchScript compiles the real ops
    monkeypatch.setattr(silu, "FUSED_MIN_NUMEL", 0)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    silu_calls: List[int] = []
    real_silu = silu._SiLUGain

    class CountingSiLU(real_silu):
        @classmethod
        def apply(cls, *args):
            silu_calls.append(1)
            return real_silu.apply(*args)

    monkeypatch.setattr(silu, "_SiLUGain", CountingSiLU)
    calls: List[str] = []
    _spy_message_kernels(monkeypatch, calls, run=True)
    by_choice: Dict[tuple, List[torch.Tensor]] = {}
    results = []
    for backend, model in models.items():
        for context, enter in CONTEXTS.items():
            calls.clear()
            silu_calls.clear()
            with enter():
                out = model(batch, compute_forces=True)
            choice = (MESSAGE_ON_CPU[(backend, context)][0], FUSED_SILU_ON_CPU[context][0])
            assert set(calls) == {choice[0]} and bool(silu_calls) == choice[1], (backend, context)
            results.append((backend, context, choice, out[K.TOTAL_ENERGY].detach(), out[K.FORCES].detach()))
        calls.clear()
        silu_calls.clear()
        # TorchScript's first, profiling run differs from its later, optimised ones in the last bits
        scripted[backend](batch, compute_forces=True)
        out = scripted[backend](batch, compute_forces=True)
        assert calls == [] and silu_calls == []  # no Python kernel entry point is reachable
        results.append((backend, "torchscript", ("torchscript",), out[K.TOTAL_ENERGY].detach(),
                        out[K.FORCES].detach()))
    for backend, context, choice, energy, forces in results:
        first = by_choice.setdefault(choice, [energy, forces])
        assert torch.equal(energy, first[0]) and torch.equal(forces, first[1]), (backend, context, choice)
        torch.testing.assert_close(energy, results[0][3], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(forces, results[0][4], rtol=1e-10, atol=1e-10)
    # all kernel combinations ran (the comparison above is not vacuous)
    assert set(by_choice) == {("cpu", True), ("torch", True), ("triton", True), ("cpu", False), ("torch", False),
                              ("torchscript",)} - (set() if triton_message is not None else {("triton", True)})


# ---- the policy against the table in its docstring ---------------------------------------------

class Answers(policy.Availability):
    """Availability as the test says, recording which checks were made."""

    def __init__(self, available: bool):
        self.available = available
        self.asked: List[str] = []

    def cpu_kernel(self) -> bool:
        self.asked.append("cpu_kernel")
        return self.available

    def cpu_kernel_traceable(self) -> bool:
        self.asked.append("cpu_kernel_traceable")
        return self.available

    def triton(self) -> bool:
        self.asked.append("triton")
        return self.available


def _documented_table():
    """(context, device, column) -> (answer with every kernel available, without any), read from
    the table in mlip.ops.policy's docstring (footnotes [1], [3], [4]: torch without the kernel)."""
    lines = policy.__doc__.split("Message kernel by context")[1].splitlines()
    rows = [line.split() for line in lines if line.split() and line.split()[0] in policy.POLICIES]
    header = ["auto", "torch", "cpu", "triton", "silu"]
    table = {}
    for row in rows:
        context, device, cells = row[0], row[1], row[2:]
        values, i = [], 0
        while i < len(cells):  # a cell is a word, optionally followed by a footnote "[n]"
            word, note = cells[i], cells[i + 1] if i + 1 < len(cells) and cells[i + 1].startswith("[") else ""
            i += 2 if note else 1
            value = {"yes": True, "no": False}.get(word, word)
            without = value if note in ("", "[2]") else (False if isinstance(value, bool) else "torch")
            values.append((value, without))
        assert len(values) == len(header), row
        for column, value in zip(header, values):
            table[(context, device, column)] = value
    return table


DEVICES = {"cpu": ["cpu"], "cuda": ["cuda"], "other": ["mps", "meta"], "any": ["cpu", "cuda", "mps", "meta"]}


def test_policy_follows_its_documented_table():
    table = _documented_table()
    assert {c for c, _, _ in table} == set(policy.POLICIES) and len(table) == 7 * 5  # seven rows read
    for (context, device, column), answers in table.items():
        kernels = policy.POLICIES[context]
        for device_type in DEVICES[device]:
            for available, want in zip((True, False), answers):
                if column == "silu":
                    got = kernels.fused_silu(device_type, Answers(available))
                else:
                    got = kernels.message_kernel(column, device_type, Answers(available))
                assert got == want, (context, device_type, column, available)


@pytest.mark.parametrize("context", ["eager", "reference", "traceable"])
def test_documented_cpu_rows_are_the_observed_ones(context):
    """The docstring's CPU rows say what the spies above observe."""
    table = _documented_table()
    (row,) = {d for c, d, _ in table if c == context and "cpu" in DEVICES[d]}
    for backend in BACKENDS:
        assert table[(context, row, backend)] == MESSAGE_ON_CPU[(backend, context)]
    assert table[(context, row, "silu")] == FUSED_SILU_ON_CPU[context]


def test_availability_is_checked_only_where_it_decides():
    """The first check of the C++ kernel builds it and importing Triton takes seconds: neither
    happens for a call whose answer does not depend on it."""
    for context, kernels in policy.POLICIES.items():
        for device_type in ("cpu", "cuda", "mps"):
            answers = Answers(True)
            assert kernels.message_kernel("torch", device_type, answers) == "torch"
            for backend in ("cpu", "triton"):
                kernels.message_kernel(backend, device_type, answers)
            if context == "eager":
                assert answers.asked == []  # an explicit backend is taken as asked
            assert "triton" not in answers.asked  # only "auto" on CUDA asks for Triton
            if device_type != "cpu":
                kernels.fused_silu(device_type, answers)
                kernels.message_kernel("auto", device_type, answers)
                assert "cpu_kernel" not in answers.asked and "cpu_kernel_traceable" not in answers.asked


def test_context_managers_set_and_restore_the_policy():
    assert current_policy() is policy.EAGER
    with reference_ops():
        assert current_policy() is policy.REFERENCE
        with traceable_ops():
            assert current_policy() is policy.TRACEABLE
        assert current_policy() is policy.REFERENCE
    with pytest.raises(KeyError):
        with traceable_ops():
            raise KeyError("inside")
    assert current_policy() is policy.EAGER


def test_message_passing_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend must be"):
        MessagePassing(_spec(), 3, "cuda")
