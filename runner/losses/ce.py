"""Cross-entropy with optional label smoothing."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def wide(logits: torch.Tensor) -> torch.Tensor:
    """Logits in float32 at least: half-precision inputs are upcast, float64 stays float64."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


class CrossEntropy(nn.Module):
    """``−Σ_k q_k log softmax(s)_k`` with ``q = (1 − ε)·onehot(y) + ε/K``; batch mean."""

    needs_teacher = False

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(wide(logits), target, label_smoothing=self.label_smoothing)
