"""A small VGG-style CNN whose every stage ends in the configured local pooling layer."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from models.layers import check_downsample_at, conv3x3, init_weights


class SimpleCNN(nn.Module):
    """``[conv3x3 → norm]×convs_per_stage → pool`` per stage, then global pool → dropout → linear.

    ``downsample_at`` lists the stages that end in the pooling layer (default: all).

    With the default two stages and 2×2 pooling, 28×28 inputs reach the head at 7×7 and 32×32 at 8×8.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        pool: Callable[[int], nn.Module],
        global_pool: Callable[[int], nn.Module],
        norm: Callable[..., nn.Module],
        widths: Sequence[int] = (32, 64),
        convs_per_stage: int = 2,
        dropout: float = 0.0,
        downsample_at: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not widths or convs_per_stage < 1:
            raise ValueError(f"need at least one stage and one conv per stage, got widths={list(widths)}, "
                             f"convs_per_stage={convs_per_stage}")
        down = check_downsample_at(downsample_at, len(widths))
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            for _ in range(convs_per_stage):
                layers += [conv3x3(c, w, norm), norm(w)]
                c = w
            if i in down:
                layers.append(pool(w))
        self.features = nn.Sequential(*layers)
        self.global_pool = global_pool(c)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.global_pool.out_features, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, C, H', W')
        return self.fc(self.dropout(self.global_pool(x)))  # (N, num_classes)
