"""Small pieces the models share."""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from models.factory import declared


def conv3x3(cin: int, cout: int, norm: Callable[..., nn.Module], stride: int = 1) -> nn.Conv2d:
    """3×3 convolution, padding 1; biased only when the norm block after it has no shift of its own."""
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=declared(norm, "conv_bias", False))


def init_weights(model: nn.Module) -> None:
    """He-normal convolutions (He et al., 2015, fan_out as in torchvision's ResNet), zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def check_downsample_at(downsample_at: Sequence[int] | None, stages: int) -> frozenset[int]:
    """The stage indices that downsample (``None``: all of them), checked against the model's stages."""
    if downsample_at is None:
        return frozenset(range(stages))
    down = list(downsample_at)
    if any(not 0 <= i < stages for i in down) or len(set(down)) != len(down):
        raise ValueError(f"downsample_at must list distinct stage indices in 0..{stages - 1}, got {down}")
    return frozenset(down)
