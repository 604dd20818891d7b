"""Plain (non-residual) CNNs whose stages end in the configured local pooling layer: the small
``SimpleCNN`` and, in ``models/vgg.py``, VGG-11."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from models.layers import check_downsample_at, conv3x3, init_weights


class StagedCNN(nn.Module):
    """Stages of ``conv3x3 → norm`` blocks (``stages[i]`` lists the output channels of stage i's convs),
    each in ``downsample_at`` (default: all) ending in the pooling layer; then global pool → dropout → linear."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        pool: Callable[[int], nn.Module],
        global_pool: Callable[[int], nn.Module],
        norm: Callable[..., nn.Module],
        stages: Sequence[Sequence[int]],
        downsample_at: Sequence[int] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not stages or not all(stages):
            raise ValueError(f"need at least one stage and one conv per stage, got stages {[list(s) for s in stages]}")
        if any(w < 1 for s in stages for w in s):
            raise ValueError(f"model.widths: every conv needs at least one channel, got stages "
                             f"{[list(s) for s in stages]}")
        down = check_downsample_at(downsample_at, len(stages))
        layers: list[nn.Module] = []
        c = in_channels
        self._stage_ends: list[tuple[int, int]] = []  # (index of the stage's last layer in `features`, its channels)
        for i, widths in enumerate(stages):
            for w in widths:
                layers += [conv3x3(c, w, norm), norm(w)]
                c = w
            if i in down:
                layers.append(pool(c))
            self._stage_ends.append((len(layers) - 1, c))
        self.features = nn.Sequential(*layers)
        self.global_pool = global_pool(c)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.global_pool.out_features, num_classes)
        init_weights(self)

    def stages(self) -> list[tuple[nn.Module, int]]:
        """(the module whose output ends each stage, that output's channels), in order (``models/features.py``)."""
        return [(self.features[i], c) for i, c in self._stage_ends]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, C, H', W')
        return self.fc(self.dropout(self.global_pool(x)))  # (N, num_classes)


class SimpleCNN(StagedCNN):
    """A small VGG-style CNN: ``convs_per_stage`` blocks of ``widths[i]`` channels per stage; the family's
    arguments, ``downsample_at`` and ``dropout`` pass through to ``StagedCNN``.

    With the default two stages and 2×2 pooling, 28×28 inputs reach the head at 7×7 and 32×32 at 8×8.
    """

    def __init__(self, *args: Any, widths: Sequence[int] = (32, 64), convs_per_stage: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, stages=[[w] * max(convs_per_stage, 0) for w in widths], **kwargs)
