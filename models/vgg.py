"""VGG-11 for CIFAR (Simonyan and Zisserman, ICLR 2015, configuration A, with a norm block after every
conv as in the common CIFAR ports): five stages of 3×3 convs (64 | 128 | 256, 256 | 512, 512 | 512, 512),
each ending in the local pooling layer, then the global head and one linear classifier.

At 32×32 the five poolings reach 1×1. ``downsample_at`` chooses which stages end in a pooling
layer (all five by default); a 28×28 input allows at most four (28 → 14 → 7 → 3 → 1).
"""
from __future__ import annotations

from typing import Any, Sequence

from models.simple_cnn import StagedCNN

STAGES = ((64,), (128,), (256, 256), (512, 512), (512, 512))  # configuration "A": 8 convs (+ 3 FC in the paper)


class VGG(StagedCNN):
    """``StagedCNN`` with VGG-11's stages; takes the family's arguments plus ``downsample_at`` and ``dropout``."""

    def __init__(self, *args: Any, stages: Sequence[Sequence[int]] = STAGES, **kwargs: Any) -> None:
        super().__init__(*args, stages=stages, **kwargs)
