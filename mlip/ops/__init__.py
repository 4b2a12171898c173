"""Tensor-product kernels: the torch reference (CPU and fallback) and fused C++ (CPU) and Triton
(GPU) kernels. Which one runs is decided by :mod:`mlip.ops.policy`."""

from mlip.ops.policy import current_policy, reference_ops, traceable_ops, triton_available

__all__ = ["current_policy", "reference_ops", "traceable_ops", "triton_available"]
