"""BatchNorm, GroupNorm (LayerNorm, InstanceNorm) + ReLU and the no-normalization baseline, after timm's
norm_act layers."""
from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Gt, Interval
import torch
from torch import nn


def check_batch(block: nn.Module, x: torch.Tensor) -> None:
    """A block that normalizes with statistics over the batch cannot train on one sample: say so, not NaN."""
    if block.training and x.shape[0] == 1:
        raise ValueError(f"{type(block).__name__} normalizes with statistics over the batch and cannot train on a "
                         f"batch of 1; use batch_size >= 2 or a norm computed per sample")


def group_count(channels: int, groups: int, group_size: int | None) -> int:
    """The number of groups for a layer of ``channels``: ``channels // group_size`` if given, else ``groups``,
    which must divide the channels (a clear error, not a reshape failure, when it does not)."""
    if group_size:
        if channels % group_size:
            raise ValueError(f"norm.group_size={group_size} does not divide a layer of {channels} channels; "
                             f"choose a group size that divides every width of the model")
        return channels // group_size
    if channels % groups:
        raise ValueError(f"norm.groups={groups} does not divide a layer of {channels} channels; choose a number of "
                         f"groups that divides every width of the model (8 divides 16, 32, 64, …, 512), or set "
                         f"norm.group_size")
    return groups


class BatchNormAct(nn.BatchNorm2d):
    """BatchNorm (Ioffe and Szegedy, 2015) then ReLU: ``relu(γ (x - μ_B) / sqrt(σ²_B + eps) + β)``."""

    conv_bias = False  # β makes a bias of the preceding convolution redundant
    act_layer = nn.ReLU
    batch_dependent = True

    def __init__(self, channels: int, apply_act: bool = True, eps: Annotated[float, Gt(0)] = 1e-5,
                 momentum: Annotated[float, Interval(ge=0, le=1)] = 0.1) -> None:
        super().__init__(channels, eps=eps, momentum=momentum)
        self.act = self.act_layer(inplace=True) if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch(self, x)
        return self.act(super().forward(x))


class GroupNormAct(nn.GroupNorm):
    """GroupNorm (Wu and He, ECCV 2018) then ReLU: per sample, over each group of C/G channels and (H, W).

    ``groups=1`` is the LayerNorm used in conv nets (over C, H, W, with a per-channel affine), and
    ``group_size=1`` is InstanceNorm (over H, W per channel, with a per-channel affine). The paper's
    default G = 32 does not divide the 16 channels of ResNet-20's first stage; our default, 8, divides
    every width of the models here. ``group_size`` (channels per group) overrides ``groups``.
    """

    conv_bias = False
    act_layer = nn.ReLU

    def __init__(self, channels: int, apply_act: bool = True, groups: Annotated[int, Ge(1)] = 8,
                 group_size: Annotated[int, Ge(1)] | None = None, eps: Annotated[float, Gt(0)] = 1e-5) -> None:
        super().__init__(group_count(channels, groups, group_size), channels, eps=eps)
        self.act = self.act_layer(inplace=True) if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x[0].numel() == self.num_groups:
            raise ValueError(f"GroupNorm with {self.num_groups} groups of a {self.num_channels}-channel "
                             f"{x.shape[2]}×{x.shape[3]} map normalizes groups of one value, all to 0; use fewer "
                             f"groups, a larger input, or fewer downsampling stages (model.downsample_at)")
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
