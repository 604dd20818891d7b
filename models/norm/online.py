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
per-channel statistics vectorized and the recurrences along the batch solved without a loop over the samples
(``_scan``). Their numpy reference
class returns, in training, the input normalized with the statistics *after* the batch (its forward function
computes the per-sample output, then the class discards it); we return the per-sample output of the paper.

Speed: written as above, the block makes several passes over the feature map (5–6 × ``batch`` on the CPU). With
``compile=True`` (the config's default; a run decides as for pooling, runner/build.py) training runs four functions
that ``torch.compile`` fuses, two per direction, over the whole block (normalization, affine map, error compensation,
ReLU), recomputing y from the input rather than keeping it; only the per-sample statistics (N × C numbers) and the
recurrences over them stay in plain torch between them (a loop over the samples, compiled, unrolled into the graph:
55 s to compile). ``compile=False`` runs the block as written, which the tests compare them with.
"""
from __future__ import annotations

import functools
from typing import Annotated

from annotated_types import Gt, Interval
import torch
from torch import nn

from models.compiled import Kernels

ECM = ("ls", "ac", "none")


def _scan(a: torch.Tensor | float, b: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``h_t = a_t h_{t−1} + b_t`` along dim 0 from ``h``: returns every ``h_{t−1}`` (N, C) and the last ``h_t``.

    By hand, as a linear recurrence has no torch primitive, without a Python loop over the N steps (64 small
    operations per scan cost more than the block's own compute at the late layers' small maps): with one
    coefficient, ``h_t = Σ_{j<=t} a^(t−j) b_j + a^(t+1) h``, one product with a cached (N, N) matrix of powers;
    with one per step, a parallel prefix scan (Hillis and Steele, 1986) over the steps' affine maps
    ``h ↦ A h + B``, which compose as ``(A₂, B₂)∘(A₁, B₁) = (A₂A₁, A₂B₁ + B₂)``, in ⌈log₂ N⌉ rounds of whole-tensor
    operations; no division, so a zero or negative coefficient is exact.
    """
    if not torch.is_tensor(a):  # one coefficient (the forward's α_f, the backward's α_b): one product
        powers = _powers(float(a), b.shape[0], b.dtype, b.device)  # [t, j] = a^(t−j), j <= t
        ends = powers @ b + powers[:, :1] * a * h  # h_t = Σ_{j<=t} a^(t−j) b_j + a^(t+1) h
        return torch.cat([h[None], ends[:-1]]), ends[-1]
    coef, n, d = a, b.shape[0], 1
    while d < n:  # after this round, (coef_t, b_t) maps h_{t−2d} (or the start) to h_t
        b = torch.cat([b[:d], torch.addcmul(b[d:], coef[d:], b[:-d])])
        coef = torch.cat([coef[:d], coef[d:] * coef[:-d]])
        d *= 2
    ends = torch.addcmul(b, coef, h)
    return torch.cat([h[None], ends[:-1]]), ends[-1]


@functools.lru_cache(maxsize=16)
def _powers(a: float, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n, n): [t, j] = a^(t−j) for j <= t, else 0: the weights of a scan with one coefficient."""
    lag = torch.arange(n, dtype=dtype, device=device)[:, None] - torch.arange(n, dtype=dtype, device=device)
    return torch.where(lag >= 0, torch.tensor(a, dtype=dtype, device=device) ** lag.clamp(min=0), 0)


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


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel mean and variance over H, W: (N, C) each."""
    xf = x.float()
    return xf.mean((2, 3)), xf.var((2, 3), unbiased=False)


def _block_out(x, mean, scale, weight, bias, ecm: str, eps: float, relu: bool, r=None):
    """y = (x − μ)/σ per sample and channel, then γ y + β, the error compensation and the ReLU: (y, o, out, r),
    o the output before the ReLU and r layer scaling's per-sample root mean square (``r`` given: reused)."""
    y = (x.float() - mean[:, :, None, None]) / scale[:, :, None, None]
    o = y * weight[:, None, None] + bias[:, None, None]
    if ecm == "ls":
        r = (o.pow(2).mean((1, 2, 3), keepdim=True) + eps).sqrt() if r is None else r
        o = o / r
    elif ecm == "ac":
        o = o.clamp(-5.0, 5.0)
    return y, o, (torch.relu(o) if relu else o), r


def _fused_forward(x, mean, scale, weight, bias, ecm: str, eps: float, relu: bool):
    _, _, out, r = _block_out(x, mean, scale, weight, bias, ecm, eps, relu)
    return out.to(x.dtype), r


def _grad_y(grad, x, mean, scale, weight, bias, r, ecm: str, eps: float, relu: bool, k=None):
    """∂L/∂y back through the ReLU, the error compensation and the affine map (true gradients), with y, ∂L/∂o
    before layer scaling and k = mean_{C,H,W}(∂o·o) per sample (``k`` given: reused)."""
    y, o, _, _ = _block_out(x, mean, scale, weight, bias, ecm, eps, relu, r)
    d = grad.float()
    if relu:
        d = torch.where(o > 0, d, 0.0)
    if ecm == "ls":  # o = a / r, r = sqrt(mean(a²) + ε): ∂a = (∂o − o mean(∂o o)) / r
        k = (d * o).mean((1, 2, 3), keepdim=True) if k is None else k
        d = (d - o * k) / r
    elif ecm == "ac":
        d = torch.where((o > -5.0) & (o < 5.0), d, 0.0)
    return y, d, d * weight[:, None, None], k


def _fused_backward_stats(grad, x, mean, scale, weight, bias, r, ecm: str, eps: float, relu: bool):
    """∂γ, ∂β, k, and per sample and channel mean(∂y y), mean(y²), mean(∂y), mean(y): what the recurrences read."""
    y, d_affine, dy, k = _grad_y(grad, x, mean, scale, weight, bias, r, ecm, eps, relu)
    dims = (2, 3)
    return ((d_affine * y).sum((0, 2, 3)), d_affine.sum((0, 2, 3)), k, (dy * y).mean(dims), (y * y).mean(dims),
            dy.mean(dims), y.mean(dims))


def _fused_backward_input(grad, x, mean, scale, weight, bias, r, k, v_before, u_before, alpha_bkw: float, ecm: str,
                          eps: float, relu: bool):
    """∂x = (∂y − (1 − α_b) v_{t−1} y) / σ − (1 − α_b) u_{t−1}, ∂y recomputed from the output's gradient."""
    y, _, dy, _ = _grad_y(grad, x, mean, scale, weight, bias, r, ecm, eps, relu, k)
    c = 1 - alpha_bkw
    dx = (dy - c * v_before[:, :, None, None] * y) / scale[:, :, None, None] - c * u_before[:, :, None, None]
    return dx.to(x.dtype)


KERNELS = Kernels("OnlineNormAct", {"moments": _moments, "forward": _fused_forward,
                                    "backward_stats": _fused_backward_stats, "backward_input": _fused_backward_input},
                  key="norm.compile")


class _FusedOnlineNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, block: "OnlineNormAct", use_compile: bool):
        af = block.alpha_fwd
        m, s = (t.double() for t in KERNELS.run("moments", use_compile, x.detach()))
        mean_before, mean_after = _scan(af, (1 - af) * m, block.running_mean.double())
        spread = (1 - af) * s + af * (1 - af) * (m - mean_before) ** 2
        var_before, var_after = _scan(af, spread, block.running_var.double())
        block.running_mean.copy_(mean_after)
        block.running_var.copy_(var_after)
        mean, scale = mean_before.float(), (var_before + block.eps).sqrt().float()
        settings = (block.ecm, block.eps, isinstance(block.act, nn.ReLU))
        out, r = KERNELS.run("forward", use_compile, x.detach(), mean, scale, weight.detach(), bias.detach(), *settings)
        ctx.save_for_backward(x, mean, scale, weight, bias, r)
        ctx.block, ctx.use_compile, ctx.settings = block, use_compile, settings
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, mean, scale, weight, bias, r = ctx.saved_tensors
        block, use_compile, settings = ctx.block, ctx.use_compile, ctx.settings
        parts = (grad.contiguous(), x.detach(), mean, scale, weight.detach(), bias.detach(), r)
        d_weight, d_bias, k, dy_y, y_y, dy_mean, y_mean = KERNELS.run("backward_stats", use_compile, *parts, *settings)
        c = 1 - block.alpha_bkw
        v_before, v_after = _scan(1 - c * y_y.double(), dy_y.double(), block.v.double())
        g_mean = (dy_mean.double() - c * v_before * y_mean.double()) / scale.double()  # mean of g, per sample
        u_before, u_after = _scan(block.alpha_bkw, g_mean, block.u.double())
        block.u.copy_(u_after)
        block.v.copy_(v_after)
        dx = KERNELS.run("backward_input", use_compile, *parts, k, v_before.float(), u_before.float(), block.alpha_bkw,
                         *settings)
        return dx, d_weight.to(weight.dtype), d_bias.to(bias.dtype), None, None


class OnlineNormAct(nn.Module):
    """Online Normalization, affine, error compensation (``ecm``), then ReLU. Defaults are the paper's:
    ``alpha_fwd=0.999``, ``alpha_bkw=0.99``, ``eps=1e-5``, layer scaling."""

    conv_bias = False
    act_layer = nn.ReLU

    def __init__(self, channels: int, apply_act: bool = True, alpha_fwd: Annotated[float, Interval(gt=0, lt=1)] = 0.999,
                 alpha_bkw: Annotated[float, Interval(gt=0, lt=1)] = 0.99, eps: Annotated[float, Gt(0)] = 1e-5,
                 ecm: str = "ls", compile: bool = True) -> None:
        super().__init__()
        self.compile = compile
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
        if self.training and self.compile:
            return self.fused(x, use_compile=True)
        return self.reference(x)

    def fused(self, x: torch.Tensor, use_compile: bool) -> torch.Tensor:
        """Training through the fused functions, compiled or eagerly."""
        return _FusedOnlineNorm.apply(x, self.weight, self.bias, self, use_compile)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The block as the module docstring writes it (``_OnlineNorm`` and autograd)."""
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
