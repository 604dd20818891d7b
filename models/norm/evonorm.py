"""EvoNorm-B0 and -S0 (Liu, Brock, Simonyan and Le, "Evolving Normalization-Activation Layers", NeurIPS 2020),
taken from timm: they replace the normalization and the ReLU together.

- B0: ``x / max(sqrt(s²_batch + eps), v·x + sqrt(s²_instance + eps)) · γ + β``, running batch variance in eval.
- S0: ``x · sigmoid(v·x) / sqrt(s²_group + eps) · γ + β``, per sample (no running statistics).

With ``apply_act=False`` (the end of a residual branch, where BN has no ReLU after it) timm's layers are the
affine map ``γ x + β`` alone; we keep that. The activation after a residual sum stays ReLU, as in timm's nets.
"""
from __future__ import annotations

import torch
from timm.layers import EvoNorm2dB0, EvoNorm2dS0
from torch import nn

from models.norm.basic import check_batch, group_count


class EvoNormB0(EvoNorm2dB0):
    """timm's EvoNorm-B0 (default ``eps=1e-3``, ``momentum=0.1``): batch-dependent in training."""

    conv_bias = False
    act_layer = nn.ReLU
    batch_dependent = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch(self, x)
        return super().forward(x)


class EvoNormS0(EvoNorm2dS0):
    """timm's EvoNorm-S0 (``eps=1e-5``). The paper's 32 groups do not divide 16 channels; our default is 8."""

    conv_bias = False
    act_layer = nn.ReLU

    def __init__(self, channels: int, apply_act: bool = True, groups: int = 8, group_size: int | None = None,
                 eps: float = 1e-5) -> None:
        super().__init__(channels, groups=group_count(channels, groups, group_size), apply_act=apply_act, eps=eps)
