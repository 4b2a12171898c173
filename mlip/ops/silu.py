"""SiLU with a gain (the radial MLP's activation), with fused CPU derivatives.

In force training the radial MLP is differentiated twice (forces, then the loss on forces), and
autograd builds the derivatives of ``gain * x * sigmoid(x)`` from a dozen element-wise passes
over [pairs, hidden] tensors. The C++ kernels (``csrc/message_cpu.cpp``) compute the value, the
first derivative and the second derivative in one pass each. Third and higher derivatives (not
needed by training) fall back to differentiable torch expressions.
"""

import torch

from mlip.ops.policy import current_policy


# below this many elements the two Python autograd Functions cost more than the passes they save
FUSED_MIN_NUMEL = 1 << 16


def silu_gain_torch(x: torch.Tensor, gain: float) -> torch.Tensor:
    return torch.nn.functional.silu(x) * gain


def _d1(x: torch.Tensor, gain: float) -> torch.Tensor:
    s = torch.sigmoid(x)
    return gain * s * (1 + x * (1 - s))


def _d2(x: torch.Tensor, gain: float) -> torch.Tensor:
    s = torch.sigmoid(x)
    return gain * s * (1 - s) * (2 + x * (1 - 2 * s))


class _SiLUGain(torch.autograd.Function):
    """gain * x * sigmoid(x); sigmoid(x) is kept for the derivatives (torch's vectorised exp)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gain: float):
        s = torch.sigmoid(x)
        ctx.gain = gain
        ctx.save_for_backward(x, s)
        return torch.ops.mlip_cpu.silu_gain(x, s, gain)

    @staticmethod
    def backward(ctx, gy):
        x, s = ctx.saved_tensors
        return _SiLUGainGrad.apply(x, s, gy, ctx.gain), None


class _SiLUGainGrad(torch.autograd.Function):
    """gy * f'(x), differentiable once more by the fused kernel (s = sigmoid(x) is a function of
    x, not an independent input: its gradient is folded into the x derivative)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, s: torch.Tensor, gy: torch.Tensor, gain: float):
        ctx.gain = gain
        ctx.save_for_backward(x, s, gy)
        return torch.ops.mlip_cpu.silu_gain_grad(x, s, gy, gain)

    @staticmethod
    def backward(ctx, ggx):
        x, s, gy = ctx.saved_tensors
        if torch.is_grad_enabled():  # a third derivative is wanted: differentiable torch expressions
            return ggx * gy * _d2(x, ctx.gain), None, ggx * _d1(x, ctx.gain), None
        dx, dgy = torch.ops.mlip_cpu.silu_gain_grad2(x, s, gy, ggx, ctx.gain)
        return dx, None, dgy, None


def silu_gain(x: torch.Tensor, gain: float) -> torch.Tensor:
    """``gain * silu(x)``: the fused kernels where the kernel policy lets them run (CPU tensors,
    eager calls, the CPU extension built; see :mod:`mlip.ops.policy`) and the tensor suits them:
    float32 or float64, and big enough for memory passes, not per-call overhead, to dominate."""
    if (x.dtype in (torch.float32, torch.float64) and x.numel() >= FUSED_MIN_NUMEL
            and current_policy().fused_silu(x.device.type)):
        return _SiLUGain.apply(x, gain)
    return silu_gain_torch(x, gain)
