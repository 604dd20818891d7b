"""The CIFAR ResNet of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), §4.2.

A 3×3 stem, three stages of n basic blocks (16, 32, 64 channels, depth = 6n + 2), global pooling
and a linear classifier. Shortcuts are option A of the paper (identity; on downsampling, a spatial
subsample and zero-padded channels), so ResNet-20 has 0.27M parameters as in its Table 6.
Between stages the spatial size halves either by a stride-2 first conv (``downsample="conv"``, the
paper) or by a stride-1 conv followed by the configured pooling layer (``downsample="pool"``).
``downsample_at`` lists the stages whose first block downsamples (default 1 and 2, the paper's).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.factory import declared
from models.layers import check_downsample_at, conv3x3, init_weights


class BasicBlock(nn.Module):
    """``act(norm(conv(norm_act(down(conv(x))))) + shortcut(x))``."""

    def __init__(self, cin: int, cout: int, downsample: str | None, pool: Callable[[int], nn.Module],
                 norm: Callable[..., nn.Module]) -> None:
        super().__init__()
        stride = 2 if downsample == "conv" else 1
        self.conv1 = conv3x3(cin, cout, norm, stride=stride)
        self.pool = pool(cout) if downsample == "pool" else nn.Identity()
        self.norm1 = norm(cout)
        self.conv2 = conv3x3(cout, cout, norm)
        self.norm2 = norm(cout, apply_act=False)
        self.act = declared(norm, "act_layer", nn.ReLU)()
        self.downsample = downsample
        self.shortcut_pool = pool(cin) if downsample == "pool" else None
        self.pad = cout - cin

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample == "conv":
            x = x[:, :, ::2, ::2]  # same size as the stride-2 conv with padding 1: ceil(H / 2)
        elif self.shortcut_pool is not None:
            x = self.shortcut_pool(x)
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))  # zero channels, option A
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm1(self.pool(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        pool: Callable[[int], nn.Module],
        global_pool: Callable[[int], nn.Module],
        norm: Callable[..., nn.Module],
        depth: int = 20,
        widths: Sequence[int] = (16, 32, 64),
        downsample: str = "conv",
        downsample_at: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), got {depth}")
        if downsample not in ("conv", "pool"):
            raise ValueError(f"downsample must be 'conv' or 'pool', got {downsample!r}")
        n = (depth - 2) // 6
        down_at = (
            check_downsample_at(downsample_at, len(widths)) if downsample_at is not None else range(1, len(widths))
        )
        self.stem = nn.Sequential(conv3x3(in_channels, widths[0], norm), norm(widths[0]))
        blocks: list[nn.Module] = []
        c = widths[0]
        for stage, w in enumerate(widths):
            for i in range(n):
                down = downsample if stage in down_at and i == 0 else None
                blocks.append(BasicBlock(c, w, down, pool, norm))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self._stage_ends = [
            ((stage + 1) * n - 1, w) for stage, w in enumerate(widths)
        ]  # (last block's index, channels)
        self.global_pool = global_pool(c)
        self.fc = nn.Linear(self.global_pool.out_features, num_classes)
        init_weights(self)

    def residual_branches(self) -> list[list[nn.Conv2d]]:
        """The convolutions of each residual branch in order, for initializations that need them (Fixup)."""
        return [[b.conv1, b.conv2] for b in self.blocks]

    def stages(self) -> list[tuple[nn.Module, int]]:
        """(the last block of each stage, its output channels), in order (``models/features.py``)."""
        return [(self.blocks[i], c) for i, c in self._stage_ends]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))  # (N, 64, H/4, W/4)
        return self.fc(self.global_pool(x))  # (N, num_classes)
