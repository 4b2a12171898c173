"""Tensor-product kernels: the torch reference (CPU and fallback) and Triton-fused GPU kernels."""
import os

import torch


def triton_available(device: torch.device) -> bool:
    """True when the fused Triton path can run on ``device`` (CUDA, or the interpreter for tests)."""
    try:
        import mlip.ops.triton_message  # noqa: F401
    except Exception:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


__all__ = ["triton_available"]
