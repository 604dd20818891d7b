"""Power-average pooling, ``y = (mean_{i∈R} max(a_i, ε)^p)^{1/p}``: the local form of GeM
(Radenović, Tolias and Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation", TPAMI 2018).

p = 1 is average pooling and p → ∞ approaches max pooling; p is learnable (GeM's default, p = 3) or
fixed. Inputs are clamped to ε > 0 as in GeM, so negative inputs and fractional p are safe (torch's
``LPPool2d`` returns NaN there, and sums rather than averages). Computed in the log domain,
``y = exp((logsumexp(p·log a) − log|R|) / p)``, so a large p cannot overflow: the plain formula gives
``inf`` in float32 for ``[1, 2, 3, 4]`` at p = 100, this gives 3.944931. p is kept ≥ ``min_p`` so
that 1/p stays finite while it is learned.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models.pooling.basic import check_window, windows


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


class LpPool(nn.Module):
    """Power-average (local GeM) pooling: ``y = (mean_R max(a, ε)^p)^{1/p}``, p learnable or fixed."""

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2, p: float = 3.0,
                 learnable: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        check_window(kernel_size, stride)
        self.kernel_size, self.stride, self.eps = kernel_size, stride or kernel_size, eps
        self.power = PowerParam(p, learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return power_mean(windows(x, self.kernel_size, self.stride), self.power(), dim=-1, eps=self.eps)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, eps={self.eps}"
