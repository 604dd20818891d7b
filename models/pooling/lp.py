"""Power-average pooling, ``y = (mean_{i∈R} max(a_i, ε)^p)^{1/p}``: the local form of GeM
(Radenović, Tolias and Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018).

p = 1 is average pooling and p → ∞ approaches max pooling; p is learnable (GeM's default, p = 3) or
fixed. Inputs are clamped to ε > 0 as in GeM, so negative inputs and fractional p are safe (torch's
``LPPool2d`` returns NaN there, and sums rather than averages). Computed in the log domain,
``y = exp((logsumexp(p·log a) − log|R|) / p)``, so a large p cannot overflow: the plain formula gives
``inf`` in float32 for ``[1, 2, 3, 4]`` at p = 100, this gives 3.944931. p is kept ≥ ``min_p`` so
that 1/p stays finite while it is learned.

Speed. ``LpPool`` runs two fused kernels (models/pooling/fused.py), compiled like SoftPool's: the forward makes
one pass over the window taps (log, the max shift, exp and the sums) and saves, per window, ``lse = log Σ a^p``
and ``Σ_i w_i log a_i``; the backward is one elementwise pass over the input and one sum over the output grid,
with a = max(x, ε) and n = k² taps per window::

    ∂y/∂a_i = y · a_i^(p−1) / Σ_j a_j^p = y · exp((p − 1)·log a_i − lse)     (0 where x_i < ε, clamped)
    ∂y/∂p   = (y / p) · (Σ_i w_i log a_i − L / p),   w_i = exp(p·log a_i − lse),  L = lse − log n

``compile=False`` runs the same kernels eagerly; ``power_mean`` (autograd through ``unfold``) is the reference
in the tests and the global GeM heads' implementation.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from models.compiled import Kernels
from models.pooling.basic import check_window, windows
from models.pooling.fused import LOW_PRECISION, spread, taps


def power_mean(a: torch.Tensor, p: torch.Tensor | float, dim: int, eps: float = 1e-6) -> torch.Tensor:
    """``(mean clamp(a, eps)^p)^{1/p}`` along ``dim``, in the log domain (stable for any p > 0)."""
    log_a = a.clamp(min=eps).log()
    # keepdim, so that a p shaped like ``a`` with 1 along ``dim`` (one p per channel) broadcasts in both places
    return torch.exp((torch.logsumexp(p * log_a, dim=dim, keepdim=True) - math.log(a.shape[dim])) / p).squeeze(dim)


class PowerParam(nn.Module):
    """The exponent p of a power mean: a learned parameter or a fixed buffer, kept ≥ ``min_p``."""

    def __init__(self, p: float, learnable: bool, min_p: float = 1e-2, size: int = 1) -> None:
        super().__init__()
        if not p >= min_p:
            raise ValueError(f"p must be >= {min_p}, got {p}")
        self.min_p = min_p
        if learnable:
            self.p = nn.Parameter(torch.full((size,), float(p)))
        else:
            self.register_buffer("p", torch.full((size,), float(p)))

    def forward(self) -> torch.Tensor:
        return self.p.clamp(min=self.min_p)


def _forward(x: torch.Tensor, p: torch.Tensor, k: int, s: int,
             eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, lse, Σ_i w_i log a_i): each window's power mean, log Σ_i a_i^p and the p-gradient's sum, a = max(x, eps),
    float32 or wider."""
    log_a = [a.clamp(min=eps).log() for a in taps(x.float() if x.dtype in LOW_PRECISION else x, k, s)]
    m = functools.reduce(torch.maximum, [p * la for la in log_a])
    e = [torch.exp(p * la - m) for la in log_a]  # in (0, 1]
    den = functools.reduce(torch.add, e)
    lse = m + torch.log(den)
    weighted = functools.reduce(torch.add, [ei * la for ei, la in zip(e, log_a)]) / den
    return torch.exp((lse - math.log(k * k)) / p), lse, weighted


def _backward(x: torch.Tensor, p: torch.Tensor, y: torch.Tensor, lse: torch.Tensor, weighted: torch.Tensor,
              grad: torch.Tensor, k: int, s: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂x, ∂L/∂p) from the saved input, output, lse and Σ_i w_i log a_i (module docstring): one elementwise
    pass over the input and one reduction over the output grid."""
    xf = x.float() if x.dtype in LOW_PRECISION else x
    g = grad.to(y.dtype)

    def per_tap(a: torch.Tensor, at, _) -> torch.Tensor:
        grad_a = torch.exp((p - 1) * a.clamp(min=eps).log() - at(lse)) * at(y * g)  # y · a_i^(p−1) / Σ a^p
        return torch.where(a >= eps, grad_a, torch.zeros_like(grad_a))

    gx = spread(xf, y, k, s, per_tap).to(x.dtype)
    gp = (g * y / p * (weighted - (lse - math.log(k * k)) / p)).sum()
    return gx, gp


KERNELS = Kernels("LpPool", {"forward": _forward, "backward": _backward})


class _LpPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: torch.Tensor, k: int, s: int, eps: float, use_compile: bool) -> torch.Tensor:
        y, lse, weighted = KERNELS.run("forward", use_compile, x.detach(), p.detach(), k, s, eps)
        ctx.save_for_backward(x, p, y, lse, weighted)
        ctx.settings = (k, s, eps, use_compile)
        return y.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, p, y, lse, weighted = ctx.saved_tensors
        k, s, eps, use_compile = ctx.settings
        gx, gp = KERNELS.run("backward", use_compile, x.detach(), p.detach(), y, lse, weighted, grad.contiguous(), k,
                             s, eps)
        return gx, gp.reshape(p.shape).to(p.dtype), None, None, None, None


def lp_pool2d(x: torch.Tensor, p: torch.Tensor, kernel_size: int = 2, stride: int | None = None, eps: float = 1e-6,
              compile: bool = True) -> torch.Tensor:
    """Power-average pooling of (N, C, H, W) over ``kernel_size`` windows every ``stride``, p a 1-element
    tensor, through the fused kernels."""
    s = kernel_size if stride is None else stride
    if torch.is_grad_enabled() and (x.requires_grad or p.requires_grad):
        return _LpPool2d.apply(x, p, kernel_size, s, eps, compile)
    return KERNELS.run("forward", compile, x, p, kernel_size, s, eps)[0].to(x.dtype)


class LpPool(nn.Module):
    """Power-average (local GeM) pooling: ``y = (mean_R max(a, ε)^p)^{1/p}``, p learnable or fixed."""

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2, p: float = 3.0,
                 learnable: bool = True, eps: float = 1e-6, compile: bool = True) -> None:
        super().__init__()
        check_window(kernel_size, stride)
        self.kernel_size, self.stride, self.eps, self.compile = kernel_size, stride or kernel_size, eps, compile
        self.power = PowerParam(p, learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lp_pool2d(x, self.power(), self.kernel_size, self.stride, self.eps, self.compile)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The definition through ``unfold`` and autograd, for the tests."""
        return power_mean(windows(x, self.kernel_size, self.stride), self.power(), dim=-1, eps=self.eps)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, eps={self.eps}, compile={self.compile}"
