"""Fixup (Zhang, Dauphin and Ma, "Fixup Initialization: Residual Learning Without Normalization", ICLR 2019).

No normalization layer. Each residual branch ``conv1 → act → conv2`` becomes, with scalar parameters,

    conv2(relu(conv1(x + a1) + b1) + a2) · scale + b2,   added to shortcut(x + a1)

and the classifier reads ``fc(pool(h) + a_fc)``. Here these scalars live in the norm+activation blocks the
model already places, so no model file names Fixup:

- ``Fixup()(C)`` (after a conv, with activation): ``relu(x + b) + a`` (``a``: the next conv's input bias);
- ``Fixup()(C, apply_act=False)`` (end of a branch): ``x · scale + b``;
- ``FixupAct()`` (after a residual sum): ``relu(x) + a`` (the next block's ``a1``, or the classifier's bias).

``prepare_model`` initializes as the paper does: the last conv of each of the L branches at 0, the other
branch convs He-normal scaled by ``L^(-1/(2m-2))`` (m convs per branch), the classifier at 0. Each residual
block is then the identity before its ReLU, and the logits are 0 for any input. It needs a model that lists its
residual branches (``residual_branches()``).
"""
from __future__ import annotations

import torch
from torch import nn


def _scalar(value: float) -> nn.Parameter:
    return nn.Parameter(torch.full((1,), value))


class FixupAct(nn.Module):
    """``relu(x) + a``: the activation after a residual sum, then the next layer's scalar input bias."""

    def __init__(self) -> None:
        super().__init__()
        self.bias_out = _scalar(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x) + self.bias_out


class FixupNormAct(nn.Module):
    """``relu(x + b) + a`` after a conv, or ``x · scale + b`` at the end of a branch (``apply_act=False``)."""

    def __init__(self, channels: int, apply_act: bool = True) -> None:
        super().__init__()
        self.apply_act = apply_act
        if apply_act:
            self.bias_in, self.bias_out = _scalar(0.0), _scalar(0.0)
        else:
            self.scale, self.bias = _scalar(1.0), _scalar(0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.apply_act:
            return torch.relu(x + self.bias_in) + self.bias_out
        return x * self.scale + self.bias


class Fixup:
    """The ``norm=fixup`` factory: ``Fixup()(C)`` is a ``FixupNormAct``; ``prepare_model`` initializes the
    residual model, and the scalar biases and scales (and the classifier's bias) train at
    ``scalar_lr_scale`` × the run's learning rate, 1/10 in the authors' training script."""

    conv_bias = False  # the scalar biases take the place of per-channel conv biases
    act_layer = FixupAct
    model_requires = ("residual_branches", "a model with residual blocks")

    def __init__(self, scalar_lr_scale: float = 0.1) -> None:
        self.scalar_lr_scale = scalar_lr_scale

    def __call__(self, channels: int, apply_act: bool = True) -> nn.Module:
        return FixupNormAct(channels, apply_act)

    @staticmethod
    def prepare_model(model: nn.Module) -> None:
        branches = model.residual_branches()
        for convs in branches:
            m = len(convs)
            for conv in convs[:-1]:
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                with torch.no_grad():
                    conv.weight.mul_(len(branches) ** (-1.0 / (2 * m - 2)))
            nn.init.zeros_(convs[-1].weight)
        classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        nn.init.zeros_(classifier.weight)
        nn.init.zeros_(classifier.bias)

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        """As the authors' script splits them: parameters named ``bias`` or ``scale`` apart from the rest."""
        named = list(model.named_parameters())
        scalar = [p for n, p in named if "bias" in n or "scale" in n]
        return [{"params": [p for n, p in named if not ("bias" in n or "scale" in n)]},
                {"params": scalar, "lr": lr * self.scalar_lr_scale}]
