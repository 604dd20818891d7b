"""BatchNorm + ReLU and the no-normalization baseline, after timm's norm_act layers."""
from __future__ import annotations

import torch
from torch import nn


class BatchNormAct(nn.BatchNorm2d):
    """BatchNorm (Ioffe and Szegedy, 2015) then ReLU: ``relu(γ (x - μ_B) / sqrt(σ²_B + eps) + β)``."""

    conv_bias = False  # β makes a bias of the preceding convolution redundant
    act_layer = nn.ReLU

    def __init__(self, channels: int, apply_act: bool = True, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(channels, eps=eps, momentum=momentum)
        self.act = self.act_layer(inplace=True) if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class NoNormAct(nn.Module):
    """No normalization: the activation alone (ReLU), or the identity with ``apply_act=False``."""

    conv_bias = True
    act_layer = nn.ReLU

    def __init__(self, channels: int, apply_act: bool = True) -> None:
        super().__init__()
        self.act = self.act_layer(inplace=True) if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x)
