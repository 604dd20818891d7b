"""adaPool: Stergiou and Poppe, "AdaPool: Exponential Adaptive Pooling for Information-Retaining
Downsampling" (IEEE TIP 2023).

A learned mix of two exponentially weighted window means (METHODS.md §2), with ā the window mean:

    eDSCW(R) = Σ_i softmax(DSC)_i a_i,   DSC_i = 2|a_i ā| / (a_i² + ā²)      (Dice–Sørensen weights)
    eM(R)    = Σ_i softmax(a)_i a_i                                        (SoftPool)
    y        = β·eDSCW + (1 − β)·eM

Written in plain torch because the authors' layer exists only as a CUDA kernel and only for one
input size: its β is a raw (H_out, W_out) tensor, "clamped" by a call whose result is discarded.
Here β = σ(θ) (a reparametrization of the paper's clamp to [0, 1], so β never leaves the range and
keeps a gradient), and ``beta`` chooses its granularity: ``scalar`` (one per layer, any input size;
the authors' advice when β learns slowly), ``channel``, or ``region``: an (h, w) map resized
bilinearly to the output grid, which is the paper's per-location β when (h, w) is the output size
and still runs at any resolution. DSC is 0/0 when a_i = ā = 0; it is taken as 0 there (the
reference yields NaN and zeroes it afterwards), so an all-zero window pools to 0.

Speed. Where windows tile the map (k = s, every config's default) the layer runs two fused kernels
(models/pooling/fused.py), compiled like SoftPool's, that compute both branches together: the forward one pass
over the window taps (the max shift and exponential sums of SoftPool, the mean, DSC and its sums, and the part of
the gradient that flows through each window's mean, which needs no upstream gradient), saving five numbers per
window; the backward one elementwise pass over the input. The forward reads the taps as one contiguous tensor
(``planes``, one copy made before it), where Inductor's CPU code vectorizes: over strided views it wrote scalar
loops, 4× slower, which made adaPool 3.3–3.9× ``max_pool2d`` at the shapes of simple_cnn and resnet20.
With w_i = exp(DSC_i)/Σ_j exp(DSC_j), y = eDSCW and n the window's size::

    ∂eDSCW/∂a_j = w_j (1 + (a_j − y) ∂DSC_j/∂a_j) + (1/n) Σ_i w_i (a_i − y) ∂DSC_i/∂ā

Overlapping or gapped windows, and ``compile=False``, take ``reference`` (eDSCW over unfolded windows through
autograd, beside SoftPool's own kernels), eagerly the faster form.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.compiled import Kernels
from models.pooling.basic import check_window, out_size, windows
from models.pooling.fused import LOW_PRECISION, planes, spread, taps
from models.pooling.softpool import soft_pool2d, soft_pool2d_reference

BETA = ("scalar", "channel", "region")


def dice_pool2d(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """eDSCW: each window's mean weighted by softmax of the Dice–Sørensen coefficient of a_i and ā."""
    a = windows(x.float() if x.dtype in LOW_PRECISION else x, kernel_size, stride)  # (N, C, Ho, Wo, k²)
    mean = a.mean(-1, keepdim=True)
    den = a * a + mean * mean
    dsc = 2 * (a * mean).abs() / torch.where(den > 0, den, 1.0)  # in [0, 1]; 0 where a_i = ā = 0
    return (dsc.softmax(-1) * a).sum(-1).to(x.dtype)  # exp(DSC) ∈ [1, e]: no overflow possible


def _dice(a: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DSC of taps ``a`` with their window mean, and its derivatives in a and in ā: with D = a² + ā²,
    DSC = 2|aā|/D, ∂DSC/∂a = (2 sgn(aā) ā − 2 DSC a)/D; all 0 where a = ā = 0, as in the reference."""
    den = a * a + mean * mean
    twice_inv = 2 / torch.where(den > 0, den, 1.0)
    am = a * mean
    dsc = am.abs() * twice_inv
    sign = torch.sign(am)
    return dsc, (sign * mean - dsc * a) * twice_inv, (sign * a - dsc * mean) * twice_inv


def _forward(window_taps: torch.Tensor, beta: torch.Tensor):
    """y and, per window: eDSCW, Σ exp DSC, the mean's share of ∂eDSCW/∂a over n, SoftPool and its lse; from the
    windows' taps (``planes``: float32 or wider)."""
    window = list(window_taps.unbind(1))
    n = len(window)
    mean = functools.reduce(torch.add, window) / n
    m = functools.reduce(torch.maximum, window)
    z = ea = ead = ed = soft_den = soft_num = 0.0
    for a in window:
        dsc, _, d_mean = _dice(a, mean)
        e = torch.exp(dsc)  # in [1, e]: no shift needed
        z, ea, ead, ed = z + e, ea + e * a, ead + e * a * d_mean, ed + e * d_mean
        es = torch.exp(a - m)  # SoftPool's, shifted by the window's max: in (0, 1]
        soft_num, soft_den = soft_num + es * (a - m), soft_den + es
    dice = ea / z
    soft = m + soft_num / soft_den
    via_mean = (ead - dice * ed) / (z * n)  # Σ_i w_i (a_i − y) ∂DSC_i/∂ā / n
    return beta * dice + (1 - beta) * soft, dice, z, via_mean, soft, m + torch.log(soft_den)


def _backward(x, beta, dice, z, via_mean, soft, lse, grad, k, s):
    xf = x.float() if x.dtype in LOW_PRECISION else x
    mean = functools.reduce(torch.add, taps(xf, k, s)) / (k * k)  # recomputed: cheaper than a saved tensor
    g = grad.to(dice.dtype)
    g_dice, g_soft = g * beta, g * (1 - beta)
    g_w, g_mean = g_dice / z, g_dice * via_mean  # per window: fewer values for each tap to read

    def per_tap(a, at, _):
        dsc, d_a, _ = _dice(a, at(mean))
        from_dice = at(g_w) * torch.exp(dsc) * (1 + (a - at(dice)) * d_a) + at(g_mean)
        return from_dice + at(g_soft) * torch.exp(a - at(lse)) * (1 + a - at(soft))

    return spread(xf, dice, k, s, per_tap).to(x.dtype), (g * (dice - soft)).sum_to_size(beta.shape)


KERNELS = Kernels("AdaPool", {"forward": _forward, "backward": _backward})


def _planes(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    return planes(x.float() if x.dtype in LOW_PRECISION else x, k, s)


class _AdaPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: torch.Tensor, k: int, s: int, use_compile: bool) -> torch.Tensor:
        y, *saved = KERNELS.run("forward", use_compile, _planes(x.detach(), k, s), beta.detach())
        ctx.save_for_backward(x, beta, *saved)
        ctx.settings = (k, s, use_compile)
        return y.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, beta, *saved = ctx.saved_tensors
        k, s, use_compile = ctx.settings
        gx, gb = KERNELS.run("backward", use_compile, x.detach(), beta.detach(), *saved, grad.contiguous(), k, s)
        return gx, gb.to(beta.dtype), None, None, None


def ada_pool2d_kernels(x: torch.Tensor, beta: torch.Tensor, kernel_size: int, stride: int,
                       use_compile: bool) -> torch.Tensor:
    """``β·eDSCW(x) + (1 − β)·SoftPool(x)`` through the fused kernels, compiled or eagerly (any window)."""
    if torch.is_grad_enabled() and (x.requires_grad or beta.requires_grad):
        return _AdaPool2d.apply(x, beta, kernel_size, stride, use_compile)
    return KERNELS.run("forward", use_compile, _planes(x, kernel_size, stride), beta)[0].to(x.dtype)


def ada_pool2d(x: torch.Tensor, beta: torch.Tensor | float, kernel_size: int = 2, stride: int | None = None,
               compile: bool = True) -> torch.Tensor:
    """``β·eDSCW(x) + (1 − β)·SoftPool(x)``, β in [0, 1] broadcastable to the output (N, C, Ho, Wo): fused and
    compiled where windows tile the map, else (and with ``compile=False``) the reference form."""
    s = kernel_size if stride is None else stride
    if compile and kernel_size == s and KERNELS.error is None:
        beta = torch.as_tensor(beta, dtype=torch.float32 if x.dtype in LOW_PRECISION else x.dtype, device=x.device)
        return ada_pool2d_kernels(x, beta.view(*[1] * (4 - beta.dim()), *beta.shape), kernel_size, s, True)
    return beta * dice_pool2d(x, kernel_size, s) + (1 - beta) * soft_pool2d(x, kernel_size, s, compile)


class AdaPool(nn.Module):
    """adaPool: ``y = β·eDSCW + (1 − β)·SoftPool`` with a learned ``β = σ(θ)`` (Stergiou and Poppe, 2023)."""

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2, beta: str = "scalar",
                 region_size: Sequence[int] = (4, 4), compile: bool = True) -> None:
        super().__init__()
        check_window(kernel_size, stride)
        if beta not in BETA:
            raise ValueError(f"beta must be one of {', '.join(BETA)}, got {beta!r}")
        self.kernel_size, self.stride, self.beta, self.compile = kernel_size, stride or kernel_size, beta, compile
        shape = {"scalar": (1, 1, 1, 1), "channel": (1, channels, 1, 1), "region": (1, 1, *region_size)}[beta]
        self.theta = nn.Parameter(torch.zeros(shape))  # β = ½ at the start

    def mixing(self, out_hw: Sequence[int]) -> torch.Tensor:
        """β broadcastable to (N, C, Ho, Wo)."""
        theta = self.theta
        if self.beta == "region" and tuple(theta.shape[-2:]) != tuple(out_hw):
            theta = F.interpolate(theta, size=tuple(out_hw), mode="bilinear", align_corners=True)
        return torch.sigmoid(theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        beta = self.mixing((out_size(x.shape[-2], k, s), out_size(x.shape[-1], k, s)))
        return ada_pool2d(x, beta, k, s, self.compile)

    def kernels(self, x: torch.Tensor, use_compile: bool) -> torch.Tensor:
        """The fused kernels, compiled or eagerly, for any window (the tests compare them with ``reference``)."""
        k, s = self.kernel_size, self.stride
        return ada_pool2d_kernels(x, self.mixing((out_size(x.shape[-2], k, s), out_size(x.shape[-1], k, s))), k, s,
                                  use_compile)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The definition: eDSCW over unfolded windows and SoftPool's reference, through autograd."""
        k, s = self.kernel_size, self.stride
        beta = self.mixing((out_size(x.shape[-2], k, s), out_size(x.shape[-1], k, s)))
        return beta * dice_pool2d(x, k, s) + (1 - beta) * soft_pool2d_reference(x, k, s)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, beta={self.beta}, compile={self.compile}"
