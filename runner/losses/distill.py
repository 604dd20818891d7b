"""Distillation losses: ``loss(logits, target, teacher_logits=...)``, batch mean, ``needs_teacher = True``.

- ``KnowledgeDistillation`` (Hinton et al., 2015; RepDistiller's defaults for CIFAR-100):
  ``ce_weight·CE + kd_weight·τ²·KL(softmax(t/τ) ‖ softmax(s/τ))``.
- ``PlackettLuceDistillation`` (Bassam, Zhu and Bian, NeurIPS 2025): the teacher-optimal
  permutation π* = (y, then the other classes by descending teacher logit), weights
  ``α_k = softmax(t/τ)_{π*_k}`` and ``Σ_k α_k (logsumexp_{ℓ≥k} s_{π*_ℓ} − s_{π*_k})``; no separate
  CE term. τ = 1 is the paper's code default and its ImageNet best; its CIFAR-100 table used 4
  (``loss=pld_cifar``). Teacher ties are ordered by class index (a stable sort).
- ``TransformedTeacherMatching`` (Zheng and Yang, ICLR 2024): ``CE + β·KL(softmax(t/T) ‖ softmax(s))``,
  the temperature on the teacher only. T = 4 and β = 1 are our defaults, not tuned per pair as in the paper.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runner.losses.ce import wide


def _kl(teacher_log_p: torch.Tensor, student_log_p: torch.Tensor) -> torch.Tensor:
    """``KL(q ‖ p)`` per batch element, averaged (``batchmean``)."""
    return F.kl_div(student_log_p, teacher_log_p, log_target=True, reduction="batchmean")


class _Distillation(nn.Module):
    needs_teacher = True

    @staticmethod
    def _teacher(teacher_logits: torch.Tensor | None) -> torch.Tensor:
        if teacher_logits is None:
            raise ValueError("a distillation loss needs teacher_logits=")
        return wide(teacher_logits.detach())


class KnowledgeDistillation(_Distillation):
    """``ce_weight·CE + kd_weight·τ²·KL(softmax(t/τ) ‖ softmax(s/τ))``; batch mean."""

    def __init__(self, temperature: float = 4.0, ce_weight: float = 0.1, kd_weight: float = 0.9) -> None:
        super().__init__()
        if temperature <= 0 or ce_weight < 0 or kd_weight < 0:
            raise ValueError(f"need temperature > 0 and weights >= 0, got {temperature}, {ce_weight}, {kd_weight}")
        self.temperature, self.ce_weight, self.kd_weight = temperature, ce_weight, kd_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        t, s, tau = self._teacher(teacher_logits), wide(logits), self.temperature
        kd = _kl(F.log_softmax(t / tau, dim=1), F.log_softmax(s / tau, dim=1)) * tau**2
        return self.ce_weight * F.cross_entropy(s, target) + self.kd_weight * kd


def pl_permutation(teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """π*: the true class first, then the others by descending teacher logit (stable: ties by class index)."""
    ranked = teacher_logits.scatter(1, target[:, None], float("inf"))
    return torch.sort(ranked, dim=1, descending=True, stable=True).indices


class PlackettLuceDistillation(_Distillation):
    """``Σ_k softmax(t/τ)_{π*_k}·(logsumexp_{ℓ≥k} s_{π*_ℓ} − s_{π*_k})``, π* teacher-optimal; batch mean."""

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        t, s = self._teacher(teacher_logits), wide(logits)
        perm = pl_permutation(t, target)  # (N, K)
        s_perm = s.gather(1, perm)
        weights = F.softmax(t / self.temperature, dim=1).gather(1, perm)
        suffix = torch.logcumsumexp(s_perm.flip(1), dim=1).flip(1)  # logsumexp over positions k..K
        return (weights * (suffix - s_perm)).sum(1).mean()


class TransformedTeacherMatching(_Distillation):
    """``CE + β·KL(softmax(t/T) ‖ softmax(s))``: temperature on the teacher only; batch mean."""

    def __init__(self, temperature: float = 4.0, beta: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0 or beta < 0:
            raise ValueError(f"need temperature > 0 and beta >= 0, got {temperature}, {beta}")
        self.temperature, self.beta = temperature, beta

    def forward(self, logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        t, s = self._teacher(teacher_logits), wide(logits)
        kl = _kl(F.log_softmax(t / self.temperature, dim=1), F.log_softmax(s, dim=1))
        return F.cross_entropy(s, target) + self.beta * kl
