"""OOD scores from penultimate features (models/features.py), fitted on the training split; higher = more
in-distribution, like the logit scores of runner/metrics.py.

- Mahalanobis (Lee et al., NeurIPS 2018), as commonly benchmarked (one layer, no input perturbation):
  class means and one covariance shared by the classes, fitted on the training features;
  ``score = −min_c (f − μ_c)ᵀ Σ⁻¹ (f − μ_c)``. scikit-learn's ``EmpiricalCovariance`` fits Σ (its precision
  is a pseudo-inverse, so a rank-deficient Σ of a small training set still gives a score).
- ViM (Wang et al., CVPR 2022, "virtual-logit matching"): features centred at ``u = −W⁺b`` (the classifier's
  origin); the principal space is spanned by the top ``D`` eigenvectors of the centred training features'
  covariance (the authors' choice: D = 1000 for ≥ 2048-dim features, 512 for ≥ 768, else half the dimension);
  the residual ``‖x P⊥‖`` is scaled by ``α = mean(max logit) / mean(residual)`` over the training set, and
  ``score = logsumexp(logits) − α·‖x P⊥‖``.
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.covariance import EmpiricalCovariance

FEATURE_SCORES = ("mahalanobis", "vim")


def mahalanobis(train: np.ndarray, train_y: np.ndarray, feats: np.ndarray) -> np.ndarray:
    classes = np.unique(train_y)
    means = np.stack([train[train_y == c].mean(0) for c in classes])
    centred = train - means[np.searchsorted(classes, train_y)]
    precision = EmpiricalCovariance(assume_centered=True).fit(centred).precision_
    diff = feats[:, None, :] - means[None, :, :]  # (N, C, D)
    dist = np.einsum("ncd,de,nce->nc", diff, precision, diff)
    return -dist.min(1)


def vim_dim(features: int) -> int:
    return 1000 if features >= 2048 else 512 if features >= 768 else features // 2


def vim(train: np.ndarray, train_logits: np.ndarray, weight: np.ndarray, bias: np.ndarray, feats: np.ndarray,
        logits: np.ndarray) -> np.ndarray:
    u = -np.linalg.pinv(weight) @ bias
    cov = EmpiricalCovariance(assume_centered=True).fit(train - u).covariance_
    values, vectors = np.linalg.eigh(cov)
    null = vectors[:, np.argsort(values)[::-1][vim_dim(train.shape[1]):]]  # the complement of the principal space
    alpha = train_logits.max(1).mean() / np.linalg.norm((train - u) @ null, axis=1).mean()
    return logsumexp(logits, axis=1) - alpha * np.linalg.norm((feats - u) @ null, axis=1)


def feature_scores(train: np.ndarray, train_y: np.ndarray, train_logits: np.ndarray, weight: np.ndarray,
                   bias: np.ndarray, feats: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
    """Every feature-based score of ``feats`` (with their ``logits``), fitted on the training split."""
    return {
        "mahalanobis": mahalanobis(train, train_y, feats),
        "vim": vim(train, train_logits, weight, bias, feats, logits),
    }
