"""Losses: ``loss(logits, target)`` -> scalar batch mean (DESIGN.md, "Contracts"); distillation
losses also take ``teacher_logits=`` and declare ``needs_teacher = True``; self-distillation losses take
``mid_features=`` (the penultimate stage's feature map) and declare ``needs_mid_features = True``."""
from runner.losses.ce import CrossEntropy
from runner.losses.dice import DiceMetricLoss, SelfAdjustingDiceLoss
from runner.losses.distill import (KnowledgeDistillation, NormalizedKnowledgeDistillation, PlackettLuceDistillation,
                                   TransformedTeacherMatching, WeightedTransformedTeacherMatching)
from runner.losses.focal import AdaptiveFocalLoss, DualFocalLoss, FocalLoss
from runner.losses.selfdistill import UniversalSelfDistillation
from runner.losses.sparsemax import SparsemaxLoss
from runner.losses.zloss import CrossEntropyZReg, ZLoss

__all__ = [
    "AdaptiveFocalLoss",
    "CrossEntropy",
    "CrossEntropyZReg",
    "DiceMetricLoss",
    "DualFocalLoss",
    "FocalLoss",
    "KnowledgeDistillation",
    "NormalizedKnowledgeDistillation",
    "PlackettLuceDistillation",
    "SelfAdjustingDiceLoss",
    "SparsemaxLoss",
    "TransformedTeacherMatching",
    "UniversalSelfDistillation",
    "WeightedTransformedTeacherMatching",
    "ZLoss",
]
