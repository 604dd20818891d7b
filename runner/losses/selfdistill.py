"""Self-distillation without a teacher: ``loss(logits, target, mid_features=...)``, batch mean,
``needs_mid_features = True``. The loss owns a weak classifier whose parameters train with the model's.

USKD (Yang et al., ICCV 2023, "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach
with Normalized Loss and Customized Soft Labels"; authors' code yzd-v/cls_KD, ``dis_losses/uskd.py`` and
``classifiers/distiller.py``), with s the final head's softmax and v the weak head's::

    CE + α·L_target + β·L_non-target + L_weak

- ``L_target = −mean_n p̃_n·log s_n,y``, the soft target ``p̃_n = s_n,y² + 1 − mean_m s_m,y²`` (no gradient):
  the student's own squared target probability, shifted so that its batch mean is 1.
- ``L_weak = −μ·mean_n Σ_k q_k·log v_n,k``: the weak logits ``W·GAP(f_n) + b`` of the penultimate stage's feature
  map f (global average pooled, as the authors' neck), against labels smoothed by 0.1 (``q = 0.9·onehot + 0.1/K``).
- ``L_non-target = −mean_n Σ_{k≠y} z_n,k·log softmax(logits_n,≠y)_k``: Zipf soft labels. The classes (the target
  too) are ranked by a score r; the class at rank j (1-based) gets 1/j; the non-target entries are renormalized.
  - ``rank_by="code"`` (default, the authors' code): ``r_k = v_k/(1 − v_y) + log s_k/(1 − log s_y)``. Their
    code reuses the name of the final softmax for its log-softmax before this line, so the final head enters
    as log-probabilities, on a wider scale than the weak head's term.
  - ``rank_by="probs"``: ``r_k = v_k/(1 − v_y) + s_k/(1 − s_y)``, both heads' probabilities normalized over the
    non-target classes, which the code's names suggest was meant.
  Both denominators carry the code's +1e-6. Rank ties keep class order (a stable sort).
- CE is the student head's own loss, which the authors' distiller adds to the USKD term.
"""
from __future__ import annotations

from typing import Annotated, Literal, get_args

import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import nn

from runner.losses.ce import wide
from runner.losses.distill import without_target

RankBy = Literal["code", "probs"]


class UniversalSelfDistillation(nn.Module):
    """``CE + α·L_target + β·L_non-target + L_weak`` (USKD); batch mean. ``channels``: the penultimate stage's
    output channels, ``num_classes``: K (the runner passes both, from the model and the dataset)."""

    needs_teacher = False
    needs_mid_features = True

    def __init__(self, channels: int, num_classes: int, alpha: Annotated[float, Ge(0)] = 0.1,
                 beta: Annotated[float, Ge(0)] = 0.1, mu: Annotated[float, Ge(0)] = 0.1,
                 rank_by: RankBy = "code") -> None:
        super().__init__()
        if min(alpha, beta, mu) < 0:
            raise ValueError(f"need alpha, beta, mu >= 0, got {alpha}, {beta}, {mu}")
        if rank_by not in get_args(RankBy):
            raise ValueError(f"rank_by must be one of {', '.join(get_args(RankBy))}, got {rank_by!r}")
        if channels < 1 or num_classes < 2:
            raise ValueError(f"need channels >= 1 and num_classes >= 2, got {channels}, {num_classes}")
        self.alpha, self.beta, self.mu, self.rank_by = alpha, beta, mu, rank_by
        self.weak = nn.Linear(channels, num_classes)
        self.register_buffer(
            "zipf", 1.0 / torch.arange(1, num_classes + 1), persistent=False
        )  # float32: MPS has no float64

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, mid_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        if mid_features is None:
            raise ValueError("USKD needs mid_features= (the penultimate stage's feature map)")
        s = wide(logits)
        pooled = mid_features.mean((2, 3)) if mid_features.dim() == 4 else mid_features
        weak = wide(self.weak(pooled.to(self.weak.weight.dtype)))
        k = s.shape[1]
        y = target[:, None]

        log_s = F.log_softmax(s, dim=1)
        log_s_y = log_s.gather(1, y).squeeze(1)
        with torch.no_grad():
            sq = log_s_y.exp() ** 2
            soft_target = sq + 1 - sq.mean()
        target_term = -(soft_target * log_s_y).mean()

        smoothed = torch.full_like(s, 0.1 / k).scatter_add_(1, y, torch.full_like(log_s_y[:, None], 0.9))
        log_v = F.log_softmax(weak, dim=1)
        weak_term = -self.mu * (smoothed * log_v).sum(1).mean()

        with torch.no_grad():
            v = log_v.exp()
            final = log_s if self.rank_by == "code" else log_s.exp()
            score = v / (1 - v.gather(1, y) + 1e-6) + final / (1 - final.gather(1, y) + 1e-6)
            order = torch.sort(score, dim=1, descending=True, stable=True).indices
            zipf = torch.zeros_like(s).scatter_(1, order, self.zipf.to(s.dtype).expand_as(s))
            z = without_target(zipf, target)
            z = z / z.sum(1, keepdim=True)
        non_target_term = -(z * F.log_softmax(without_target(s, target), dim=1)).sum(1).mean()
        return F.cross_entropy(s, target) + self.alpha * target_term + self.beta * non_target_term + weak_term

