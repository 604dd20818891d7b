"""A layer's functions compiled by ``torch.compile`` on first use, with the same functions run eagerly where
compilation is off or has failed: the fused pooling kernels (models/pooling/fused.py) and the EvoNorm blocks."""
from __future__ import annotations

import functools
import logging
import warnings
from typing import Callable

import torch


class Kernels:
    """A layer's functions by name, compiled on first use (``dynamic=False``; the batch size marked dynamic, so one
    compilation per layer shape), or run eagerly when ``use_compile`` is off or compilation failed once."""

    def __init__(self, layer: str, eager: dict[str, Callable], key: str = "pooling.compile") -> None:
        self.layer, self.eager, self.key = layer, eager, key
        self.error: str | None = None

    @functools.cache
    def compiled(self, kind: str) -> Callable:
        # Inductor imports cpp_extension, which warns that no CUDA toolkit is installed: irrelevant to these kernels.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        return torch.compile(self.eager[kind], dynamic=False)  # created on first use: importing dynamo takes ~1.5 s

    def run(self, kind: str, use_compile: bool, *args):
        if use_compile and self.error is None:
            for t in args:
                if isinstance(t, torch.Tensor) and t.dim() >= 4:  # maps (N, C, H, W), taps (N, k², C, Ho, Wo)
                    torch._dynamo.maybe_mark_dynamic(t, 0)  # one compile per layer shape, whatever the batch size
            try:
                # Each model has a few pooling shapes (and a sweep in one process several models): allow
                # more than dynamo's default of 8 compiled versions before it silently falls back.
                with torch._dynamo.config.patch(recompile_limit=64, accumulated_recompile_limit=1024):
                    return self.compiled(kind)(*args)
            except Exception as e:  # no C++ compiler, an unsupported backend: same values, eagerly
                self.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                warnings.warn(f"{self.layer}: torch.compile failed ({self.error}); running eagerly "
                              f"(same values, several times slower). Set {self.key}=false to silence this.",
                              stacklevel=3)
        return self.eager[kind](*args)
