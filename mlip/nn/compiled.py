"""A :class:`~mlip.nn.potential.Potential` traced into one graph and compiled (opt-in speed path).

Forces are -dE/dr by autograd, and force training differentiates them again; torch.compile
(AOTAutograd) cannot compile a double backward. The work-around: trace the whole energy +
forces (+ stress) computation, including its first autograd pass, into one flat graph of aten
operations with ``make_fx``. That graph has only first-order operations, so AOTAutograd can
compile it *and* its backward (the parameter gradients of a force loss), and inductor fuses the
element-wise work on per-edge tensors. On CPU the fused message kernel stays in the graph as an
opaque call (its shapes and derivative are registered with torch: mlip.ops.cpu_message), so the
compiled graph keeps the eager model's message step and adds inductor's fusion around it.

The traced graph is shape-generic (symbolic sizes), with two precautions, since a traced graph
carries no runtime guards: sizes are not unified by value ("duck shaping" off), and a graph is
traced per pattern of sizes 0 / 1 / more of every input, so that any specialisation on a size of
1 (a single structure, say) is only reused where it holds.

Parameters and buffers are inputs of the graph, not constants: the optimiser's updates are
seen, and gradients reach the module's own parameters.
"""
import contextlib
from typing import Callable, Dict, List, Optional, Tuple

import torch

from mlip.data import keys as K
from mlip.nn.potential import Potential

OUTPUTS_FORCES = (K.TOTAL_ENERGY, K.FORCES)
OUTPUTS_STRESS = (K.TOTAL_ENERGY, K.FORCES, K.VIRIAL, K.STRESS)


@contextlib.contextmanager
def _no_duck_shapes():
    from torch.fx.experimental import _config as fx_config

    old = fx_config.use_duck_shape
    fx_config.use_duck_shape = False
    try:
        yield
    finally:
        fx_config.use_duck_shape = old


class CompiledPotential:
    """Callable like ``potential(data, compute_forces=True, compute_stress=..., training=...)``.

    ``backend``: "inductor" (torch.compile; needs a C++ compiler on the CPU, Triton on GPU) or
    None to run the traced graph as it is (no compiler; for checking the trace). The first call
    for each pattern of input sizes traces and compiles (tens of seconds on a CPU); later calls
    reuse it, with dynamic sizes.
    """

    def __init__(self, potential: Potential, backend: Optional[str] = "inductor"):
        self.potential = potential
        self.backend = backend
        self._graphs: Dict[tuple, Callable] = {}

    def __call__(self, data: Dict[str, torch.Tensor], compute_forces: bool = True, compute_stress: bool = False,
                 training: bool = False) -> Dict[str, torch.Tensor]:
        if not (compute_forces or compute_stress):
            return self.potential(data, compute_forces=False, compute_stress=False, training=training)
        keys = sorted(k for k, v in data.items() if torch.is_tensor(v))
        inputs = [data[k] for k in keys]
        params = [p for _, p in self.potential.named_parameters()]
        if not (training and torch.is_grad_enabled()):
            params = [p.detach() for p in params]  # nothing to differentiate: an inference graph
        buffers = [b for _, b in self.potential.named_buffers()]
        # plus what the output heads write (charges, dipole, ...; none for an energy-only model)
        outputs = (OUTPUTS_STRESS if compute_stress else OUTPUTS_FORCES) + tuple(self.potential.output_fields)
        key = (tuple(keys), _size_pattern(inputs), bool(compute_stress), bool(training), self.potential.training)
        fn = self._graphs.get(key)
        if fn is None:
            fn = self._graphs[key] = self._build(keys, params, buffers, inputs, outputs, compute_stress, training)
        result = fn(*params, *buffers, *inputs)
        out = dict(data)
        out.update(zip(outputs, result))
        return out

    def _build(self, keys: List[str], params: List[torch.Tensor], buffers: List[torch.Tensor],
               inputs: List[torch.Tensor], outputs: Tuple[str, ...], compute_stress: bool, training: bool) -> Callable:
        from torch.func import functional_call

        pnames = [n for n, _ in self.potential.named_parameters()]
        bnames = [n for n, _ in self.potential.named_buffers()]
        n_p, n_b = len(pnames), len(bnames)
        potential = self.potential

        def energy_forces(*args):
            state = dict(zip(pnames, args[:n_p]))
            state.update(zip(bnames, args[n_p:n_p + n_b]))
            data = dict(zip(keys, args[n_p + n_b:]))
            out = functional_call(potential, state, (data,), {"compute_forces": True, "compute_stress": compute_stress,
                                                              "training": training})
            return tuple(out[k] for k in outputs)

        return trace_and_compile(energy_forces, [*params, *buffers, *inputs], self.backend)


def trace_and_compile(fn: Callable, args: List[torch.Tensor], backend: Optional[str]) -> Callable:
    """``fn(*args)`` traced with make_fx (symbolic sizes; the CPU message kernel as an opaque op,
    the plain-torch path of the other fused ops) and compiled by ``backend`` (None: the traced
    graph as it is)."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    from mlip.ops import traceable_ops

    # the CPU message kernel stays in the graph as an opaque call (its shapes and derivatives are
    # registered); the other fused kernels are traced as their plain-torch path, which the
    # compiler then fuses its own way
    with _no_duck_shapes(), traceable_ops():
        try:
            # _allow_non_fake_inputs: cached constant tensors (the kernel's term tables) become graph constants
            graph = make_fx(fn, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*args)
        except GuardOnDataDependentSymNode as exc:
            # e.g. MACE's contraction, which groups atoms by species (torch.nonzero)
            where = str(exc).split("Caused by:")[-1].strip().splitlines()[0] if "Caused by:" in str(exc) else ""
            raise ValueError("this model cannot be traced into one graph: its shapes depend on the data "
                             f"({where}); use it without compile") from None
    if backend is None:
        return graph
    _tag_compile_caches()
    return torch.compile(graph, backend=backend, dynamic=True)


def _tag_compile_caches() -> None:
    """Adds the version of the CPU kernel's registered formulas to torch.compile's cache keys
    (process-wide: the tag only changes cache keys), so an upgraded mlip never reuses a backward
    compiled from an older formula."""
    from mlip.ops.cpu_message import traced_ops_version

    tag = f"mlip-ops-{traced_ops_version()}"
    config = getattr(torch.compiler, "config", None)
    if config is None or not hasattr(config, "cache_key_tag"):
        # an older torch without cache tags: do not reuse compiled backwards across processes
        functorch_config = getattr(getattr(torch, "_functorch", None), "config", None)
        if functorch_config is not None and hasattr(functorch_config, "enable_autograd_cache"):
            functorch_config.enable_autograd_cache = False
        return
    current = config.cache_key_tag
    if tag not in current:
        config.cache_key_tag = f"{current}|{tag}" if current else tag


def _size_pattern(inputs: List[torch.Tensor]) -> tuple:
    """Dtype, device and the 0 / 1 / more pattern of every size (one traced graph each)."""
    return tuple((t.dtype, t.device, tuple(min(int(d), 2) for d in t.shape)) for t in inputs)


class CompiledModule:
    """Inference-only counterpart of :class:`CompiledPotential` for any module called as
    ``module(data: Dict[str, Tensor]) -> Dict[str, Tensor]`` that takes its own derivatives
    (e.g. the contract-form model the ASE calculator runs, forces and virial included): the
    whole call is traced into one graph per size pattern and compiled."""

    def __init__(self, module: torch.nn.Module, backend: Optional[str] = "inductor"):
        self.module = module
        self.backend = backend
        self._graphs: Dict[tuple, Tuple[Callable, List[str]]] = {}

    def __call__(self, data: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        keys = sorted(k for k, v in data.items() if torch.is_tensor(v))
        inputs = [data[k] for k in keys]
        params = [p.detach() for _, p in self.module.named_parameters()]
        buffers = [b for _, b in self.module.named_buffers()]
        key = (tuple(keys), _size_pattern(inputs))
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._build(keys, params, buffers, inputs)
        fn, out_keys = entry
        return dict(zip(out_keys, fn(*params, *buffers, *inputs)))

    def _build(self, keys: List[str], params: List[torch.Tensor], buffers: List[torch.Tensor],
               inputs: List[torch.Tensor]) -> Tuple[Callable, List[str]]:
        from torch.func import functional_call

        pnames = [n for n, _ in self.module.named_parameters()]
        bnames = [n for n, _ in self.module.named_buffers()]
        n_p, n_b = len(pnames), len(bnames)
        module = self.module
        out_keys: List[str] = []

        def call(*args):
            state = dict(zip(pnames, args[:n_p]))
            state.update(zip(bnames, args[n_p:n_p + n_b]))
            out = functional_call(module, state, (dict(zip(keys, args[n_p + n_b:])),))
            out_keys[:] = sorted(k for k, v in out.items() if torch.is_tensor(v))
            return tuple(out[k] for k in out_keys)

        fn = trace_and_compile(call, [*params, *buffers, *inputs], self.backend)
        return fn, list(out_keys)
