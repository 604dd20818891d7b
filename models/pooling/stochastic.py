"""Stochastic pooling: Zeiler and Fergus, "Stochastic Pooling for Regularization of Deep
Convolutional Neural Networks" (ICLR 2013).

In each window the activations, made non-negative (``r = max(a, 0)``; the paper assumes post-ReLU
inputs), define probabilities ``p_i = r_i / Σ_j r_j``. Training outputs one activation sampled with
those probabilities (the gradient reaches only the sampled one, as with max pooling); evaluation
outputs the probability-weighted average ``Σ p_i r_i``. A window with no positive activation gives 0.
Sampling draws from torch's global generator, which the runner seeds: one uniform number per window,
``u·Σ r``, and the first tap whose cumulative sum exceeds it.

Speed. Where windows tile the map (k = s, every config's default) training runs two fused kernels
(models/pooling/fused.py), compiled like SoftPool's: the forward one pass over the window taps (the cumulative
sums and the sampled tap), saving one number per window, the sampled tap (−1 where it was clamped, so that it gets
no gradient); the backward one elementwise pass that places each window's gradient at its tap, as max pooling's
does. The uniform numbers are drawn outside the kernel, in the same order as ``reference`` draws them, so the
fused and reference layers sample the same taps from the same seed. Evaluation, overlapping or gapped windows and
``compile=False`` take ``reference`` (unfolded windows through autograd).
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from models.compiled import Kernels
from models.pooling.basic import check_window, windows
from models.pooling.fused import LOW_PRECISION, spread, tap_index, taps


def _forward(x: torch.Tensor, u: torch.Tensor, k: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, tap): the sampled value of each window, u (N, C, Ho, Wo) uniform in [0, 1), and its tap's number, −1
    where the sampled input was not positive (clamped to 0, where clamp passes no gradient)."""
    window = [a.clamp(min=0) for a in taps(x.float() if x.dtype in LOW_PRECISION else x, k, s)]
    total = functools.reduce(torch.add, window)
    target = u * total
    cum, chosen = torch.zeros_like(total), torch.zeros_like(total)  # chosen: the number of taps with cum <= u
    for r in window:
        cum = cum + r
        chosen = chosen + (cum <= target).to(cum.dtype)
    chosen = chosen.clamp(max=k * k - 1)  # an all-zero window: the last tap, a 0
    y, raw = torch.zeros_like(total), torch.zeros_like(total)
    for i, a in enumerate(taps(x, k, s)):
        y, raw = torch.where(chosen == i, window[i], y), torch.where(chosen == i, a.to(total.dtype), raw)
    return y, torch.where(raw > 0, chosen, -1.0)


def _backward(x: torch.Tensor, tap: torch.Tensor, grad: torch.Tensor, k: int, s: int) -> torch.Tensor:
    g = grad.to(tap.dtype)
    return spread(x, g, k, s, lambda a, at, tile: torch.where(tile(tap_index(k, a.device)) == at(tap), at(g), 0.0)
                  ).to(x.dtype)


KERNELS = Kernels("StochasticPool", {"forward": _forward, "backward": _backward})


class _Sample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, u: torch.Tensor, k: int, s: int, use_compile: bool) -> torch.Tensor:
        y, tap = KERNELS.run("forward", use_compile, x.detach(), u, k, s)
        ctx.save_for_backward(x, tap)
        ctx.settings = (k, s, use_compile)
        return y.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, tap = ctx.saved_tensors
        k, s, use_compile = ctx.settings
        return KERNELS.run("backward", use_compile, x.detach(), tap, grad.contiguous(), k, s), None, None, None, None


class StochasticPool(nn.Module):
    """Sample ``a_i`` with probability ``∝ max(a_i, 0)`` per window in training; ``Σ p_i a_i`` in evaluation."""

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2, compile: bool = True) -> None:
        super().__init__()
        check_window(kernel_size, stride)
        self.kernel_size, self.stride, self.compile = kernel_size, stride or kernel_size, compile

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.compile and self.kernel_size == self.stride and KERNELS.error is None:
            return self.sample(x, use_compile=True)
        return self.reference(x)

    def sample(self, x: torch.Tensor, use_compile: bool) -> torch.Tensor:
        """Training's sampling through the fused kernels, compiled or eagerly (any window)."""
        k, s = self.kernel_size, self.stride
        n, c = x.shape[:2]
        u = torch.rand(n, c, *windows(x[:1, :1], k, s).shape[2:4], dtype=x.dtype, device=x.device)  # as reference
        if torch.is_grad_enabled() and x.requires_grad:
            return _Sample.apply(x, u, k, s, use_compile)
        return KERNELS.run("forward", use_compile, x, u, k, s)[0].to(x.dtype)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The definition over unfolded windows, through autograd."""
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
        return f"kernel_size={self.kernel_size}, stride={self.stride}, compile={self.compile}"
