"""Sparsemax and its loss (Martins and Astudillo, "From Softmax to Sparsemax", ICML 2016).

``sparsemax(z) = max(z − τ(z), 0)``, the Euclidean projection of z onto the simplex: with z sorted in
decreasing order, ``k(z) = max{k : 1 + k·z_(k) > Σ_{j≤k} z_(j)}`` and ``τ = (Σ_{j≤k(z)} z_(j) − 1)/k(z)``.
The loss is ``L(z, y) = −z_y + ½ Σ_{j∈S(z)} (z_j² − τ²) + ½`` (S the support); its gradient is
``sparsemax(z) − e_y``. The runner's metrics still read the logits through softmax, as for every loss.
"""
from __future__ import annotations

import torch
from torch import nn

from runner.losses.ce import wide


def sparsemax_threshold(z: torch.Tensor) -> torch.Tensor:
    """τ(z) per row of (N, K) logits, shape (N, 1)."""
    sorted_z, _ = torch.sort(z, dim=1, descending=True)
    cumsum = sorted_z.cumsum(dim=1)
    k = torch.arange(1, z.shape[1] + 1, device=z.device, dtype=z.dtype)
    support = (1 + k * sorted_z > cumsum).sum(dim=1, keepdim=True)  # k(z) >= 1 always
    return (cumsum.gather(1, support - 1) - 1) / support.to(z.dtype)


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    return (z - sparsemax_threshold(z)).clamp_min(0)


class SparsemaxLoss(nn.Module):
    """``−z_y + ½ Σ_{j∈S(z)} (z_j² − τ²) + ½``, batch mean (its gradient: sparsemax(z) − e_y)."""

    needs_teacher = False

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        z = wide(logits)
        tau = sparsemax_threshold(z)
        support = (z > tau).to(z.dtype)
        z_y = z.gather(1, target[:, None]).squeeze(1)
        return (-z_y + 0.5 * (support * (z.square() - tau.square())).sum(dim=1) + 0.5).mean()
