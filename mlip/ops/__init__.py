"""Tensor-product kernels: the torch reference (CPU and fallback) and Triton-fused GPU kernels."""
import os
from contextlib import contextmanager

import torch

_REFERENCE_ONLY = [False]


@contextmanager
def reference_ops():
    """Within this context the model runs plain torch only (no fused CPU or GPU kernels), e.g.
    while it is traced into one graph: the fused kernels are opaque to tracing."""
    before = _REFERENCE_ONLY[0]
    _REFERENCE_ONLY[0] = True
    try:
        yield
    finally:
        _REFERENCE_ONLY[0] = before


def fused_ops_disabled() -> bool:
    return _REFERENCE_ONLY[0]


def triton_available(device: torch.device) -> bool:
    """True when the fused Triton path can run on ``device`` (CUDA, or the interpreter for tests)."""
    try:
        import mlip.ops.triton_message  # noqa: F401
    except Exception:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


__all__ = ["triton_available", "reference_ops", "fused_ops_disabled"]
