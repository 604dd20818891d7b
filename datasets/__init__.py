"""Dataset registry: decode once into uint8 tensors, cache, split, and batch from memory."""
from datasets.batches import Batches, random_crop, random_flip
from datasets.registry import SPECS, DataError, Spec, Splits, check_available, load

__all__ = ["SPECS", "Batches", "DataError", "Spec", "Splits", "check_available", "load", "random_crop", "random_flip"]
