"""Which kernel runs: the rules, in one place.

The fused kernels (the C++ message step and SiLU for CPU tensors, the Triton message step for
CUDA tensors) stand in for plain-torch code paths. Which one runs depends on the backend a
model asked for (``MessagePassing(backend=...)``, the ``message_backend`` hyperparameter), the
device type of the tensors, the context of the call and what this machine can run. A
:class:`KernelPolicy` is one context's rules; the ops ask the current one
(:func:`current_policy`) at each call, which costs a few comparisons: the availability checks
are cached where they are made, and made only where they decide (the first check of the C++
kernel builds it; importing Triton takes seconds).

Contexts
--------
``eager``        ordinary calls: every fused kernel may run.
``reference``    inside :func:`reference_ops`: plain torch only (to check kernels against it).
``traceable``    inside :func:`traceable_ops`, where :mod:`mlip.nn.compiled` traces a model into
                 one graph: only kernels that a traced graph can hold as opaque calls run, i.e.
                 the C++ message kernel, whose shapes and derivatives are registered with torch;
                 the others are traced as plain torch, which the compiler fuses its own way.
``torchscript``  a scripted model (export, LAMMPS, the ASE calculator): plain torch only.

Message kernel by context x device type x requested backend, and the fused SiLU
-------------------------------------------------------------------------------
==============  ========  ==========  =======  =======  ==========  ==========
context         device    "auto"      "torch"  "cpu"    "triton"    fused SiLU
==============  ========  ==========  =======  =======  ==========  ==========
eager           cpu       cpu [1]     torch    cpu [2]  triton [2]  yes [1]
eager           cuda      triton [3]  torch    cpu [2]  triton      no
eager           other     torch       torch    cpu [2]  triton [2]  no
traceable       cpu       cpu [4]     torch    cpu [4]  cpu [4]     no
traceable       other     torch       torch    torch    torch       no
reference       any       torch       torch    torch    torch       no
torchscript     any       torch       torch    torch    torch       no
==============  ========  ==========  =======  =======  ==========  ==========

[1] when the C++ kernels are built (a C++ compiler, and ``MLIP_CPU_KERNEL`` not 0), else torch.
[2] an explicit backend is honoured as asked: where its kernel cannot run (not built; Triton on
    CPU tensors without ``TRITON_INTERPRET=1``), the kernel's own error says why.
[3] when Triton is installed, else torch.
[4] when the C++ kernel is built and registered for tracing (a torch with ``torch.library``'s
    fake and autograd registration), else torch.

The fused SiLU also needs float32 or float64 and enough elements for the saved memory passes to
outweigh its per-call cost (:data:`mlip.ops.silu.FUSED_MIN_NUMEL`): the kernel's own limits,
checked in :func:`mlip.ops.silu.silu_gain`.

How an op follows the policy
----------------------------
TorchScript cannot call this Python code, so every op has the same shape: the code that asks
the policy and runs a fused kernel sits under ``if not torch.jit.is_scripting():``, a branch
TorchScript's compiler drops (``is_scripting()`` is a constant to it); the code outside it is
the plain-torch path, the only one scripted models run (the ``torchscript`` row)::

    def forward(self, x):
        if not torch.jit.is_scripting():
            kernel = current_policy().message_kernel(self.backend, x.device.type)
            if kernel != "torch":
                return self._fused(kernel, x)
        return plain_torch(x)
"""

import os
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Dict, Iterator, Optional

import torch

from mlip.ops import cpu_message

# what MessagePassing accepts; "auto" picks the fused kernel that fits the tensors' device
MESSAGE_BACKENDS = ("auto", "torch", "cpu", "triton")


class Availability:
    """What this machine can run. Each check is made once and cached: the C++ kernel's in
    :mod:`mlip.ops.cpu_message` (whose first call builds it), Triton's import here. A test may
    pass its own answers to :meth:`KernelPolicy.message_kernel` and :meth:`KernelPolicy.fused_silu`."""

    def cpu_kernel(self) -> bool:
        """The C++ kernels are built and loaded."""
        return cpu_message.cpu_kernel_available()

    def cpu_kernel_traceable(self) -> bool:
        """The C++ message kernel is loaded and registered for tracing (shapes, derivatives)."""
        return cpu_message.cpu_kernel_traceable()

    def triton(self) -> bool:
        """The Triton kernels' module imports (Triton is installed)."""
        return triton_module() is not None


INSTALLED = Availability()

_TRITON: Dict[str, Optional[ModuleType]] = {}


def triton_module() -> Optional[ModuleType]:
    """:mod:`mlip.ops.triton_message`, or None where it cannot be imported; imported on first
    use only (importing Triton takes seconds), then cached."""
    if "module" not in _TRITON:
        try:
            from mlip.ops import triton_message
        except Exception:  # no Triton, or a Triton that fails to import on this machine
            triton_message = None
        _TRITON["module"] = triton_message
    return _TRITON["module"]


def triton_available(device: torch.device) -> bool:
    """True when the fused Triton path can run on ``device`` (CUDA, or the interpreter for tests)."""
    return triton_module() is not None and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")


@dataclass(frozen=True)
class KernelPolicy:
    """The kernel rules of one context (see the module's table).

    ``fused_kernels``: every fused kernel may run. ``trace_safe_kernels``: the kernels that a
    traced graph can hold as opaque calls may run (the C++ message kernel)."""

    context: str
    fused_kernels: bool
    trace_safe_kernels: bool

    def message_kernel(self, backend: str, device_type: str, available: Availability = INSTALLED) -> str:
        """"triton", "cpu" or "torch": the message step's kernel for ``backend`` (one of
        :data:`MESSAGE_BACKENDS`) on tensors of ``device_type``. Availability is checked only
        where it decides (the first check of the C++ kernel builds it)."""
        if backend == "torch":
            return "torch"
        if not self.fused_kernels:
            # only the C++ kernel is registered for tracing; whatever fused kernel was asked
            # for, CPU tensors being traced keep the message step fused with it
            if self.trace_safe_kernels and device_type == "cpu" and available.cpu_kernel_traceable():
                return "cpu"
            return "torch"
        if backend != "auto":
            return backend  # as asked: where it cannot run, its kernel says why
        if device_type == "cuda":
            return "triton" if available.triton() else "torch"
        if device_type == "cpu":
            return "cpu" if available.cpu_kernel() else "torch"
        return "torch"

    def fused_silu(self, device_type: str, available: Availability = INSTALLED) -> bool:
        """Whether the fused SiLU (C++, not registered for tracing) may run on ``device_type``."""
        return self.fused_kernels and device_type == "cpu" and available.cpu_kernel()


EAGER = KernelPolicy("eager", fused_kernels=True, trace_safe_kernels=True)
REFERENCE = KernelPolicy("reference", fused_kernels=False, trace_safe_kernels=False)
TRACEABLE = KernelPolicy("traceable", fused_kernels=False, trace_safe_kernels=True)
# what scripted code does; TorchScript cannot ask, the ops' is_scripting branches implement it
TORCHSCRIPT = KernelPolicy("torchscript", fused_kernels=False, trace_safe_kernels=False)
POLICIES = {p.context: p for p in (EAGER, REFERENCE, TRACEABLE, TORCHSCRIPT)}

_CURRENT = [EAGER]


def current_policy() -> KernelPolicy:
    """The policy of the context this call runs in (eager unless inside one of the context
    managers below)."""
    return _CURRENT[0]


@contextmanager
def _policy(policy: KernelPolicy) -> Iterator[None]:
    before = _CURRENT[0]
    _CURRENT[0] = policy
    try:
        yield
    finally:
        _CURRENT[0] = before


@contextmanager
def reference_ops() -> Iterator[None]:
    """Within this context the model runs plain torch only (no fused CPU or GPU kernels)."""
    with _policy(REFERENCE):
        yield


@contextmanager
def traceable_ops() -> Iterator[None]:
    """Within this context (a model being traced into one graph) only the fused kernels that a
    traced graph can hold as opaque calls run (the CPU message kernel, whose shapes and
    derivatives are registered with torch); the others (fused SiLU, Triton) run plain torch,
    which the compiler then fuses its own way."""
    with _policy(TRACEABLE):
        yield


__all__ = ["KernelPolicy", "Availability", "INSTALLED", "MESSAGE_BACKENDS", "EAGER", "REFERENCE", "TRACEABLE",
           "TORCHSCRIPT", "POLICIES", "current_policy", "reference_ops", "traceable_ops", "triton_available",
           "triton_module"]
