"""VGG-11 for CIFAR (Simonyan and Zisserman, ICLR 2015, configuration A, with a norm block after every
conv as in the common CIFAR ports): five stages of 3×3 convs (64 | 128 | 256, 256 | 512, 512 | 512, 512),
each ending in the local pooling layer, then the global head and one linear classifier.

At 32×32 the five poolings reach 1×1. ``downsample_at`` chooses which stages end in a pooling
layer (all five by default); a 28×28 input allows at most four (28 → 14 → 7 → 3 → 1).
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from models.simple_cnn import StagedCNN

STAGES = ((64,), (128,), (256, 256), (512, 512), (512, 512))  # configuration "A": 8 convs (+ 3 FC in the paper)


class VGG(StagedCNN):
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
        super().__init__(in_channels, num_classes, pool, global_pool, norm, stages, downsample_at, dropout)
