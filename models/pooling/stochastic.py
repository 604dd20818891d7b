"""Stochastic pooling: Zeiler and Fergus, "Stochastic Pooling for Regularization of Deep
Convolutional Neural Networks" (ICLR 2013).

In each window the activations, made non-negative (``r = max(a, 0)``; the paper assumes post-ReLU
inputs), define probabilities ``p_i = r_i / Σ_j r_j``. Training outputs one activation sampled with
those probabilities (the gradient reaches only the sampled one, as with max pooling); evaluation
outputs the probability-weighted average ``Σ p_i r_i``. A window with no positive activation gives 0.
Sampling draws from torch's global generator, which the runner seeds.
"""
from __future__ import annotations

import torch
from torch import nn

from models.pooling.basic import check_window, windows


class StochasticPool(nn.Module):
    """Sample ``a_i`` with probability ``∝ max(a_i, 0)`` per window in training; ``Σ p_i a_i`` in evaluation."""

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2) -> None:
        super().__init__()
        check_window(kernel_size, stride)
        self.kernel_size, self.stride = kernel_size, stride or kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = windows(x, self.kernel_size, self.stride).clamp(min=0)  # (N, C, Ho, Wo, k²)
        if not self.training:
            total = r.sum(-1)
            return (r * r).sum(-1) / torch.where(total > 0, total, 1.0)  # 0/0 -> 0 for an all-zero window
        # Inverse-CDF sampling: u ~ U[0, total), pick the first window index whose cumulative sum exceeds u.
        cum = r.detach().cumsum(-1)
        u = torch.rand_like(cum[..., :1]) * cum[..., -1:]
        index = (cum <= u).sum(-1, keepdim=True).clamp(max=r.shape[-1] - 1)
        return r.gather(-1, index).squeeze(-1)  # an all-zero window samples a 0

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"
