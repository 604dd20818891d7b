"""Dice-family losses for classification.

- ``DiceMetricLoss``: the Dice semimetric (α = β = ½) and Jaccard metric (α = β = 1) losses of Wang
  and Blaschko et al. (MICCAI 2023, NeurIPS 2023; the JDTLosses code). Cardinalities are L1 norms,
  so soft labels are valid and the loss is 0 exactly when the prediction equals the label:
  ``tp = (‖p‖₁ + ‖y‖₁ − ‖p − y‖₁)/2``, ``fp = ‖p‖₁ − tp``, ``fn = ‖y‖₁ − tp``, per class over the
  whole batch (their ``mIoUD``), ``T_c = (tp + s)/(tp + α·fp + β·fn + s)``, loss = mean of
  ``1 − T_c`` over the classes present in the batch. ``ce_weight`` mixes in cross-entropy
  (``w·CE + (1 − w)·loss``; the authors use 0.25).
- ``SelfAdjustingDiceLoss``: Li et al., "Dice Loss for Data-imbalanced NLP Tasks" (ACL 2020), per
  sample on the true-class probability: ``1 − (2·p̃ + γ)/(p̃ + 1 + γ)``, ``p̃ = (1 − p_y)^α·p_y``.
  Batch mean. (Their code's multi-class form without ``--dice_square`` mixes a per-sample numerator
  with a batch-total denominator; not reproduced.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runner.losses.ce import wide


def tversky_loss(probs: torch.Tensor, labels: torch.Tensor, alpha: float, beta: float, smooth: float = 1e-3,
                 threshold: float = 0.01) -> torch.Tensor:
    """Batch-level per-class ``1 − Tversky`` with L1 cardinalities; probs and (soft) labels (N, K)."""
    p_norm, y_norm = probs.sum(0), labels.sum(0)  # (K,)
    diff = (probs - labels).abs().sum(0)
    tp = (p_norm + y_norm - diff) / 2
    fp, fn = p_norm - tp, y_norm - tp
    score = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    present = labels.amax(0) > threshold  # classes with a label in this batch
    if not present.any():
        return 0.0 * tp.sum()  # keeps the graph
    return (1 - score[present]).mean()


class DiceMetricLoss(nn.Module):
    """Dice semimetric loss (α = β = ½) or, with α = β = 1, the Jaccard metric loss; see the module."""

    needs_teacher = False

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, smooth: float = 1e-3, ce_weight: float = 0.0) -> None:
        super().__init__()
        if alpha < 0 or beta < 0 or smooth < 0 or not 0 <= ce_weight <= 1:
            raise ValueError(f"need alpha, beta, smooth >= 0 and ce_weight in [0, 1], got {alpha}, {beta}, {smooth}, {ce_weight}")
        self.alpha, self.beta, self.smooth, self.ce_weight = alpha, beta, smooth, ce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(wide(logits), dim=1)
        labels = F.one_hot(target, logits.shape[1]).float()
        loss = tversky_loss(log_p.exp(), labels, self.alpha, self.beta, self.smooth)
        if self.ce_weight:
            loss = self.ce_weight * F.nll_loss(log_p, target) + (1 - self.ce_weight) * loss
        return loss


class SelfAdjustingDiceLoss(nn.Module):
    """``1 − (2·p̃ + γ)/(p̃ + 1 + γ)`` with ``p̃ = (1 − p_y)^α·p_y`` (Li et al., ACL 2020); batch mean."""

    needs_teacher = False

    def __init__(self, alpha: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__()
        if alpha < 0 or gamma <= 0:
            raise ValueError(f"need alpha >= 0 and gamma > 0, got {alpha}, {gamma}")
        self.alpha, self.gamma = alpha, gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p_y = F.softmax(wide(logits), dim=1).gather(1, target[:, None]).squeeze(1)
        p = (1 - p_y).pow(self.alpha) * p_y
        return (1 - (2 * p + self.gamma) / (p + 1 + self.gamma)).mean()
