"""Self-normalizing networks (Klambauer, Unterthiner, Mayr and Hochreiter, NeurIPS 2017): no normalization
layer, the SELU activation, LeCun-normal weights and alpha dropout in place of dropout."""
from __future__ import annotations

import torch
from torch import nn


def replace_modules(model: nn.Module, kind: type[nn.Module], make) -> int:
    """Swap every ``kind`` submodule for ``make(old)``; returns how many were swapped."""
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is kind:
                setattr(parent, name, make(child))
                swapped += 1
    return swapped


class SELUAct(nn.Module):
    """``SELU(x) = λ (max(0, x) + min(0, α (eˣ − 1)))``, λ ≈ 1.0507, α ≈ 1.6733; the identity with
    ``apply_act=False``."""

    def __init__(self, channels: int, apply_act: bool = True) -> None:
        super().__init__()
        self.act = nn.SELU() if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x)


class SELU:
    """The ``norm=selu`` factory: ``SELU()(C)`` is a ``SELUAct``; the model is re-initialized and its dropout
    made alpha dropout. ``lr_scale`` multiplies the run's learning rate for this net: without a normalization's
    scale invariance, our SELU nets diverged at the shared default (see conf/norm/selu.yaml)."""

    conv_bias = True  # no normalization shift: the convolutions keep their bias
    act_layer = nn.SELU

    def __init__(self, lr_scale: float = 1.0) -> None:
        self.lr_scale = lr_scale

    def __call__(self, channels: int, apply_act: bool = True) -> nn.Module:
        return SELUAct(channels, apply_act)

    @staticmethod
    def prepare_model(model: nn.Module) -> None:
        """LeCun normal, ``std = 1/sqrt(fan_in)``, for every conv and linear weight (``nonlinearity='linear'``:
        torch's 'selu' gain of 3/4 would give up self-normalization), zero biases, AlphaDropout for Dropout."""
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        replace_modules(model, nn.Dropout, lambda d: nn.AlphaDropout(d.p))

    def param_groups(self, model: nn.Module, lr: float) -> list[dict]:
        return [{"params": list(model.parameters()), "lr": lr * self.lr_scale}]
