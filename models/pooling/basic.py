"""Max and average pooling, and what the family shares: the constructor ``(channels, kernel_size, stride)``
and the output size ``H_out = floor((H - kernel_size) / stride) + 1`` (no padding, floor mode)."""
from __future__ import annotations

import torch
from torch import nn


def check_window(kernel_size: int, stride: int | None) -> None:
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    if stride is not None and stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")


def out_size(size: int, kernel_size: int, stride: int) -> int:
    """Windows along one axis: ``floor((size - kernel_size) / stride) + 1``."""
    if size < kernel_size:
        raise ValueError(f"a {size}-pixel map is smaller than the {kernel_size}-pixel pooling window")
    return (size - kernel_size) // stride + 1


def windows(x: torch.Tensor, kernel_size: int, stride: int) -> torch.Tensor:
    """Every pooling window as the last axis: (N, C, H, W) -> (N, C, H_out, W_out, kernel_size²)."""
    out_size(x.shape[-2], kernel_size, stride), out_size(x.shape[-1], kernel_size, stride)  # checks the size
    return x.unfold(2, kernel_size, stride).unfold(3, kernel_size, stride).flatten(-2)


class MaxPool(nn.MaxPool2d):
    """``y = max over the window``, per channel."""

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2) -> None:
        check_window(kernel_size, stride)
        super().__init__(kernel_size, stride)


class AvgPool(nn.AvgPool2d):
    """``y = mean over the window``, per channel."""

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2) -> None:
        check_window(kernel_size, stride)
        super().__init__(kernel_size, stride)
