"""SoftPool (Stergiou, Poppe and Kalliatakis, "Refining activation downsampling with SoftPool", ICCV 2021).

Each window R of each channel is replaced by its softmax-weighted mean::

    y = Σ_{i∈R} w_i a_i,    w_i = exp(a_i) / Σ_{j∈R} exp(a_j),    ∂y/∂a_i = w_i (1 + a_i − y)

Written by hand because the authors' code does not compute the paper's function (METHODS.md §1):
their CUDA kernel takes exp(a) unshifted, so float32 overflows once an activation passes ~88, and
their CPU fallback sums the exponentials over channels. Here every window is shifted by its own
maximum m, so each exponential lies in (0, 1] and ``y = m + Σ e_i (a_i − m) / Σ e_i`` is exact for
any finite input (a constant window returns itself). float16/bfloat16 inputs are computed in float32.

Speed. The eager form of any stable SoftPool makes several passes over the feature map (max,
subtract, exp, two weighted sums) and on the CPU costs 4–6 × ``max_pool2d`` forward+backward; the
unshifted formula ``avg_pool(x·eˣ)/avg_pool(eˣ)`` is about 5 ×. So the forward and backward here
are two small functions written over the k² strided "taps" of the windows (pure elementwise work on
the output grid) that ``torch.compile`` fuses into one loop each, wrapped in an
``autograd.Function`` that saves only the input, the output and each window's log-sum-exp (no k²
weight tensor): the backward is one fused elementwise pass, ``w_i = exp(a_i − lse)``. Measured by
``make bench`` (README). Compilation costs about 1–2 s per layer shape the first time (Inductor
caches it on disk for later processes); where torch.compile is unavailable or fails, the same
functions run eagerly with a warning, and ``compile=False`` asks for that directly.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from models.compiled import Kernels
from models.pooling.basic import check_window, windows
from models.pooling.fused import LOW_PRECISION, spread, taps

def _forward(x: torch.Tensor, k: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, lse), both float32 or wider: the SoftPool output and each window's log Σ exp(a_j)."""
    window = taps(x.float() if x.dtype in LOW_PRECISION else x, k, s)  # k² × (N, C, Ho, Wo)
    m = functools.reduce(torch.maximum, window)
    num = den = torch.zeros_like(m)
    for a in window:
        e = torch.exp(a - m)  # in (0, 1]
        num, den = num + e * (a - m), den + e
    return m + num / den, m + torch.log(den)


def _backward(x: torch.Tensor, y: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """∂L/∂a_i = w_i (1 + a_i − y) ∂L/∂y over every window containing a_i, with w_i = exp(a_i − lse)."""
    xf = x.float() if x.dtype in LOW_PRECISION else x
    g = grad.to(y.dtype)
    return spread(xf, y, k, s, lambda a, at, _: torch.exp(a - at(lse)) * (1 + a - at(y)) * at(g)).to(x.dtype)


KERNELS = Kernels("SoftPool", {"forward": _forward, "backward": _backward})


class _SoftPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int, s: int, use_compile: bool) -> torch.Tensor:
        y, lse = KERNELS.run("forward", use_compile, x.detach(), k, s)  # detached: the same compiled code as in eval
        ctx.save_for_backward(x, y, lse)
        ctx.window, ctx.use_compile = (k, s), use_compile
        return y.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, y, lse = ctx.saved_tensors
        gx = KERNELS.run("backward", ctx.use_compile, x.detach(), y, lse, grad.contiguous(), *ctx.window)
        return gx, None, None, None


def soft_pool2d(x: torch.Tensor, kernel_size: int = 2, stride: int | None = None, compile: bool = True) -> torch.Tensor:
    """SoftPool over ``kernel_size`` windows every ``stride`` (default ``kernel_size``):
    (N, C, H, W) -> (N, C, Ho, Wo)."""
    s = kernel_size if stride is None else stride
    if torch.is_grad_enabled() and x.requires_grad:
        return _SoftPool2d.apply(x, kernel_size, s, compile)
    return KERNELS.run("forward", compile, x, kernel_size, s)[0].to(x.dtype)


def soft_pool2d_reference(x: torch.Tensor, kernel_size: int = 2, stride: int | None = None) -> torch.Tensor:
    """The plain definition, for tests: a softmax over each unfolded window, differentiated by autograd."""
    a = windows(x, kernel_size, kernel_size if stride is None else stride)  # (N, C, Ho, Wo, k²)
    return (a.softmax(-1) * a).sum(-1)


class SoftPool(nn.Module):
    """SoftPool: ``y = Σ softmax(a)_i a_i`` over each window, per channel (Stergiou et al., 2021)."""

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2, compile: bool = True) -> None:
        super().__init__()
        check_window(kernel_size, stride)
        self.kernel_size, self.stride, self.compile = kernel_size, stride or kernel_size, compile

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_pool2d(x, self.kernel_size, self.stride, self.compile)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, compile={self.compile}"
