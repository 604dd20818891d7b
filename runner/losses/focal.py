"""Focal losses as the calibration papers use them (multiclass, no α): focal (Lin et al., ICCV 2017,
in Mukhoti et al.'s NeurIPS 2020 form), FLSD-53 (Mukhoti et al.) and dual focal (Tao, Dong and Xu,
ICML 2023). Batch mean (the reference code sums over the batch).
"""
from __future__ import annotations

from typing import Annotated

from annotated_types import Interval
import torch
import torch.nn.functional as F
from torch import nn

from runner.losses.ce import wide


def _check_gamma(gamma: float) -> None:
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")


def _log_p_y(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    log_p = F.log_softmax(wide(logits), dim=1)
    return log_p, log_p.gather(1, target[:, None]).squeeze(1)


class FocalLoss(nn.Module):
    """``−(1 − p_y)^γ log p_y``; γ = 3 as in Mukhoti et al.'s FL-3; batch mean."""

    needs_teacher = False

    def __init__(self, gamma: float = 3.0) -> None:
        super().__init__()
        _check_gamma(gamma)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _, log_p_y = _log_p_y(logits, target)
        return (-(1 - log_p_y.exp()).pow(self.gamma) * log_p_y).mean()


class AdaptiveFocalLoss(nn.Module):
    """FLSD-53: focal loss with a per-sample γ = 5 where p_y < 0.2, else 3 (γ is not differentiated); batch mean."""

    needs_teacher = False

    def __init__(self, gamma_low: float = 5.0, gamma: float = 3.0,
                 threshold: Annotated[float, Interval(gt=0, lt=1)] = 0.2) -> None:
        super().__init__()
        _check_gamma(gamma_low), _check_gamma(gamma)
        self.gamma_low, self.gamma, self.threshold = gamma_low, gamma, threshold

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _, log_p_y = _log_p_y(logits, target)
        p_y = log_p_y.exp()
        gamma = torch.where(p_y.detach() < self.threshold, self.gamma_low, self.gamma)
        return (-(1 - p_y).pow(gamma) * log_p_y).mean()


class DualFocalLoss(nn.Module):
    """``−(1 − p_y + p_j)^γ log p_y`` with p_j the largest probability strictly below p_y (0 if none);
    batch mean.

    p_j is not the largest non-target probability: when the model is wrong it is the class ranked
    just below y. Gradients flow through p_j, as in the reference. γ = 5 is the paper's setting for
    CIFAR-10/100 ResNet-50 (the reference code's default γ = 0 is plain CE).
    """

    needs_teacher = False

    def __init__(self, gamma: float = 5.0) -> None:
        super().__init__()
        _check_gamma(gamma)
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p, log_p_y = _log_p_y(logits, target)
        p = log_p.exp()
        p_y = log_p_y.exp()
        below = p < p_y[:, None]  # strictly below: ties with p_y (and y itself) are out
        p_j = torch.where(below, p, torch.zeros_like(p)).amax(dim=1)
        return (-(1 - p_y + p_j).pow(self.gamma) * log_p_y).mean()
