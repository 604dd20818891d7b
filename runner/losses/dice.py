"""Dice-family losses for classification.

- ``DiceMetricLoss``: the Dice semimetric (α = β = ½) and Jaccard metric (α = β = 1) losses of Wang
  and Blaschko et al. (MICCAI 2023, NeurIPS 2023; the JDTLosses code). Cardinalities are L1 norms,
  so soft labels are valid and the loss is 0 exactly when the prediction equals the label:
  ``tp = (‖p‖₁ + ‖y‖₁ − ‖p − y‖₁)/2``, ``fp = ‖p‖₁ − tp``, ``fn = ‖y‖₁ − tp``, per class over the
  whole batch (their ``mIoUD``), ``T_c = (tp + s)/(tp + α·fp + β·fn + s)``, loss = mean of
  ``1 − T_c`` over the classes present in the batch. ``ce_weight`` mixes in cross-entropy
  (``w·CE + (1 − w)·loss``; the authors use 0.25).
- ``SelfAdjustingDiceLoss``: Li et al., "Dice Loss for Data-imbalanced NLP Tasks" (ACL 2020), in the
  multi-class "square" form every experiment script of the authors runs (``--dice_square``,
  ``DICE_ALPHA=0.01``, ``DICE_SMOOTH=1``): per sample and class
  ``1 − (2·p̃_c·y_c + s)/(p̃_c² + y_c² + s)`` with ``p̃ = (1 − p)^α·p``, summed over classes, batch mean.
  The paper's per-sample true-class form with α = 1 is not offered: ``(1 − p)·p`` peaks at p = ½, so it
  is minimised at p_y = ½ and lowers confident correct predictions (METHODS.md §8a); on the tests' data
  it stayed near chance. Their code's form without ``--dice_square`` mixes a per-sample numerator with
  a batch-total denominator; not reproduced either.
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
            raise ValueError(
                f"need alpha, beta, smooth >= 0 and ce_weight in [0, 1], got {alpha}, {beta}, {smooth}, {ce_weight}"
            )
        self.alpha, self.beta, self.smooth, self.ce_weight = alpha, beta, smooth, ce_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(wide(logits), dim=1)
        labels = F.one_hot(target, logits.shape[1]).float()
        loss = tversky_loss(log_p.exp(), labels, self.alpha, self.beta, self.smooth)
        if self.ce_weight:
            loss = self.ce_weight * F.nll_loss(log_p, target) + (1 - self.ce_weight) * loss
        return loss


class SelfAdjustingDiceLoss(nn.Module):
    """Σ_c ``1 − (2·p̃_c·y_c + s)/(p̃_c² + y_c² + s)``, ``p̃ = (1 − p)^α·p`` (Li et al., ACL 2020, the authors'
    square form); batch mean."""

    needs_teacher = False

    def __init__(self, alpha: float = 0.01, smooth: float = 1.0) -> None:
        super().__init__()
        if alpha < 0 or smooth <= 0:
            raise ValueError(f"need alpha >= 0 and smooth > 0, got {alpha}, {smooth}")
        self.alpha, self.smooth = alpha, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        s = wide(logits)
        log_p = F.log_softmax(s, dim=1)  # (N, K)
        k = s.shape[1]
        # log(1 − p_c) = logsumexp of the other logits − logsumexp of all: (1 − p)^α stays differentiable where
        # p rounds to 1 (its plain power has an infinite gradient at 0 for α < 1)
        others = s.unsqueeze(1).masked_fill(torch.eye(k, dtype=torch.bool, device=s.device), float("-inf"))  # (N, K, K)
        log_rest = torch.logsumexp(others, dim=2) - torch.logsumexp(s, dim=1, keepdim=True)
        p = log_p.exp()
        y = F.one_hot(target, k).to(p.dtype)
        q = torch.exp(self.alpha * log_rest) * p
        per_class = 1 - (2 * q * y + self.smooth) / (q.square() + y.square() + self.smooth)
        return per_class.sum(dim=1).mean()
