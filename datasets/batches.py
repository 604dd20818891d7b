"""Batches sliced from in-memory uint8 tensors, augmented per batch and normalized on the device.

After airbench: no per-sample Python, no PIL, no worker processes. The data lives on the device
as uint8 (a quarter of float32), each batch is an index slice of a seeded permutation, augmentation
is a few tensor ops on the whole batch, and normalization is one fused multiply-add.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from datasets.specs import AUGMENTS


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop of the zero-padded batch, as torchvision's RandomCrop(size, padding)."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)  # (N, C, H + 2p, W + 2p)
    dy, dx = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]  # (N, C, H, W)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each sample left-right with probability 1/2."""
    flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


class Batches:
    """Iterate ``(x, y)`` batches: x float (N, C, H, W) normalized, y int64 (N,)."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        augment: str = "none",
        generator: torch.Generator | None = None,
        channels_last: bool = False,
    ) -> None:
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        if (shuffle or augment != "none") and generator is None:
            raise ValueError("shuffling and augmentation need an explicit torch.Generator")
        self.x, self.y = x.to(device), y.to(device)
        self.batch_size, self.shuffle, self.drop_last, self.augment = batch_size, shuffle, drop_last, augment
        self.generator = generator
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        # (x / 255 - mean) / std as one multiply-add
        self.scale, self.shift = 1.0 / (255.0 * std_t), -mean_t / std_t

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator).to(self.x.device) if self.shuffle else None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[sl] if order is not None else sl
            xb, yb = self.x[idx], self.y[idx]
            if self.augment == "crop_flip":
                xb = random_flip(random_crop(xb, 4, self.generator), self.generator)
            xb = xb.to(torch.float32).mul_(self.scale).add_(self.shift)
            yield xb.contiguous(memory_format=self.memory_format), yb
