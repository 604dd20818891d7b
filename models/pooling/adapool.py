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
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.pooling.basic import check_window, out_size, windows
from models.pooling.softpool import soft_pool2d

BETA = ("scalar", "channel", "region")


def dice_pool2d(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """eDSCW: each window's mean weighted by softmax of the Dice–Sørensen coefficient of a_i and ā."""
    a = windows(
        x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, kernel_size, stride
    )  # (N, C, Ho, Wo, k²)
    mean = a.mean(-1, keepdim=True)
    den = a * a + mean * mean
    dsc = 2 * (a * mean).abs() / torch.where(den > 0, den, 1.0)  # in [0, 1]; 0 where a_i = ā = 0
    return (dsc.softmax(-1) * a).sum(-1).to(x.dtype)  # exp(DSC) ∈ [1, e]: no overflow possible


def ada_pool2d(x: torch.Tensor, beta: torch.Tensor | float, kernel_size: int = 2, stride: int | None = None,
               compile: bool = True) -> torch.Tensor:
    """``β·eDSCW(x) + (1 − β)·SoftPool(x)``, β in [0, 1] broadcastable to the output (N, C, Ho, Wo)."""
    s = kernel_size if stride is None else stride
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

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, beta={self.beta}, compile={self.compile}"
