"""Max and average pooling with the family's shared constructor ``(channels, kernel_size, stride)``.

Output size ``H_out = floor((H - kernel_size) / stride) + 1`` (no padding, floor mode).
"""
from __future__ import annotations

from torch import nn


def _check_window(kernel_size: int, stride: int | None) -> None:
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    if stride is not None and stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")


class MaxPool(nn.MaxPool2d):
    """``y = max over the window``, per channel."""

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2) -> None:
        _check_window(kernel_size, stride)
        super().__init__(kernel_size, stride)


class AvgPool(nn.AvgPool2d):
    """``y = mean over the window``, per channel."""

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2) -> None:
        _check_window(kernel_size, stride)
        super().__init__(kernel_size, stride)
