"""LogitClip (Wei et al., "Mitigating Memorization of Noisy Labels by Clipping the Model Prediction", ICML 2023):
the logit vector is clipped to an L_p norm of at most τ before the loss sees it,
``clip(s) = τ·s/‖s‖_p`` where ``‖s‖_p > τ``, else ``s``. A wrapper around any loss (``loss.logit_clip=τ``)."""
from __future__ import annotations

import torch
from torch import nn

from runner.losses.ce import wide


def clip_logits(logits: torch.Tensor, tau: float, p: float = 2.0) -> torch.Tensor:
    """Each row of ``logits`` scaled down to norm τ where its L_p norm exceeds τ (rows within τ unchanged)."""
    s = wide(logits)
    norm = torch.linalg.vector_norm(s, ord=p, dim=1, keepdim=True)
    return torch.where(norm > tau, s * (tau / norm.clamp_min(torch.finfo(s.dtype).tiny)), s)


class LogitClip(nn.Module):
    """``loss(clip(logits), target, ...)``: what the wrapped loss declares (``needs_teacher``,
    ``needs_mid_features``) passes through."""

    def __init__(self, loss: nn.Module, tau: float, p: float = 2.0) -> None:
        super().__init__()
        if not tau > 0:
            raise ValueError(f"logit_clip must be > 0, got {tau}")
        self.loss, self.tau, self.p = loss, tau, p
        self.needs_teacher = getattr(loss, "needs_teacher", False)
        self.needs_mid_features = getattr(loss, "needs_mid_features", False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        return self.loss(clip_logits(logits, self.tau, self.p), target, **kwargs)
