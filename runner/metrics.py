"""Per-run classification metrics, computed from logits and integer targets."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_metrics(logits: torch.Tensor, target: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    """``acc``: share of argmax predictions equal to the target; ``nll``: mean −log softmax(logits)_y.

    Rates are fractions in [0, 1]. Probabilities are ``softmax(logits)`` whatever the loss was.
    ``n_bins`` is reserved for the calibration metrics.
    """
    logits = logits.float()
    return {
        "acc": (logits.argmax(dim=1) == target).float().mean().item(),
        "nll": F.cross_entropy(logits, target).item(),
    }
