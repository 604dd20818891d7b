"""PowerNorm (Shen, Yao, Gholami, Mahoney and Keutzer, "PowerNorm: Rethinking Batch Normalization in
Transformers", ICML 2020), ported from (T, B, C) transformer activations to conv nets.

No mean subtraction. With ψ² the running per-channel quadratic mean,

    forward:  z = x / sqrt(ψ²_{t−1} + ε),   ψ²_t = α_f ψ²_{t−1} + (1 − α_f) mean_{N,H,W}(x²),   y = γ z + β
    backward: g̃ = ∂z − (1 − α_b) Γ_{t−1} z,   Γ_t = Γ_{t−1} + mean_{N,H,W}(g̃ z),   ∂x = g̃ / sqrt(ψ²_{t−1} + ε)

During the first ``warmup_iters`` training steps the batch's own quadratic mean stands in for ψ²_{t−1}
(and ψ² is updated as the authors' code does: the plain average of the batch means so far, then the EMA
step). Before all this, as in the authors' code, each position is divided by the root mean square of its
channels (their ``GroupScaling1D`` with one group; here per pixel).

Differences from the authors' code: the conv-net port averages x² over (N, H, W) rather than over tokens;
the backward divides by the denominator the forward used (the paper's algorithm), where their code always
divides by the batch's quadratic mean, also after warmup; there is no padding mask.
"""
from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Gt, Interval
import torch
from torch import nn

from models.norm.basic import check_batch


class _PowerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, running_phi, ema_gz, step: int, alpha_fwd: float, alpha_bkw: float, eps: float,
                warmup_iters: int):
        xf = x.float()
        phi = xf.pow(2).mean((0, 2, 3))
        scale = ((phi if step <= warmup_iters else running_phi) + eps).sqrt()[:, None, None]
        if step < warmup_iters:
            running_phi.mul_((step - 1) / step).add_(phi / step)
        running_phi.mul_(alpha_fwd).add_((1 - alpha_fwd) * phi)
        z = xf / scale
        ctx.save_for_backward(z, scale)
        ctx.ema_gz, ctx.alpha_bkw = ema_gz, alpha_bkw
        return z.to(x.dtype)

    @staticmethod
    def backward(ctx, dz):
        z, scale = ctx.saved_tensors
        g = dz.float() - (1 - ctx.alpha_bkw) * ctx.ema_gz[:, None, None] * z
        ctx.ema_gz.add_((g * z).mean((0, 2, 3)))
        return (g / scale).to(dz.dtype), None, None, None, None, None, None, None


class PowerNormAct(nn.Module):
    """PowerNorm then ReLU. Defaults are the authors': ``alpha_fwd = alpha_bkw = 0.9``, ``eps=1e-5``,
    ``warmup_iters=10000`` (a short run never leaves warmup, so it trains with batch statistics)."""

    conv_bias = False
    act_layer = nn.ReLU
    batch_dependent = True

    def __init__(self, channels: int, apply_act: bool = True, alpha_fwd: Annotated[float, Interval(gt=0, lt=1)] = 0.9,
                 alpha_bkw: Annotated[float, Interval(gt=0, lt=1)] = 0.9, eps: Annotated[float, Gt(0)] = 1e-5,
                 warmup_iters: Annotated[int, Ge(0)] = 10000, group_scaling: bool = True) -> None:
        super().__init__()
        self.alpha_fwd, self.alpha_bkw, self.eps = alpha_fwd, alpha_bkw, eps
        self.warmup_iters, self.group_scaling = warmup_iters, group_scaling
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_phi", torch.ones(channels))
        self.register_buffer("ema_gz", torch.zeros(channels))
        self.register_buffer("iters", torch.zeros((), dtype=torch.long))
        self.act = nn.ReLU(inplace=True) if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.group_scaling:
            x = x / (x.pow(2).mean(1, keepdim=True) + self.eps).sqrt()
        if self.training:
            check_batch(self, x)
            self.iters += 1
            z = _PowerNorm.apply(x, self.running_phi, self.ema_gz, int(self.iters), self.alpha_fwd, self.alpha_bkw,
                                 self.eps, self.warmup_iters)
        else:
            z = x / (self.running_phi[:, None, None] + self.eps).sqrt()
        return self.act(z * self.weight[:, None, None] + self.bias[:, None, None])
