"""Distillation losses: ``loss(logits, target, teacher_logits=...)``, batch mean, ``needs_teacher = True``.

- ``KnowledgeDistillation`` (Hinton et al., 2015; RepDistiller's defaults for CIFAR-100):
  ``ce_weight·CE + kd_weight·τ²·KL(softmax(t/τ) ‖ softmax(s/τ))``.
- ``PlackettLuceDistillation`` (Bassam, Zhu and Bian, NeurIPS 2025): the teacher-optimal
  permutation π* = (y, then the other classes by descending teacher logit), weights
  ``α_k = softmax(t/τ)_{π*_k}`` and ``Σ_k α_k (logsumexp_{ℓ≥k} s_{π*_ℓ} − s_{π*_k})``; no separate
  CE term. τ = 1 is the paper's code default and its ImageNet best; its CIFAR-100 table used 4
  (``loss=pld_cifar``). Teacher ties are ordered by class index (a stable sort).
- ``TransformedTeacherMatching`` (Zheng and Yang, ICLR 2024): ``CE + β·KL(softmax(t/T) ‖ softmax(s))``,
  the temperature on the teacher only (the authors' power transform ``p_t^γ`` normalized, γ = 1/T). The YAML
  uses their README's CIFAR-100 example (vgg13 → vgg8: γ = 0.1, β = 45).
- ``WeightedTransformedTeacherMatching`` (same paper, WTTM): the per-sample KL weighted by
  ``Σ_k p_t,k^{1/T}``, the power transform's normalizer, which is larger for a less confident teacher.
- ``NormalizedKnowledgeDistillation`` (Yang et al., ICCV 2023, NKD): ``CE − t_y·log s_y − γ·T²·Σ_{k≠y}
  softmax(t_{≠y}/T)_k·log softmax(s_{≠y}/T)_k``: the teacher's target probability weighs a CE-like target
  term, and the non-target classes are matched as distributions of their own (renormalized without y).
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

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
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

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
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

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        t, s = self._teacher(teacher_logits), wide(logits)
        kl = _kl(F.log_softmax(t / self.temperature, dim=1), F.log_softmax(s, dim=1))
        return F.cross_entropy(s, target) + self.beta * kl


class WeightedTransformedTeacherMatching(TransformedTeacherMatching):
    """``CE + β·mean_n(w_n·KL(softmax(t_n/T) ‖ softmax(s_n)))`` with ``w_n = Σ_k softmax(t_n)_k^{1/T}``; batch mean."""

    def __init__(self, temperature: float = 5.0, beta: float = 4.0) -> None:
        super().__init__(temperature, beta)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        t, s = self._teacher(teacher_logits), wide(logits)
        powered = F.log_softmax(t, dim=1) / self.temperature  # log p_t^{1/T}
        weight = torch.logsumexp(powered, dim=1).exp()  # Σ_k p_t,k^{1/T}: the transform's normalizer
        q = F.log_softmax(powered, dim=1)  # = log softmax(t/T)
        kl = (q.exp() * (q - F.log_softmax(s, dim=1))).sum(1)
        return F.cross_entropy(s, target) + self.beta * (weight * kl).mean()


def without_target(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, K) -> (N, K − 1): each row without its target class's column, the other columns in order."""
    keep = torch.ones_like(x, dtype=torch.bool).scatter(1, target[:, None], False)
    return x[keep].view(x.shape[0], x.shape[1] - 1)


class NormalizedKnowledgeDistillation(_Distillation):
    """``CE − t_y·log s_y − γ·T²·Σ_{k≠y} softmax(t_{≠y}/T)_k·log softmax(s_{≠y}/T)_k``; batch mean (NKD)."""

    def __init__(self, temperature: float = 1.0, gamma: float = 1.5) -> None:
        super().__init__()
        if temperature <= 0 or gamma < 0:
            raise ValueError(f"need temperature > 0 and gamma >= 0, got {temperature}, {gamma}")
        self.temperature, self.gamma = temperature, gamma

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        t, s, tau = self._teacher(teacher_logits), wide(logits), self.temperature
        log_s = F.log_softmax(s, dim=1)
        t_y = F.softmax(t, dim=1).gather(1, target[:, None]).squeeze(1)
        target_term = -(t_y * log_s.gather(1, target[:, None]).squeeze(1)).mean()
        q = F.softmax(without_target(t, target) / tau, dim=1)
        log_p = F.log_softmax(without_target(s, target) / tau, dim=1)
        non_target = -self.gamma * tau**2 * (q * log_p).sum(1).mean()
        return F.cross_entropy(s, target) + target_term + non_target
