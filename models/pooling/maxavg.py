"""Mixed, gated and tree pooling: Lee, Gallagher and Tu, "Generalizing Pooling Functions in
Convolutional Neural Networks: Mixed, Gated, and Tree" (AISTATS 2016).

For a window x (vectorized, k² values), with f_max = max x and f_avg = mean x:

- mixed:  ``y = a·f_max + (1 − a)·f_avg``, a learned, independent of the input ("unresponsive");
- gated:  ``y = σ(ωᵀx)·f_max + (1 − σ(ωᵀx))·f_avg``, ω a learned k×k gating mask ("responsive");
- tree:   a binary tree whose leaves are learned pooling filters ``v_mᵀx`` and whose internal nodes
  mix their two children with a gate ``σ(ω_nᵀx)``; depth 2 (2 leaves, 1 gate) or 3 (4 leaves, 3 gates).

ωᵀx and v_mᵀx over every window are a convolution of each channel with a k×k filter at the
pooling stride (``conv2d`` in the reference form). The authors' Caffe code shares each mask and filter over
all channels ("one mask per layer") with no bias, as here by default; ``per="channel"`` gives each
channel its own. Caffe's partial border windows (ceil output size) are not reproduced: the output
size is the family's floor rule. Where the paper leaves it open, our choices: a = σ(θ) keeps the
mixing proportion in [0, 1] (θ = 0, a = ½ at the start); gates start at ω = 0 (σ = ½); tree leaves
start at the average filter plus noise (std 0.1/k²), so that the two children of a gate differ and
the gate receives a gradient.

Speed. Where windows tile the map (k = s, every config's default), each layer runs two fused kernels
(models/pooling/fused.py), compiled like SoftPool's: the forward is one pass over the window taps computing max
(with ``max_pool2d``'s first-max index, where its gradient goes), mean and the learned responses together; the
backward one elementwise pass over the input, from what the forward saved per window (mixed, gated) or from the
input read again (tree: its responses are recomputed rather than kept), plus one reduction per tap for the learned
masks and filters. Overlapping or gapped windows, and ``compile=False``, take ``reference``: two pools and a
grouped ``conv2d`` through autograd, which is the definition the tests compare the kernels with, and eagerly the
faster form.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from models.compiled import Kernels
from models.pooling.basic import check_window
from models.pooling.fused import LOW_PRECISION, first_max, spread, tap_index, taps

PER = ("layer", "channel")


def _responses(x: torch.Tensor, filters: torch.Tensor, stride: int) -> torch.Tensor:
    """``fᵀx`` for every window and filter. x (N, C, H, W); filters (G, F, k, k), G = 1 (shared over
    channels) or C (one set per channel) -> (N, C, F, Ho, Wo). The reference's form."""
    n, c = x.shape[:2]
    _, nf, k, _ = filters.shape
    weight = filters.expand(c, nf, k, k).reshape(c * nf, 1, k, k)  # output channel c·F + f: filter f of channel c
    out = F.conv2d(x, weight, stride=stride, groups=c)  # (N, C·F, Ho, Wo)
    return out.view(n, c, nf, *out.shape[-2:])


# ------------------------------------------------------------------ fused kernels, over the window taps

def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in LOW_PRECISION else x


def _tap_response(window: list[torch.Tensor], filt: torch.Tensor) -> torch.Tensor:
    """``Σ_i filt_i a_i`` per window; filt (G, k, k), one k×k filter per channel (G = C) or for all (G = 1)."""
    coef = filt.reshape(1, filt.shape[0], -1, 1, 1)  # (1, G, k², 1, 1): tap i's weight is coef[:, :, i]
    return functools.reduce(torch.add, [coef[:, :, i] * a for i, a in enumerate(window)])


def _per_group(t: torch.Tensor, groups: int) -> torch.Tensor:
    """A per-window gradient summed over batch and grid (N, C, Ho, Wo) -> (C,), and over channels when the
    parameter is shared (G = 1)."""
    t = t.sum((0, 2, 3))
    return t.sum(0, keepdim=True) if groups == 1 else t


def _filter_grad(window: list[torch.Tensor], grad_r: torch.Tensor, groups: int, k: int) -> torch.Tensor:
    """∂L/∂filt for a response ``Σ_i filt_i a_i`` whose per-window gradient is ``grad_r``: (G, k, k)."""
    return torch.stack([_per_group(grad_r * a, groups) for a in window], dim=1).view(groups, k, k)


def _max_avg(window: list[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    m, index = first_max(window)
    return m, index, functools.reduce(torch.add, window) / (k * k)


def _max_avg_grad(k: int, index: torch.Tensor, g_max: torch.Tensor, g_avg: torch.Tensor):
    """The gradient of ``g_max·max + g_avg·mean`` at one tap: ``g_max`` at the first maximum, ``g_avg/k²`` at all."""
    def per_tap(a, at, tile):
        return torch.where(tile(tap_index(k, a.device)) == at(index), at(g_max), 0.0) + at(g_avg / (k * k))
    return per_tap


def _mixed_forward(x, a, k, s):
    """(y, first-max index, max − mean): a·max + (1 − a)·mean, a (1, G, 1, 1)."""
    m, index, avg = _max_avg(taps(_wide(x), k, s), k)
    return a * m + (1 - a) * avg, index, m - avg


def _mixed_backward(x, a, index, diff, grad, k, s):
    g = grad.to(diff.dtype)
    gx = spread(x, g, k, s, _max_avg_grad(k, index, g * a, g * (1 - a)))
    return gx.to(x.dtype), _per_group(g * diff, a.shape[1]).view(a.shape)


def _gated_forward(x, mask, k, s):
    """(y, first-max index, gate, max − mean): σ(ωᵀx)·max + (1 − σ(ωᵀx))·mean, mask ω (G, 1, k, k)."""
    window = taps(_wide(x), k, s)
    m, index, avg = _max_avg(window, k)
    gate = torch.sigmoid(_tap_response(window, mask[:, 0]))
    return gate * m + (1 - gate) * avg, index, gate, m - avg


def _gated_backward(x, mask, index, gate, diff, grad, k, s):
    xw, g = _wide(x), grad.to(diff.dtype)
    g_r = g * gate * (1 - gate) * diff  # through σ(ωᵀx)
    max_avg = _max_avg_grad(k, index, g * gate, g * (1 - gate))
    tiled_mask = mask.view(1, -1, k, k)
    gx = spread(xw, g, k, s, lambda a, at, tile: max_avg(a, at, tile) + at(g_r) * tile(tiled_mask))
    return gx.to(x.dtype), _filter_grad(taps(xw, k, s), g_r, mask.shape[0], k).view(mask.shape)


def _tree(r: list[torch.Tensor], leaves: int):
    """The tree over per-window responses (leaves first, then gates root first): y, each internal level's
    inputs with the number of its first gate, and the gates' σ."""
    level, gates = r[:leaves], [torch.sigmoid(t) for t in r[leaves:]]
    first, levels = len(gates), []  # the gates of each level, deepest first: for 3 levels, gates 1, 2 then 0
    while len(level) > 1:
        first -= len(level) // 2
        levels.append((level, first))
        level = [gates[first + i] * level[2 * i] + (1 - gates[first + i]) * level[2 * i + 1]
                 for i in range(len(level) // 2)]
    return level[0], levels, gates


def _tree_forward(x, filters, leaves, k, s):
    window = taps(_wide(x), k, s)
    return _tree([_tap_response(window, filters[:, f]) for f in range(filters.shape[1])], leaves)[0]


def _tree_backward(x, filters, grad, leaves, k, s):
    """The responses recomputed from the input (cheaper than keeping F per window), then back through the tree:
    a gate σ over children (l, r) passes g·σ to l, g·(1 − σ) to r and g·σ(1 − σ)(l − r) to its response."""
    xw = _wide(x)
    window = taps(xw, k, s)
    nf = filters.shape[1]
    _, levels, gates = _tree([_tap_response(window, filters[:, f]) for f in range(nf)], leaves)
    grad_r: list[torch.Tensor | None] = [None] * nf
    upper = [grad.to(gates[0].dtype)]
    for level, first in reversed(levels):
        lower = []
        for i, g in enumerate(upper):
            gate = gates[first + i]
            lower += [g * gate, g * (1 - gate)]
            grad_r[leaves + first + i] = g * gate * (1 - gate) * (level[2 * i] - level[2 * i + 1])
        upper = lower
    grad_r[:leaves] = upper
    tiled = [filters[:, f].unsqueeze(0) for f in range(nf)]  # (1, G, k, k)
    gx = spread(xw, upper[0], k, s, lambda a, at, tile: functools.reduce(
        torch.add, [at(gr) * tile(t) for gr, t in zip(grad_r, tiled)]))
    g_filters = torch.stack([_filter_grad(window, gr, filters.shape[0], k) for gr in grad_r], dim=1)
    return gx.to(x.dtype), g_filters


KERNELS = Kernels("MixedPool/GatedPool/TreePool", {
    "mixed_forward": _mixed_forward, "mixed_backward": _mixed_backward,
    "gated_forward": _gated_forward, "gated_backward": _gated_backward,
    "tree_forward": _tree_forward, "tree_backward": _tree_backward,
})


class _Fused(torch.autograd.Function):
    """One learned max-average layer through its kernels: ``kind`` names them; the forward kernel returns y and
    what the backward reads besides the input and the parameter."""

    @staticmethod
    def forward(ctx, x, param, kind, settings, use_compile):
        out = KERNELS.run(f"{kind}_forward", use_compile, x.detach(), param.detach(), *settings)
        y, saved = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        ctx.save_for_backward(x, param, *saved)
        ctx.kind, ctx.settings, ctx.use_compile = kind, settings, use_compile
        return y.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, param, *saved = ctx.saved_tensors
        gx, gp = KERNELS.run(f"{ctx.kind}_backward", ctx.use_compile, x.detach(), param.detach(), *saved,
                             grad.contiguous(), *ctx.settings)
        return gx, gp.to(param.dtype), None, None, None


def _run(kind: str, x: torch.Tensor, param: torch.Tensor, settings: tuple, use_compile: bool) -> torch.Tensor:
    if torch.is_grad_enabled() and (x.requires_grad or param.requires_grad):
        return _Fused.apply(x, param, kind, settings, use_compile)
    out = KERNELS.run(f"{kind}_forward", use_compile, x, param, *settings)
    return (out[0] if isinstance(out, tuple) else out).to(x.dtype)


class _LearnedPool(nn.Module):
    def __init__(self, channels: int, kernel_size: int, stride: int | None, per: str, compile: bool) -> None:
        super().__init__()
        check_window(kernel_size, stride)
        if per not in PER:
            raise ValueError(f"per must be one of {', '.join(PER)}, got {per!r}")
        self.kernel_size, self.stride, self.per, self.compile = kernel_size, stride or kernel_size, per, compile
        self.groups = 1 if per == "layer" else channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Fused where windows tile the map (k = s, every config's default); overlapping or gapped windows take the
        # reference, as does compile=False: eagerly it is the faster form, and compiling the tap-by-tap
        # accumulation of an overlapping window's gradient takes minutes for a depth-3 tree.
        if self.compile and self.kernel_size == self.stride and KERNELS.error is None:
            return self.kernels(x, use_compile=True)
        return self.reference(x)

    def kernels(self, x: torch.Tensor, use_compile: bool) -> torch.Tensor:
        """The fused kernels, compiled or run eagerly (any window; the tests compare them with ``reference``)."""
        raise NotImplementedError

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        """The definition: two pools and the learned responses as a grouped ``conv2d``, through autograd."""
        raise NotImplementedError

    def max_avg(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.max_pool2d(x, self.kernel_size, self.stride), F.avg_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, per={self.per}, compile={self.compile}"


class MixedPool(_LearnedPool):
    """Mixed max-average pooling: ``y = a·max + (1 − a)·avg``, ``a = σ(θ)`` learned per layer or per channel."""

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2, per: str = "layer",
                 compile: bool = True) -> None:
        super().__init__(channels, kernel_size, stride, per, compile)
        self.theta = nn.Parameter(torch.zeros(1, self.groups, 1, 1))

    def kernels(self, x: torch.Tensor, use_compile: bool) -> torch.Tensor:
        return _run("mixed", x, torch.sigmoid(self.theta), (self.kernel_size, self.stride), use_compile)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        mx, avg = self.max_avg(x)
        a = torch.sigmoid(self.theta)
        return a * mx + (1 - a) * avg


class GatedPool(_LearnedPool):
    """Gated max-average pooling: ``y = σ(ωᵀx)·max + (1 − σ(ωᵀx))·avg``, a k×k mask ω per layer or per channel."""

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2, per: str = "layer",
                 compile: bool = True) -> None:
        super().__init__(channels, kernel_size, stride, per, compile)
        self.mask = nn.Parameter(torch.zeros(self.groups, 1, kernel_size, kernel_size))

    def kernels(self, x: torch.Tensor, use_compile: bool) -> torch.Tensor:
        return _run("gated", x, self.mask, (self.kernel_size, self.stride), use_compile)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        mx, avg = self.max_avg(x)
        gate = torch.sigmoid(_responses(x, self.mask, self.stride)[:, :, 0])  # (N, C, Ho, Wo)
        return gate * mx + (1 - gate) * avg


class TreePool(_LearnedPool):
    """Tree pooling: leaves ``v_mᵀx`` combined bottom-up by gates ``σ(ω_nᵀx)``, ``depth`` levels (2 or 3).

    Filters are stored leaves first, then gates in breadth-first order (root first); gate n mixes
    ``σ·left + (1 − σ)·right``.
    """

    def __init__(self, channels: int, kernel_size: int = 2, stride: int | None = 2, depth: int = 2,
                 per: str = "layer", compile: bool = True) -> None:
        super().__init__(channels, kernel_size, stride, per, compile)
        if depth not in (2, 3):
            raise ValueError(f"depth must be 2 (2 leaves, 1 gate) or 3 (4 leaves, 3 gates), got {depth}")
        self.depth, self.leaves = depth, 2 ** (depth - 1)
        k2 = kernel_size * kernel_size
        leaves = 1 / k2 + 0.1 / k2 * torch.randn(self.groups, self.leaves, kernel_size, kernel_size)
        gates = torch.zeros(self.groups, self.leaves - 1, kernel_size, kernel_size)
        self.filters = nn.Parameter(torch.cat([leaves, gates], dim=1))  # (G, leaves + gates, k, k)

    def kernels(self, x: torch.Tensor, use_compile: bool) -> torch.Tensor:
        return _run("tree", x, self.filters, (self.leaves, self.kernel_size, self.stride), use_compile)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        r = _responses(x, self.filters, self.stride)  # (N, C, leaves + gates, Ho, Wo)
        return _tree(list(r.unbind(2)), self.leaves)[0]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", depth={self.depth}"
