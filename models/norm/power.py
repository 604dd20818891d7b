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

Speed: written as above, the block makes several passes over the feature map, forward and backward (5 × ``batch``
on the CPU). With ``compile=True`` (the config's default; a run decides as for pooling, runner/build.py) training
runs two functions that ``torch.compile`` fuses, one per direction, over the whole block (group scaling,
PowerNorm, the affine map and the ReLU), the buffers updated beside them; ``compile=False`` runs the block as
written, which the tests compare them with.
"""
from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Gt, Interval
import torch
from torch import nn

from models.compiled import Kernels
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


def _fused_forward(x, running_phi, weight, bias, warm: bool, eps: float, group_scaling: bool, relu: bool):
    """The training block in one pass per reduction: y, and per pixel s (group scaling's RMS), z, and per channel
    the scale and the batch's quadratic mean."""
    xf = x.float()
    s = (xf.pow(2).mean(1, keepdim=True) + eps).sqrt() if group_scaling else None
    xs = xf / s if group_scaling else xf
    phi = xs.pow(2).mean((0, 2, 3))
    scale = ((phi if warm else running_phi) + eps).sqrt()
    z = xs / scale[:, None, None]
    y = z * weight[:, None, None] + bias[:, None, None]
    return (torch.relu(y) if relu else y).to(x.dtype), s, z, scale, phi


def _fused_backward(grad, x, s, z, scale, weight, bias, ema_gz, alpha_bkw: float, group_scaling: bool, relu: bool):
    """∂x, ∂γ, ∂β and mean(g̃ z) (Γ's step): the ReLU's and the affine map's gradients, PowerNorm's approximate
    backward, then group scaling's true gradient, ``∂x = ∂x_s / s − x Σ_C(∂x_s x) / (C s³)``."""
    dy = grad.float()
    if relu:
        dy = torch.where(z * weight[:, None, None] + bias[:, None, None] > 0, dy, 0.0)
    g = dy * weight[:, None, None] - (1 - alpha_bkw) * ema_gz[:, None, None] * z
    dxs = g / scale[:, None, None]
    if group_scaling:
        xf = x.float()
        dxs = dxs / s - xf * (dxs * xf).sum(1, keepdim=True) / (x.shape[1] * s.pow(3))
    return dxs.to(x.dtype), (dy * z).sum((0, 2, 3)), dy.sum((0, 2, 3)), (g * z).mean((0, 2, 3))


KERNELS = Kernels("PowerNormAct", {"forward": _fused_forward, "backward": _fused_backward}, key="norm.compile")


class _FusedPowerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, block: "PowerNormAct", use_compile: bool):
        step, relu = int(block.iters), isinstance(block.act, nn.ReLU)
        y, s, z, scale, phi = KERNELS.run("forward", use_compile, x.detach(), block.running_phi, weight.detach(),
                                          bias.detach(), step <= block.warmup_iters, block.eps, block.group_scaling,
                                          relu)
        if step < block.warmup_iters:  # the buffers as _PowerNorm updates them
            block.running_phi.mul_((step - 1) / step).add_(phi / step)
        block.running_phi.mul_(block.alpha_fwd).add_((1 - block.alpha_fwd) * phi)
        ctx.save_for_backward(x, s, z, scale, weight, bias)
        ctx.block, ctx.use_compile, ctx.relu = block, use_compile, relu
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, s, z, scale, weight, bias = ctx.saved_tensors
        block = ctx.block
        dx, dw, db, gz = KERNELS.run("backward", ctx.use_compile, grad.contiguous(), x.detach(), s, z, scale,
                                     weight.detach(), bias.detach(), block.ema_gz, block.alpha_bkw,
                                     block.group_scaling, ctx.relu)
        block.ema_gz.add_(gz)
        return dx, dw.to(weight.dtype), db.to(bias.dtype), None, None


class PowerNormAct(nn.Module):
    """PowerNorm then ReLU. Defaults are the authors': ``alpha_fwd = alpha_bkw = 0.9``, ``eps=1e-5``,
    ``warmup_iters=10000`` (a short run never leaves warmup, so it trains with batch statistics)."""

    conv_bias = False
    act_layer = nn.ReLU
    batch_dependent = True

    def __init__(self, channels: int, apply_act: bool = True, alpha_fwd: Annotated[float, Interval(gt=0, lt=1)] = 0.9,
                 alpha_bkw: Annotated[float, Interval(gt=0, lt=1)] = 0.9, eps: Annotated[float, Gt(0)] = 1e-5,
                 warmup_iters: Annotated[int, Ge(0)] = 10000, group_scaling: bool = True, compile: bool = True) -> None:
        super().__init__()
        self.compile = compile
        self.alpha_fwd, self.alpha_bkw, self.eps = alpha_fwd, alpha_bkw, eps
        self.warmup_iters, self.group_scaling = warmup_iters, group_scaling
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_phi", torch.ones(channels))
        self.register_buffer("ema_gz", torch.zeros(channels))
        self.register_buffer("iters", torch.zeros((), dtype=torch.long))
        self.act = nn.ReLU(inplace=True) if apply_act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.compile:
            return self.fused(x, use_compile=True)
        return self.reference(x)

    def fused(self, x: torch.Tensor, use_compile: bool) -> torch.Tensor:
        """Training through the two fused functions, compiled or eagerly."""
        check_batch(self, x)
        self.iters += 1
        return _FusedPowerNorm.apply(x, self.weight, self.bias, self, use_compile)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The block as the module docstring writes it (``_PowerNorm`` and autograd)."""
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
