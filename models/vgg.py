"""VGG-11 for CIFAR (Simonyan and Zisserman, ICLR 2015, configuration A, with BatchNorm after every conv
as in the common CIFAR ports): five stages of 3×3 convs (64 | 128 | 256, 256 | 512, 512 | 512, 512),
each ending in the local pooling layer, then the global head and one linear classifier.

At 32×32 the five poolings reach 1×1. ``downsample_at`` chooses which stages end in a pooling
layer (all five by default); a 28×28 input allows at most four (28 → 14 → 7 → 3 → 1).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from models.layers import check_downsample_at, conv3x3, init_weights

STAGES = ((64,), (128,), (256, 256), (512, 512), (512, 512))  # VGG configuration "A", 8 convs + 3 FC in the paper


class VGG(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        pool: Callable[[int], nn.Module],
        global_pool: Callable[[int], nn.Module],
        norm: Callable[..., nn.Module],
        stages: Sequence[Sequence[int]] = STAGES,
        downsample_at: Sequence[int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        down = check_downsample_at(downsample_at, len(stages))
        layers: list[nn.Module] = []
        c = in_channels
        for i, widths in enumerate(stages):
            for w in widths:
                layers += [conv3x3(c, w, norm), norm(w)]
                c = w
            if i in down:
                layers.append(pool(c))
        self.features = nn.Sequential(*layers)
        self.global_pool = global_pool(c)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.global_pool.out_features, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 512, H / 2^pools, W / 2^pools)
        return self.fc(self.dropout(self.global_pool(x)))  # (N, num_classes)
