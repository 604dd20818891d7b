"""Dataset registry: decode once into uint8 tensors, cache, split, and batch from memory."""
from datasets.batches import Batches, random_crop, random_flip
from datasets.registry import SPECS, DataError, Spec, Splits, check_available, load, load_cached

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
