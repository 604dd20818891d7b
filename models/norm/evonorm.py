"""EvoNorm-B0 and -S0 (Liu, Brock, Simonyan and Le, "Evolving Normalization-Activation Layers", NeurIPS 2020),
taken from timm: they replace the normalization and the ReLU together.

- B0: ``x / max(sqrt(s²_batch + eps), v·x + sqrt(s²_instance + eps)) · γ + β``, running batch variance in eval.
- S0: ``x · sigmoid(v·x) / sqrt(s²_group + eps) · γ + β``, per sample (no running statistics).

Speed: eagerly each block makes several passes over the feature map (5-8 × ``batch`` forward + backward on the CPU);
with ``compile=True`` (the configs' default; a run decides as for pooling, runner/build.py) timm's own forward is
compiled by ``torch.compile``, its backward derived by AOTAutograd, into a few fused loops: the same function.

With ``apply_act=False`` (the end of a residual branch, where BN has no ReLU after it) timm's layers are the
affine map ``γ x + β`` alone; we keep that. The activation after a residual sum stays ReLU, as in timm's nets.
"""
from __future__ import annotations

import torch
from timm.layers import EvoNorm2dB0, EvoNorm2dS0
from torch import nn

from models.compiled import Kernels
from models.norm.basic import check_batch, group_count

B0 = Kernels("EvoNormB0", {"forward": EvoNorm2dB0.forward}, key="norm.compile")
S0 = Kernels("EvoNormS0", {"forward": EvoNorm2dS0.forward}, key="norm.compile")


class EvoNormB0(EvoNorm2dB0):
    """timm's EvoNorm-B0 (default ``eps=1e-3``, ``momentum=0.1``): batch-dependent in training."""

    conv_bias = False
    act_layer = nn.ReLU
    batch_dependent = True

    def __init__(self, channels: int, apply_act: bool = True, eps: float = 1e-3, momentum: float = 0.1,
                 compile: bool = True) -> None:
        super().__init__(channels, apply_act=apply_act, eps=eps, momentum=momentum)
        self.compile = compile

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_batch(self, x)
        return B0.run("forward", self.compile, self, x)


class EvoNormS0(EvoNorm2dS0):
    """timm's EvoNorm-S0 (``eps=1e-5``). The paper's 32 groups do not divide 16 channels; our default is 8."""

    conv_bias = False
    act_layer = nn.ReLU

    def __init__(self, channels: int, apply_act: bool = True, groups: int = 8, group_size: int | None = None,
                 eps: float = 1e-5, compile: bool = True) -> None:
        super().__init__(channels, groups=group_count(channels, groups, group_size), apply_act=apply_act, eps=eps)
        self.compile = compile

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return S0.run("forward", self.compile, self, x)
