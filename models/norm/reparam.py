"""Weight normalization (Salimans and Kingma, 2016) and spectral normalization (Miyato et al., ICLR 2018):
torch's parametrizations of the convolution and classifier weights, around any norm+activation block.

These are factories (not block classes): ``WeightNorm(block=...)(C)`` returns ``block(C)``, and the model
builder calls ``prepare_model`` to reparametrize the built model. What the block declares (conv bias,
activation, batch dependence) passes through.
"""
from __future__ import annotations

import functools
from typing import Callable

from torch import nn
from torch.nn.utils import parametrizations

from models.factory import declared


class _Reparametrized:
    def __init__(self, block: Callable[..., nn.Module], classifier: bool = True) -> None:
        self.block = block
        self.classifier = classifier

    def __call__(self, channels: int, apply_act: bool = True) -> nn.Module:
        return self.block(channels, apply_act=apply_act)

    def __getattr__(self, name: str):
        """Whatever the inner block declares (conv_bias, act_layer, batch_dependent, param_groups) passes through."""
        if name.startswith("_") or name == "block":
            raise AttributeError(name)
        return getattr(self.block.func if isinstance(self.block, functools.partial) else self.block, name)

    def layers(self, model: nn.Module) -> list[nn.Module]:
        """The convolutions and, with ``classifier=True``, the linear layers."""
        kinds = (nn.Conv2d, nn.Linear) if self.classifier else (nn.Conv2d,)
        return [m for m in model.modules() if isinstance(m, kinds)]

    def prepare_model(self, model: nn.Module) -> None:
        prepare = declared(self.block, "prepare_model")
        if prepare is not None:
            prepare(model)
        for m in self.layers(model):
            self.reparametrize(m)

    def reparametrize(self, module: nn.Module) -> None:
        raise NotImplementedError


class WeightNorm(_Reparametrized):
    """``w = g · v / ‖v‖`` per output channel (``dim=0``); ``g`` starts at ‖w‖, so the initialization is kept."""

    def __init__(self, block: Callable[..., nn.Module], classifier: bool = True, dim: int = 0) -> None:
        super().__init__(block, classifier)
        self.dim = dim

    def reparametrize(self, module: nn.Module) -> None:
        parametrizations.weight_norm(module, dim=self.dim)


class SpectralNorm(_Reparametrized):
    """``W / σ(W)``, σ estimated by power iteration (``n_power_iterations`` per training forward, 15 at
    registration); a conv weight is taken as an (out, in·k·k) matrix, which is not the conv's operator norm."""

    def __init__(self, block: Callable[..., nn.Module], classifier: bool = True, n_power_iterations: int = 1,
                 eps: float = 1e-12) -> None:
        super().__init__(block, classifier)
        self.n_power_iterations, self.eps = n_power_iterations, eps

    def reparametrize(self, module: nn.Module) -> None:
        parametrizations.spectral_norm(module, n_power_iterations=self.n_power_iterations, eps=self.eps)
