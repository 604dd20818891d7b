"""Optimizers (``factory(params, lr=, weight_decay=)``) and the learning-rate schedule."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def sgd(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, momentum: float = 0.9,
        nesterov: bool = True) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)


def adamw(params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, betas: Sequence[float] = (0.9, 0.999),
          eps: float = 1e-8) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int) -> LRScheduler:
    """Per-step schedule: linear warm-up from lr/100 over ``warmup_steps``, then cosine decay to 0."""
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if warmup_steps <= 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])
