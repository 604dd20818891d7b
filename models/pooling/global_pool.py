"""Global pooling heads: (N, C, H, W) -> (N, out_features)."""
from __future__ import annotations

import torch
from torch import nn


class GlobalAvgPool(nn.Module):
    """``y_c = mean_{h,w} x_{c,h,w}``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))  # (N, C)


class GlobalMaxPool(nn.Module):
    """``y_c = max_{h,w} x_{c,h,w}``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_features = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3))  # (N, C)
