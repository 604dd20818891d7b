"""Optimizers (``factory(params, lr=, weight_decay=)``) and the learning-rate schedule."""
from __future__ import annotations

from typing import Annotated, Iterable, Sequence

from annotated_types import Gt, Interval
import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def sgd(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
        momentum: Annotated[float, Interval(ge=0, lt=1)] = 0.9,
        nesterov: bool = True) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)


def adamw(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
          betas: Annotated[Sequence[float], Interval(ge=0, lt=1)] = (0.9, 0.999),
          eps: Annotated[float, Gt(0)] = 1e-8) -> torch.optim.Optimizer:
    if len(betas) != 2:
        raise ValueError(f"betas must be two numbers (β1, β2), got {list(betas)}")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> LRScheduler:
    """Per-step schedule: linear warm-up from lr/100 over ``warmup_steps``, then cosine decay to 0."""
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if warmup_steps <= 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])
