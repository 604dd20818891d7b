"""Feature-based OOD scores by hand, and the feature hooks of every model option (the classifier's input, the
penultimate stage)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.features import captured, classifier, penultimate_stage, tapped
from runner.compose import CONF_DIR
from runner.ood_features import mahalanobis, vim, vim_dim


def test_mahalanobis_by_hand():
    # class 0 around (0, 0), class 1 around (4, 0), each the 4 points at distance 1 on the axes: the shared
    # covariance is ½·I (the mean of x xᵀ over the class-centred points), its inverse 2·I
    square = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], dtype=float)
    train = np.r_[square, square + [4, 0]]
    y = np.r_[np.zeros(4), np.ones(4)]
    # at (1, 1): 2·(1² + 1²) = 4 to class 0, 2·(3² + 1²) = 20 to class 1
    assert mahalanobis(train, y, np.array([[1.0, 1.0], [4.0, 0.0]])) == pytest.approx([-4.0, 0.0])


def test_vim_by_hand():
    # W = I, b = 0: the origin u = 0. Training features (±2, ±0.5): covariance diag(4, 0.25), so with D = 1 the
    # principal space is the x axis and the residual is |f_y| = 0.5 each. Their max logits (the features
    # themselves) are 2, 2, 0.5, −0.5: mean 1, so α = 1 / 0.5 = 2.
    train = np.array([[2, 0.5], [2, -0.5], [-2, 0.5], [-2, -0.5]])
    w, b = np.eye(2), np.zeros(2)
    feats = np.array([[1.0, 1.0]])
    # at (1, 1): logsumexp(1, 1) − 2·|1| = 1 + ln 2 − 2
    assert vim(train, train @ w.T + b, w, b, feats, feats @ w.T + b) == pytest.approx([1 + math.log(2) - 2])
    assert vim_dim(2048) == 1000 and vim_dim(768) == 512 and vim_dim(64) == 32  # the authors' choice of D


def test_vim_measures_the_residual_from_the_classifiers_origin():
    # with a bias the origin moves to u = −W⁺b: shifting features and bias together changes nothing
    rng = np.random.default_rng(0)
    train, feats = rng.normal(size=(50, 6)), rng.normal(size=(5, 6))
    w, shift = rng.normal(size=(8, 6)), rng.normal(size=6)  # K ≥ D: W⁺W = I
    plain = vim(train, train @ w.T, w, np.zeros(8), feats, feats @ w.T)
    moved = vim(train + shift, train @ w.T, w, -w @ shift, feats + shift, feats @ w.T)
    assert moved == pytest.approx(plain)


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
def test_every_model_exposes_the_input_of_its_classifier(model, data_dir):
    from datasets import SPECS
    from runner.build import model as build_model
    from runner.plan import make_plan

    dataset = "cifar10" if model == "vgg11" else "mnist"  # vgg11's five poolings need 32×32 images
    cfg = make_plan(
        [f"model={model}", f"dataset={dataset}", f"data_dir={data_dir}", "dataset.verify_checksums=false"]
    ).cfg
    spec = SPECS[dataset]
    net = build_model(cfg).eval()
    with captured(net) as feats:
        logits = net(torch.randn(3, spec.in_channels, spec.image_size, spec.image_size))
    (f,) = feats
    fc = classifier(net)
    assert f.shape == (3, fc.in_features)
    assert torch.allclose(fc(f), logits, atol=1e-5)  # the classifier's input, nothing after it


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
def test_every_model_exposes_its_penultimate_stage(model, data_dir):
    # the stage before the last: its output has the declared channels, and the last stage maps it on to the head;
    # a model with one stage has none, which the plan reports for loss=uskd (tests/test_cli.py)
    from datasets import SPECS
    from runner.build import model as build_model
    from runner.plan import make_plan

    dataset = "cifar10" if model == "vgg11" else "mnist"
    cfg = make_plan(
        [f"model={model}", f"dataset={dataset}", f"data_dir={data_dir}", "dataset.verify_checksums=false"]
    ).cfg
    spec = SPECS[dataset]
    net = build_model(cfg).eval()
    (*_, (mid, channels), (last, last_channels)) = net.stages()
    assert penultimate_stage(net) == (mid, channels)
    with tapped(mid) as out, tapped(last) as end:
        net(torch.randn(2, spec.in_channels, spec.image_size, spec.image_size))
    (f,), (g,) = out, end
    assert f.dim() == 4 and f.shape[:2] == (2, channels) and g.shape[1] == last_channels
    assert f.shape[2] >= g.shape[2]  # the last stage keeps or shrinks the spatial size
    assert net.global_pool(g).shape == (2, classifier(net).in_features)  # and the last stage feeds the head
