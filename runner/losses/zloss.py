"""Z-loss (de Brébisson and Vincent, "The Z-loss: a shift and scale invariant classification loss
belonging to the Spherical Family", 2016), and the PaLM / ST-MoE "z-loss" regularizer, a different
method that shares the name (shipped as ``ce_zreg``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runner.losses.ce import wide


class ZLoss(nn.Module):
    """``(1/a)·softplus(a·(b − z_y))`` with ``z = (s − mean(s)) / sqrt(var(s) + eps²)`` over the classes
    (population variance); batch mean.

    Invariant to ``s → αs + β`` for α > 0 wherever std(s) ≫ eps. A scale-invariant loss has a gradient
    of order 1/std: the authors' reference code adds eps = 1e-12 to the std, which at exactly equal logits
    (a zero-initialized classifier, as norm=fixup makes) gives gradients of about 1e9 and ends training.
    Here eps = 1e-3 bounds the gradient at equal logits by about 1/(eps·N) per logit (all logits equal
    give z = 0 and the loss softplus(a·b)/a); any logits with a spread above 0.1 give the authors' values
    to 1e-4. a = 1, b = 0 are the authors'. The logits are not probabilities under this loss; the runner's
    metrics still read them through softmax.
    """

    needs_teacher = False

    def __init__(self, a: float = 1.0, b: float = 0.0, eps: float = 1e-3) -> None:
        super().__init__()
        if not a > 0:
            raise ValueError(f"a must be > 0, got {a}")
        self.a, self.b, self.eps = a, b, eps

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        s = wide(logits)
        mean = s.mean(dim=1, keepdim=True)
        var = (s - mean).pow(2).mean(dim=1, keepdim=True)  # centred first: no cancellation at ±1e4
        z = (s - mean) / (var + self.eps**2).sqrt()
        z_y = z.gather(1, target[:, None]).squeeze(1)
        return (F.softplus(self.a * (self.b - z_y)) / self.a).mean()


class CrossEntropyZReg(nn.Module):
    """PaLM's "z-loss" (Chowdhery et al., 2022; ST-MoE): ``CE + weight·(logsumexp(s))²``, batch mean.

    Not the Z-loss above: it keeps softmax cross-entropy and only pushes log Z towards 0.
    """

    needs_teacher = False

    def __init__(self, weight: float = 1e-4) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.weight = weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        s = wide(logits)
        return F.cross_entropy(s, target) + self.weight * torch.logsumexp(s, dim=1).pow(2).mean()
