"""SoftPool (Stergiou, Poppe and Kalliatakis, "Refining activation downsampling with SoftPool", ICCV 2021).

Each window R of each channel is replaced by its softmax-weighted mean::

    y = Σ_{i∈R} w_i a_i,    w_i = exp(a_i) / Σ_{j∈R} exp(a_j),    ∂y/∂a_i = w_i (1 + a_i − y)

Written by hand because the authors' code does not compute the paper's function (METHODS.md §1):
their CUDA kernel takes exp(a) unshifted, so float32 overflows once an activation passes ~88, and
their CPU fallback sums the exponentials over channels. Here every window is shifted by its own
maximum m, so each exponential lies in (0, 1] and ``y = m + Σ e_i (a_i − m) / Σ e_i`` is exact for
any finite input (a constant window returns itself). float16/bfloat16 inputs are computed in float32.

Speed. The eager form of any stable SoftPool makes several passes over the feature map (max,
subtract, exp, two weighted sums) and on the CPU costs 4–6 × ``max_pool2d`` forward+backward; the
unshifted formula ``avg_pool(x·eˣ)/avg_pool(eˣ)`` is about 5 ×. So the forward and backward here
are two small functions written over the k² strided "taps" of the windows (pure elementwise work on
the output grid) that ``torch.compile`` fuses into one loop each, wrapped in an
``autograd.Function`` that saves only the input, the output and each window's log-sum-exp (no k²
weight tensor): the backward is one fused elementwise pass, ``w_i = exp(a_i − lse)``. Measured by
``make bench`` (README). Compilation costs about 1–2 s per layer shape the first time (Inductor
caches it on disk for later processes); where torch.compile is unavailable or fails, the same
functions run eagerly with a warning, and ``compile=False`` asks for that directly.
"""
from __future__ import annotations

import functools
import logging
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from models.pooling.basic import check_window, out_size, windows

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _taps(x: torch.Tensor, k: int, s: int) -> list[torch.Tensor]:
    """The k² strided views ``x[..., i::s, j::s]`` cropped to the output grid: tap (i, j) of every window."""
    ho, wo = out_size(x.shape[-2], k, s), out_size(x.shape[-1], k, s)
    return [x[..., i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] for i in range(k) for j in range(k)]


def _forward(x: torch.Tensor, k: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, lse), both float32 or wider: the SoftPool output and each window's log Σ exp(a_j)."""
    taps = _taps(x.float() if x.dtype in _LOW_PRECISION else x, k, s)  # k² × (N, C, Ho, Wo)
    m = functools.reduce(torch.maximum, taps)
    num = den = torch.zeros_like(m)
    for a in taps:
        e = torch.exp(a - m)  # in (0, 1]
        num, den = num + e * (a - m), den + e
    return m + num / den, m + torch.log(den)


def _backward(x: torch.Tensor, y: torch.Tensor, lse: torch.Tensor, grad: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """∂L/∂a_i = w_i (1 + a_i − y) ∂L/∂y over every window containing a_i, with w_i = exp(a_i − lse)."""
    n, c, ho, wo = y.shape
    h, w = x.shape[-2:]
    xf = x.float() if x.dtype in _LOW_PRECISION else x
    g = grad.to(y.dtype)
    if k == s:  # windows tile the map: one elementwise pass over (N, C, Ho, k, Wo, k)
        a = xf[..., :ho * k, :wo * k].reshape(n, c, ho, k, wo, k)
        b = lambda t: t.view(n, c, ho, 1, wo, 1)  # noqa: E731 - broadcast a per-window value over its window
        gx = (torch.exp(a - b(lse)) * (1 + a - b(y)) * b(g)).view(n, c, ho * k, wo * k)
        gx = F.pad(gx, (0, w - wo * k, 0, h - ho * k))  # rows/columns no window covers get no gradient
    else:  # overlapping or gapped windows: accumulate tap by tap
        gx = torch.zeros_like(xf)
        for i in range(k):
            for j in range(k):
                at = (..., slice(i, i + s * (ho - 1) + 1, s), slice(j, j + s * (wo - 1) + 1, s))
                a = xf[at]
                gx[at] += torch.exp(a - lse) * (1 + a - y) * g
    return gx.to(x.dtype)


_EAGER = {"forward": _forward, "backward": _backward}
_compile_error: str | None = None


@functools.cache
def _compiled(kind: str):
    # Inductor imports cpp_extension, which warns that no CUDA toolkit is installed: irrelevant to these kernels.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    return torch.compile(_EAGER[kind], dynamic=False)  # created on first use: importing dynamo takes ~1.5 s


def _run(kind: str, use_compile: bool, *args):
    """Run the compiled kernel, or the eager one when compilation is off or has failed once."""
    global _compile_error
    if use_compile and _compile_error is None:
        for t in args:
            if isinstance(t, torch.Tensor) and t.dim() == 4:
                torch._dynamo.maybe_mark_dynamic(t, 0)  # one compile per layer shape, whatever the batch size
        try:
            # Each model has a few pooling shapes (and a sweep in one process several models): allow
            # more than dynamo's default of 8 compiled versions before it silently falls back.
            with torch._dynamo.config.patch(recompile_limit=64, accumulated_recompile_limit=1024):
                return _compiled(kind)(*args)
        except Exception as e:  # no C++ compiler, an unsupported backend: same values, eagerly
            _compile_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warnings.warn(f"SoftPool: torch.compile failed ({_compile_error}); using the eager kernels "
                          "(same values, about 4× slower). Set pooling.compile=false to silence this.", stacklevel=3)
    return _EAGER[kind](*args)


class _SoftPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int, s: int, use_compile: bool) -> torch.Tensor:
        y, lse = _run("forward", use_compile, x.detach(), k, s)  # detached: the same compiled code as in eval
        ctx.save_for_backward(x, y, lse)
        ctx.window, ctx.use_compile = (k, s), use_compile
        return y.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, y, lse = ctx.saved_tensors
        gx = _run("backward", ctx.use_compile, x.detach(), y, lse, grad.contiguous(), *ctx.window)
        return gx, None, None, None


def soft_pool2d(x: torch.Tensor, kernel_size: int = 2, stride: int | None = None, compile: bool = True) -> torch.Tensor:
    """SoftPool over ``kernel_size`` windows every ``stride`` (default ``kernel_size``):
    (N, C, H, W) -> (N, C, Ho, Wo)."""
    s = kernel_size if stride is None else stride
    if torch.is_grad_enabled() and x.requires_grad:
        return _SoftPool2d.apply(x, kernel_size, s, compile)
    return _run("forward", compile, x, kernel_size, s)[0].to(x.dtype)


def soft_pool2d_reference(x: torch.Tensor, kernel_size: int = 2, stride: int | None = None) -> torch.Tensor:
    """The plain definition, for tests: a softmax over each unfolded window, differentiated by autograd."""
    a = windows(x, kernel_size, kernel_size if stride is None else stride)  # (N, C, Ho, Wo, k²)
    return (a.softmax(-1) * a).sum(-1)


class SoftPool(nn.Module):
    """SoftPool: ``y = Σ softmax(a)_i a_i`` over each window, per channel (Stergiou et al., 2021)."""

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2, compile: bool = True) -> None:
        super().__init__()
        check_window(kernel_size, stride)
        self.kernel_size, self.stride, self.compile = kernel_size, stride or kernel_size, compile

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return soft_pool2d(x, self.kernel_size, self.stride, self.compile)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, compile={self.compile}"
