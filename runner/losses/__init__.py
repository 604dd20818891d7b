"""Losses: ``loss(logits, target)`` -> scalar batch mean (DESIGN.md, "Contracts")."""
from runner.losses.ce import CrossEntropy

__all__ = ["CrossEntropy"]
