"""Online Normalization (Chiley et al., "Online Normalization for Training Neural Networks", NeurIPS 2019).

In training, the samples of a batch are normalized one after another, each with running per-channel
statistics from *before* it (so a batch of one works), and the backward pass is the paper's control process,
not the gradient of the forward:

    forward, sample t (mean m_t and variance s_t over H, W):
        y_t  = (x_t − μ_{t−1}) / sqrt(σ²_{t−1} + ε)
        σ²_t = α_f σ²_{t−1} + (1 − α_f) s_t + α_f (1 − α_f) (m_t − μ_{t−1})²
        μ_t  = α_f μ_{t−1} + (1 − α_f) m_t
    backward, sample t (running u, v from 0; means over H, W):
        g_t  = ∂y_t − (1 − α_b) v_{t−1} y_t,          v_t = v_{t−1} + mean(g_t y_t)
        ∂x_t = g_t / sqrt(σ²_{t−1} + ε) − (1 − α_b) u_{t−1},   u_t = u_{t−1} + mean(∂x_t)

The streams μ, σ², u, v carry over from batch to batch (buffers). Eval uses μ, σ² as BatchNorm uses its
running statistics. After the normalization come the affine γ, β and an error-compensation step: layer
scaling (``ecm="ls"``, the paper's experiments: ``y / sqrt(mean_{C,H,W}(y²) + ε)`` per sample), an activation
clamp (``"ac"``, ±5, the authors' later default) or none.

Differences from the authors' code: their PyTorch package is a C++/CUDA extension; this is plain torch, the
per-channel statistics vectorized and only the recurrences along the batch looped. Their numpy reference
class returns, in training, the input normalized with the statistics *after* the batch (its forward function
computes the per-sample output, then the class discards it); we return the per-sample output of the paper.
"""
from __future__ import annotations

from typing import Annotated

from annotated_types import Gt, Interval
import torch
from torch import nn

ECM = ("ls", "ac", "none")


def _scan(a: torch.Tensor | float, b: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``h_t = a_t h_{t−1} + b_t`` along dim 0 from ``h``: returns every ``h_{t−1}`` (N, C) and the last ``h_t``.

    A loop on (C,) vectors, by hand: a linear recurrence with per-step coefficients has no torch primitive,
    and the closed form needs an (N, N, C) product table.
    """
    coef = a if torch.is_tensor(a) else torch.full_like(b, a)
    before = torch.empty_like(b)
    for t in range(b.shape[0]):
        before[t] = h
        h = coef[t] * h + b[t]
    return before, h


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32)[:, :, None, None]


class _OnlineNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mean, var, u, v, alpha_fwd: float, alpha_bkw: float, eps: float):
        xf = x.float()
        m = xf.mean((2, 3)).double()
        s = xf.var((2, 3), unbiased=False).double()
        mean_before, mean_after = _scan(alpha_fwd, (1 - alpha_fwd) * m, mean.double())
        spread = (1 - alpha_fwd) * s + alpha_fwd * (1 - alpha_fwd) * (m - mean_before) ** 2
        var_before, var_after = _scan(alpha_fwd, spread, var.double())
        mean.copy_(mean_after)
        var.copy_(var_after)
        scale = (var_before + eps).sqrt()
        y = (xf - _per_sample(mean_before)) / _per_sample(scale)
        ctx.save_for_backward(y, scale)
        ctx.streams, ctx.alpha_bkw = (u, v), alpha_bkw
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        y, scale = ctx.saved_tensors
        (u, v), ab = ctx.streams, ctx.alpha_bkw
        dyf = dy.float()
        v_before, v_after = _scan(1 - (1 - ab) * (y * y).mean((2, 3)).double(), (dyf * y).mean((2, 3)).double(),
                                  v.double())
        g = (dyf - (1 - ab) * _per_sample(v_before) * y) / _per_sample(scale)
        u_before, u_after = _scan(ab, g.mean((2, 3)).double(), u.double())
        dx = g - (1 - ab) * _per_sample(u_before)
        u.copy_(u_after)
        v.copy_(v_after)
        return dx.to(dy.dtype), None, None, None, None, None, None, None


class OnlineNormAct(nn.Module):
    """Online Normalization, affine, error compensation (``ecm``), then ReLU. Defaults are the paper's:
    ``alpha_fwd=0.999``, ``alpha_bkw=0.99``, ``eps=1e-5``, layer scaling."""

    conv_bias = False
    act_layer = nn.ReLU

    def __init__(self, channels: int, apply_act: bool = True, alpha_fwd: Annotated[float, Interval(gt=0, lt=1)] = 0.999,
                 alpha_bkw: Annotated[float, Interval(gt=0, lt=1)] = 0.99, eps: Annotated[float, Gt(0)] = 1e-5,
                 ecm: str = "ls") -> None:
        super().__init__()
        if ecm not in ECM:
            raise ValueError(f"norm.ecm={ecm!r}: allowed: {', '.join(ECM)}")
        self.alpha_fwd, self.alpha_bkw, self.eps, self.ecm = alpha_fwd, alpha_bkw, eps, ecm
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("u", torch.zeros(channels))
        self.register_buffer("v", torch.zeros(channels))
        self.act = nn.ReLU(inplace=True) if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            y = _OnlineNorm.apply(x, self.running_mean, self.running_var, self.u, self.v,
                                  self.alpha_fwd, self.alpha_bkw, self.eps)
        else:
            y = (x - self.running_mean[:, None, None]) / (self.running_var[:, None, None] + self.eps).sqrt()
        y = y * self.weight[:, None, None] + self.bias[:, None, None]
        if self.ecm == "ls":
            y = y / (y.pow(2).mean((1, 2, 3), keepdim=True) + self.eps).sqrt()
        elif self.ecm == "ac":
            y = y.clamp(-5.0, 5.0)
        return self.act(y)
