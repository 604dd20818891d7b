"""Fused pooling kernels: a layer's forward and backward written over the k² strided "taps" of its windows (pure
elementwise work on the output grid), which ``torch.compile`` fuses into one loop each, with the same functions
run eagerly where compilation is off or has failed (``models.compiled.Kernels``). SoftPool, power-average, mixed,
gated, tree, stochastic pooling and adaPool use it.

Hand-written because no library ships these windowed reductions fused on the CPU: an ``autograd.Function``
around two compiled functions saves only what its backward reads (the input and a few values per window)
where autograd through ``unfold`` would keep k² copies of every intermediate.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from models.pooling.basic import out_size

LOW_PRECISION = (torch.float16, torch.bfloat16)


def taps(x: torch.Tensor, k: int, s: int) -> list[torch.Tensor]:
    """The k² strided views ``x[..., i::s, j::s]`` cropped to the output grid: tap (i, j) of every window."""
    ho, wo = out_size(x.shape[-2], k, s), out_size(x.shape[-1], k, s)
    return [x[..., i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] for i in range(k) for j in range(k)]


def planes(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """The k² taps as one contiguous (N, k², C, Ho, Wo) tensor, made eagerly by one copy: a compiled forward that
    reads it vectorizes on the CPU, where one reading the strided views of ``taps`` compiles to scalar loops
    (adaPool's forward: 4× slower). Made outside the compiled function, which would fuse the copy back into
    strided loads; the batch first, as ``Kernels`` marks it dynamic."""
    return torch.stack(taps(x, k, s), dim=1)


Place = Callable[[torch.Tensor], torch.Tensor]


def spread(x: torch.Tensor, y: torch.Tensor, k: int, s: int,
           per_tap: Callable[[torch.Tensor, Place, Place], torch.Tensor]) -> torch.Tensor:
    """The input gradient of a windowed function: ``per_tap(a, at, tile)`` gives the gradient of input values
    ``a``, where ``at(t)`` places a per-window tensor (N, C, Ho, Wo) beside them and ``tile(t)`` a per-tap one
    (1, C or 1, k, k), such as a learned k×k mask or ``tap_index(k)``; each input element sums the gradient over
    the windows that hold it."""
    n, c, ho, wo = y.shape
    h, w = x.shape[-2:]
    if k == s:  # windows tile the map: one elementwise pass
        if torch.compiler.is_compiling():
            # over the input's own layout: a nearest upsampling compiles to index arithmetic over contiguous
            # rows, 2-3× faster than the (N, C, Ho, k, Wo, k) view, whose innermost k elements do not vectorize
            gx = per_tap(x[..., :ho * k, :wo * k], lambda t: F.interpolate(t, scale_factor=k, mode="nearest"),
                         lambda t: t.repeat(1, 1, ho, wo))
        else:  # eagerly the view is faster: it broadcasts per-window values instead of materializing them
            a = x[..., :ho * k, :wo * k].reshape(n, c, ho, k, wo, k)
            gx = per_tap(a, lambda t: t.view(n, c, ho, 1, wo, 1),
                         lambda t: t.view(t.shape[0], t.shape[1], 1, k, 1, k)).reshape(n, c, ho * k, wo * k)
        return F.pad(gx, (0, w - wo * k, 0, h - ho * k))  # rows/columns no window covers get no gradient
    gx = torch.zeros_like(x)  # overlapping or gapped windows: accumulate tap by tap
    for i in range(k):
        for j in range(k):
            at = (..., slice(i, i + s * (ho - 1) + 1, s), slice(j, j + s * (wo - 1) + 1, s))
            gx[at] += per_tap(x[at], lambda t: t, lambda t, i=i, j=j: t[..., i:i + 1, j:j + 1])
    return gx


def tap_index(k: int, device: torch.device) -> torch.Tensor:
    """Each tap's number in a window, row-major: (1, 1, k, k), for ``tile``; ``taps`` lists them in that order."""
    return torch.arange(k * k, device=device, dtype=torch.float32).view(1, 1, k, k)


def first_max(window: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each window's maximum and the number of its first tap that holds it (as float32), like ``max_pool2d``'s
    index: the tap its gradient goes to, ties included. NaN propagates as in ``max_pool2d``."""
    m, index = window[0], torch.zeros_like(window[0], dtype=torch.float32)
    for i, a in enumerate(window[1:], 1):
        later = (a > m) | torch.isnan(a)
        m, index = torch.where(later, a, m), torch.where(later, float(i), index)
    return m, index
