"""Mixed, gated and tree pooling: Lee, Gallagher and Tu, "Generalizing Pooling Functions in
Convolutional Neural Networks: Mixed, Gated, and Tree" (AISTATS 2016).

For a window x (vectorized, k² values), with f_max = max x and f_avg = mean x:

- mixed:  ``y = a·f_max + (1 − a)·f_avg``, a learned, independent of the input ("unresponsive");
- gated:  ``y = σ(ωᵀx)·f_max + (1 − σ(ωᵀx))·f_avg``, ω a learned k×k gating mask ("responsive");
- tree:   a binary tree whose leaves are learned pooling filters ``v_mᵀx`` and whose internal nodes
  mix their two children with a gate ``σ(ω_nᵀx)``; depth 2 (2 leaves, 1 gate) or 3 (4 leaves, 3 gates).

ωᵀx and v_mᵀx over every window are a convolution of each channel with a k×k filter at the
pooling stride, so they run as ``conv2d``. The authors' Caffe code shares each mask and filter over
all channels ("one mask per layer") with no bias, as here by default; ``per="channel"`` gives each
channel its own. Caffe's partial border windows (ceil output size) are not reproduced: the output
size is the family's floor rule. Where the paper leaves it open, our choices: a = σ(θ) keeps the
mixing proportion in [0, 1] (θ = 0, a = ½ at the start); gates start at ω = 0 (σ = ½); tree leaves
start at the average filter plus noise (std 0.1/k²), so that the two children of a gate differ and
the gate receives a gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.pooling.basic import check_window

PER = ("layer", "channel")


def _responses(x: torch.Tensor, filters: torch.Tensor, stride: int) -> torch.Tensor:
    """``fᵀx`` for every window and filter. x (N, C, H, W); filters (G, F, k, k), G = 1 (shared over
    channels) or C (one set per channel) -> (N, C, F, Ho, Wo)."""
    n, c = x.shape[:2]
    _, nf, k, _ = filters.shape
    # Shared filters are repeated per channel for one grouped conv: on the CPU that is ~8× faster than
    # a conv over N·C one-channel images (bench: 17 vs 142 ms on 128×64×32×32, forward + backward).
    weight = filters.expand(c, nf, k, k).reshape(c * nf, 1, k, k)  # output channel c·F + f: filter f of channel c
    out = F.conv2d(x, weight, stride=stride, groups=c)  # (N, C·F, Ho, Wo)
    return out.view(n, c, nf, *out.shape[-2:])


class _LearnedPool(nn.Module):
    def __init__(self, channels: int, kernel_size: int, stride: int | None, per: str) -> None:
        super().__init__()
        check_window(kernel_size, stride)
        if per not in PER:
            raise ValueError(f"per must be one of {', '.join(PER)}, got {per!r}")
        self.kernel_size, self.stride, self.per = kernel_size, stride or kernel_size, per
        self.groups = 1 if per == "layer" else channels

    def max_avg(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.max_pool2d(x, self.kernel_size, self.stride), F.avg_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, per={self.per}"


class MixedPool(_LearnedPool):
    """Mixed max-average pooling: ``y = a·max + (1 − a)·avg``, ``a = σ(θ)`` learned per layer or per channel."""

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2, per: str = "layer") -> None:
        super().__init__(channels, kernel_size, stride, per)
        self.theta = nn.Parameter(torch.zeros(1, self.groups, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mx, avg = self.max_avg(x)
        a = torch.sigmoid(self.theta)
        return a * mx + (1 - a) * avg


class GatedPool(_LearnedPool):
    """Gated max-average pooling: ``y = σ(ωᵀx)·max + (1 − σ(ωᵀx))·avg``, a k×k mask ω per layer or per channel."""

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2, per: str = "layer") -> None:
        super().__init__(channels, kernel_size, stride, per)
        self.mask = nn.Parameter(torch.zeros(self.groups, 1, kernel_size, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mx, avg = self.max_avg(x)
        gate = torch.sigmoid(_responses(x, self.mask, self.stride)[:, :, 0])  # (N, C, Ho, Wo)
        return gate * mx + (1 - gate) * avg


class TreePool(_LearnedPool):
    """Tree pooling: leaves ``v_mᵀx`` combined bottom-up by gates ``σ(ω_nᵀx)``, ``depth`` levels (2 or 3).

    Filters are stored leaves first, then gates in breadth-first order (root first); gate n mixes
    ``σ·left + (1 − σ)·right``.
    """

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2, depth: int = 2,
                 per: str = "layer") -> None:
        super().__init__(channels, kernel_size, stride, per)
        if depth not in (2, 3):
            raise ValueError(f"depth must be 2 (2 leaves, 1 gate) or 3 (4 leaves, 3 gates), got {depth}")
        self.depth, self.leaves = depth, 2 ** (depth - 1)
        k2 = kernel_size * kernel_size
        leaves = 1 / k2 + 0.1 / k2 * torch.randn(self.groups, self.leaves, kernel_size, kernel_size)
        gates = torch.zeros(self.groups, self.leaves - 1, kernel_size, kernel_size)
        self.filters = nn.Parameter(torch.cat([leaves, gates], dim=1))  # (G, leaves + gates, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = _responses(x, self.filters, self.stride)  # (N, C, leaves + gates, Ho, Wo)
        level = list(r[:, :, :self.leaves].unbind(2))
        gates = torch.sigmoid(r[:, :, self.leaves:]).unbind(2)
        first = len(gates)  # the gates of each level, deepest first: for 3 levels, gates 1, 2 then 0
        while len(level) > 1:
            first -= len(level) // 2
            level = [gates[first + i] * level[2 * i] + (1 - gates[first + i]) * level[2 * i + 1]
                     for i in range(len(level) // 2)]
        return level[0]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", depth={self.depth}"
