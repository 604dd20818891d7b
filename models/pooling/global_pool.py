"""Global pooling heads, ``global_pool(C)``: (N, C, H, W) -> (N, out_features).

avg, max, avgmax and catavgmax compute what timm's ``SelectAdaptivePool2d`` does (the tests check
them against it); they are one line each, and importing timm would add about 2 s to every process.
timm has no GeM, global SoftPool or spatial pyramid head.
"""
from __future__ import annotations

from typing import Annotated, Sequence

from annotated_types import Ge
import torch
import torch.nn.functional as F
from torch import nn

from models.pooling.lp import PowerParam, power_mean


class _Head(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_features = channels


class GlobalAvgPool(_Head):
    """``y_c = mean_{h,w} x_{c,h,w}``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))  # (N, C)


class GlobalMaxPool(_Head):
    """``y_c = max_{h,w} x_{c,h,w}``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax((2, 3))


class GlobalAvgMaxPool(_Head):
    """``y_c = (mean_{h,w} x_c + max_{h,w} x_c) / 2``, timm's ``avgmax``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))


class GlobalCatAvgMaxPool(_Head):
    """``y = [mean_{h,w} x ; max_{h,w} x]``: 2C features, averages first, timm's ``catavgmax``."""

    def __init__(self, channels: int) -> None:
        super().__init__(2 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], dim=1)  # (N, 2C)


class GeM(_Head):
    """Generalized mean (Radenović et al., TPAMI 2018): ``y_c = (mean_{h,w} max(x_c, ε)^p)^{1/p}``, p learnable."""

    def __init__(self, channels: int, p: float = 3.0, learnable: bool = True, eps: float = 1e-6) -> None:
        super().__init__(channels)
        self.eps = eps
        self.power = PowerParam(p, learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return power_mean(x.flatten(2), self.power(), dim=-1, eps=self.eps)  # (N, C)


class GGeM(_Head):
    """Group generalized mean ("Group Generalized Mean Pooling for Vision Transformer", applied to a CNN's channel
    groups): GeM with one exponent per group of ``C / groups`` channels,
    ``y_c = (mean_{h,w} max(x_c, ε)^{p_g})^{1/p_g}``
    for c in group g. ``groups=1`` is GeM; ``groups=C`` gives every channel its own p."""

    def __init__(self, channels: int, groups: Annotated[int, Ge(1)] = 8, p: float = 3.0, learnable: bool = True,
                 eps: float = 1e-6) -> None:
        super().__init__(channels)
        if channels % groups:
            raise ValueError(f"groups={groups} does not divide a layer of {channels} channels")
        self.groups, self.eps = groups, eps
        self.power = PowerParam(p, learnable, size=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        p = self.power().repeat_interleave(c // self.groups).view(1, c, 1)  # (1, C, 1): each group's p per channel
        return power_mean(x.flatten(2), p, dim=-1, eps=self.eps).view(n, c)  # (N, C)


class GlobalSoftPool(_Head):
    """SoftPool over the whole map: ``y_c = Σ_{h,w} softmax(x_c)_{h,w} x_{c,h,w}``, shifted by the map's max."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.flatten(2)  # (N, C, H·W)
        m = a.amax(-1, keepdim=True)
        d = a - m  # ≤ 0; y = m + Σ w·(a − m) is exact for a constant map, where Σ w·a is off by rounding of w
        return m.squeeze(-1) + (d.softmax(-1) * d).sum(-1)


class SpatialPyramidPool(_Head):
    """Spatial pyramid pooling (He et al., ECCV 2014): max over n×n bins for each level n, concatenated.

    ``out_features = C · Σ n²`` (C·21 for levels 1, 2, 4), level by level, each flattened channel-major.
    Bins are ``adaptive_max_pool2d``'s (window ⌈(i+1)·a/n⌉ − ⌊i·a/n⌋), not the paper's ⌈a/n⌉/⌊a/n⌋ pair.
    """

    def __init__(self, channels: int, levels: Sequence[int] = (1, 2, 4)) -> None:
        if not levels or any(n < 1 for n in levels):
            raise ValueError(f"levels must be positive bin counts, got {list(levels)}")
        super().__init__(channels * sum(n * n for n in levels))
        self.levels = tuple(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.adaptive_max_pool2d(x, n).flatten(1) for n in self.levels], dim=1)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"
