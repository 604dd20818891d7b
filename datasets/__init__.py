"""Dataset registry: decode once into uint8 tensors, cache, split, and batch from memory.

What a dataset is (``SPECS``) and whether its files are there need no torch (datasets/specs.py); reading and
batching do, and are imported on first use, so that planning a grid imports no torch.
"""
from datasets.specs import SPECS, DataError, Spec, check_available

__all__ = [
    "SPECS",
    "Batches",
    "DataError",
    "Spec",
    "Splits",
    "check_available",
    "load",
    "load_cached",
    "random_crop",
    "random_flip",
]

_LATER = {"Batches": "batches", "random_crop": "batches", "random_flip": "batches", "Splits": "registry",
          "load": "registry", "load_cached": "registry"}


def __getattr__(name: str):
    if name in _LATER:
        import importlib

        return getattr(importlib.import_module(f"datasets.{_LATER[name]}"), name)
    raise AttributeError(f"module 'datasets' has no attribute {name!r}")
