"""Tensor-product kernels: the torch reference (CPU and fallback) and Triton-fused GPU kernels."""
import os
from contextlib import contextmanager

import torch

# "fused": every fused kernel may run; "traceable": only fused kernels that tracing can keep as
# opaque calls (shape and derivative formulas registered: the CPU message kernel); "reference":
# plain torch only
_MODE = ["fused"]


@contextmanager
def _mode(mode: str):
    before = _MODE[0]
    _MODE[0] = mode
    try:
        yield
    finally:
        _MODE[0] = before


@contextmanager
def reference_ops():
    """Within this context the model runs plain torch only (no fused CPU or GPU kernels)."""
    with _mode("reference"):
        yield


@contextmanager
def traceable_ops():
    """Within this context (a model being traced into one graph) only the fused kernels that a
    traced graph can hold as opaque calls run (the CPU message kernel, whose shapes and
    derivatives are registered with torch); the others (fused SiLU, Triton) run plain torch,
    which the compiler then fuses its own way."""
    with _mode("traceable"):
        yield


def fused_ops_disabled() -> bool:
    """True when fused kernels without tracing support must not run."""
    return _MODE[0] != "fused"


def traceable_ops_only() -> bool:
    return _MODE[0] == "traceable"


def triton_available(device: torch.device) -> bool:
    """True when the fused Triton path can run on ``device`` (CUDA, or the interpreter for tests)."""
    try:
        import mlip.ops.triton_message  # noqa: F401
    except Exception:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


__all__ = ["triton_available", "reference_ops", "traceable_ops", "fused_ops_disabled", "traceable_ops_only"]
