"""Architectures and the layer libraries they are built from. Plain torch: no Hydra, no runner.

Every model is built from three factories (DESIGN.md, "Contracts"):
``pool(C)`` for each local downsampling site, ``global_pool(C)`` for the head (``.out_features``)
and ``norm(C, apply_act=True)`` for each normalization + activation block.
"""
from models.factory import build_model, declared

__all__ = ["build_model", "declared"]
