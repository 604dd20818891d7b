"""The normalization library: every block against its definition (METHODS.md §9), in every model."""
from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import build_model, declared
from models.norm import (SELU, BatchNormAct, EvoNormB0, EvoNormS0, Fixup, GroupNormAct, NoNormAct, OnlineNormAct,
                         PowerNormAct, SELUAct, SpectralNorm, WeightNorm)
from models.pooling import GlobalAvgPool, MaxPool
from models.resnet import CifarResNet
from models.simple_cnn import SimpleCNN
from models.vgg import STAGES, VGG

P = functools.partial
BLOCKS = {  # name: (factory, batch_dependent)
    "batch": (BatchNormAct, True),
    "none": (NoNormAct, False),
    "group": (GroupNormAct, False),
    "layer": (P(GroupNormAct, groups=1), False),
    "instance": (P(GroupNormAct, group_size=1), False),
    "weight_norm": (WeightNorm(NoNormAct), False),
    "spectral_norm": (SpectralNorm(NoNormAct), False),
    "weight_norm+batch": (WeightNorm(BatchNormAct), True),
    "evonorm_b0": (P(EvoNormB0, compile=False), True),
    "evonorm_s0": (P(EvoNormS0, compile=False), False),
    "selu": (SELU(), False),
    "online_norm": (P(OnlineNormAct, compile=False), False),
    "powernorm": (P(PowerNormAct, compile=False), True),
}
RESIDUAL_ONLY = {"fixup": Fixup()}  # blocks that need residual models: their own section below
# VGG-11's stages at an eighth of its widths (its structure, a fiftieth of the cost; test_pooling.py has the full one)
MODELS = {"simple_cnn": SimpleCNN, "resnet20": CifarResNet,
          "vgg11_narrow": functools.partial(VGG, stages=tuple(tuple(w // 8 for w in s) for s in STAGES))}


def model_with(make, norm, channels=1, classes=10, **kw):
    return build_model(P(make, **kw), in_channels=channels, num_classes=classes, pool=MaxPool,
                       global_pool=GlobalAvgPool, norm=norm)


def as_map(values, n=1, c=1) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(n, c, 1, -1)


# ---------------------------------------------------------------- every block: shape, batch, round trip

@pytest.mark.parametrize("name", BLOCKS)
@pytest.mark.parametrize("apply_act", [True, False])
def test_block_keeps_the_shape_in_train_and_eval(name, apply_act):
    block = BLOCKS[name][0](16, apply_act=apply_act)
    x = torch.randn(4, 16, 5, 7)
    for mode in (True, False):
        y = block.train(mode)(x)
        assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("name", BLOCKS)
def test_a_batch_of_one_trains_or_is_a_clear_error(name):
    factory, batch_dependent = BLOCKS[name]
    block = factory(16).train()
    x = torch.randn(1, 16, 4, 4)
    if batch_dependent:
        with pytest.raises(ValueError, match="cannot train on a batch of 1; use batch_size >= 2"):
            block(x)
    else:
        assert torch.isfinite(block(x)).all()
    assert torch.isfinite(block.eval()(x)).all()  # eval never depends on the batch


@pytest.mark.parametrize("name", BLOCKS)
def test_state_dict_round_trip_after_training_steps(name):
    factory = BLOCKS[name][0]
    torch.manual_seed(0)
    a = model_with(SimpleCNN, factory)
    for _ in range(2):  # move running statistics and streams off their initial values
        a.train()(torch.randn(4, 1, 28, 28)).square().mean().backward()
    torch.manual_seed(1)
    b = model_with(SimpleCNN, factory)
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", BLOCKS)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_every_norm_trains_in_every_model(model, name, channels, size):
    factory, batch_dependent = BLOCKS[name]
    kw = {"downsample_at": [0, 1, 2, 3]} if model == "vgg11_narrow" and size == 28 else {}
    net = model_with(MODELS[model], factory, channels, **kw)
    if kw and name == "instance":  # VGG's last stage at 1×1: instance norm would zero every value
        with pytest.raises(ValueError, match="normalizes groups of one value, all to 0"):
            net.eval()(torch.zeros(2, channels, size, size))
        return
    for n in (1, 2):
        x = torch.randn(n, channels, size, size)
        if n == 1 and batch_dependent:
            with pytest.raises(ValueError, match="batch of 1"):
                net.train()(x)
            continue
        out = net.train()(x)
        assert out.shape == (n, 10)
        F.cross_entropy(out, torch.arange(n)).backward()
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        net.zero_grad()


@pytest.mark.parametrize("name", ["batch", "group", "layer", "instance", "selu", "none"])
@pytest.mark.parametrize("apply_act", [True, False])
def test_gradients_are_the_derivative_of_the_forward(name, apply_act):
    torch.manual_seed(0)
    block = BLOCKS[name][0](8, apply_act=apply_act).double().train()
    if hasattr(block, "act"):  # an in-place ReLU would overwrite gradcheck's perturbed input
        block.act = type(block.act)() if not isinstance(block.act, nn.Identity) else block.act
    x = torch.randn(3, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------- values from the definitions

def test_group_layer_and_instance_norm_are_their_definitions():
    x = torch.randn(2, 16, 5, 5)
    assert torch.allclose(GroupNormAct(16, apply_act=False, groups=1)(x), F.layer_norm(x, (16, 5, 5)), atol=1e-5)
    assert torch.allclose(GroupNormAct(16, apply_act=False, group_size=1)(x), F.instance_norm(x), atol=1e-5)
    g = x.view(2, 4, 4 * 25)  # 4 groups of 4 channels
    by_hand = ((g - g.mean(-1, keepdim=True)) / (g.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()).view_as(x)
    assert torch.allclose(GroupNormAct(16, apply_act=False, groups=4)(x), by_hand, atol=1e-5)


def test_group_counts_that_do_not_divide_the_channels_are_errors():
    with pytest.raises(ValueError, match="norm.groups=3 does not divide a layer of 16 channels"):
        GroupNormAct(16, groups=3)
    with pytest.raises(ValueError, match="norm.group_size=5 does not divide a layer of 16 channels"):
        EvoNormS0(16, group_size=5)
    assert GroupNormAct(16, group_size=4).num_groups == 4 and EvoNormS0(16, group_size=4).groups == 4


def test_evonorm_s0_by_hand():
    # one group, one channel, x = [-1, 1]: group variance 1, so y = x·sigmoid(x)/sqrt(1 + 1e-5)
    y = EvoNormS0(1, groups=1, compile=False)(as_map([-1.0, 1.0])).flatten()
    assert y.tolist() == pytest.approx([-0.268940, 0.731055], abs=1e-6)
    assert torch.equal(EvoNormS0(1, groups=1, compile=False).eval()(as_map([-1.0, 1.0])).flatten(), y)  # per sample


def test_evonorm_b0_by_hand_and_its_running_variance():
    # N=2, C=1, 1×1 maps, x = [1, 3]: batch variance 1 -> left sqrt(1 + 1e-3) = 1.000500;
    # instance variance 0 -> right = x + sqrt(1e-3) = [1.031623, 3.031623]; y = x / max(left, right)
    block = EvoNormB0(1, compile=False).train()
    y = block(as_map([1.0, 3.0], n=2).view(2, 1, 1, 1)).flatten()
    assert y.tolist() == pytest.approx([0.969347, 0.989569], abs=1e-6)
    # running variance: 0.9·1 + 0.1·(1 · n/(n-1)) with n = 2 -> 1.1, used in eval
    assert block.running_var.item() == pytest.approx(1.1)
    x = as_map([2.0], n=1).view(1, 1, 1, 1)  # eval: 2 / max(sqrt(1.1 + 1e-3), 2 + sqrt(1e-3))
    assert block.eval()(x).item() == pytest.approx(2 / (2 + math.sqrt(1e-3)), abs=1e-6)


def evonorm_definition(x: torch.Tensor, kind: str, groups: int = 4) -> torch.Tensor:
    """Liu et al. (2020), Table 1, with v = γ = 1, β = 0, in float64."""
    if kind == "s0":
        g = x.view(x.shape[0], groups, -1)
        std = (g.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt().expand_as(g).reshape_as(x)
        return x * torch.sigmoid(x) / std
    batch = (x.var((0, 2, 3), unbiased=False, keepdim=True) + 1e-3).sqrt()
    instance = (x.var((2, 3), unbiased=False, keepdim=True) + 1e-3).sqrt()
    return x / torch.maximum(batch.expand_as(x), x + instance)


@pytest.mark.parametrize("kind", ["b0", "s0"])
def test_evonorm_forward_and_gradient_follow_the_definition(kind):
    # timm computes the statistics in float32, so compare with the float64 definition rather than gradcheck
    torch.manual_seed(0)
    x = torch.randn(3, 8, 4, 4, dtype=torch.float64, requires_grad=True)
    for compile in (False, True):  # timm's forward eagerly, and compiled with its backward derived by AOTAutograd
        block = (EvoNormB0(8, compile=compile) if kind == "b0" else EvoNormS0(8, groups=4, compile=compile))
        block = block.double().train()
        ours = block(x)
        ours_grad, = torch.autograd.grad(ours.square().sum(), x)
        ref = evonorm_definition(x, kind)
        ref_grad, = torch.autograd.grad(ref.square().sum(), x)
        assert torch.allclose(ours, ref, atol=1e-5) and torch.allclose(ours_grad, ref_grad, atol=1e-4), compile


def test_compiled_evonorm_b0_updates_its_running_variance_and_evaluates_as_eager():
    torch.manual_seed(0)
    x = torch.randn(3, 8, 4, 4, dtype=torch.float64)
    eager, compiled = EvoNormB0(8, compile=False).double().train(), EvoNormB0(8).double().train()
    eager(x), compiled(x)
    # timm takes the statistics in float32: equal to its rounding, in whatever order the compiled loop sums
    assert torch.allclose(compiled.running_var, eager.running_var, rtol=1e-6)
    z = torch.randn(2, 8, 4, 4, dtype=torch.float64)
    assert torch.allclose(compiled.eval()(z), eager.eval()(z), rtol=1e-6, atol=1e-6)


def test_batch_norm_uses_running_statistics_in_eval():
    block = BatchNormAct(1, apply_act=False, momentum=0.5).train()
    block(as_map([1.0, 3.0], n=2).view(2, 1, 1, 1))  # mean 2, unbiased variance 2
    assert block.running_mean.item() == pytest.approx(1.0) and block.running_var.item() == pytest.approx(1.5)
    assert block.eval()(torch.full((1, 1, 1, 1), 2.5)).item() == pytest.approx(1.5 / math.sqrt(1.5 + 1e-5))


def test_selu_values_and_initialization():
    x = torch.tensor([1.0, -1.0, 0.0]).view(1, 1, 1, 3)
    assert SELUAct(1)(x).flatten().tolist() == pytest.approx([1.050701, -1.111331, 0.0], abs=1e-6)
    torch.manual_seed(0)
    net = model_with(VGG, SELU(), 3, dropout=0.3)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    big = convs[-1]  # 512 -> 512, 3×3: LeCun normal std = 1/sqrt(512·9)
    assert big.weight.std().item() == pytest.approx(1 / math.sqrt(512 * 9), rel=0.01)
    assert all(c.bias is not None and not c.bias.any() for c in convs)
    assert not any(type(m) is nn.Dropout for m in net.modules())
    assert [m.p for m in net.modules() if isinstance(m, nn.AlphaDropout)] == [0.3]


def test_weight_norm_by_hand_and_it_keeps_the_initial_function():
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[3.0, 4.0]]))
    WeightNorm(NoNormAct).reparametrize(layer)
    assert layer.parametrizations.weight.original0.item() == pytest.approx(5.0)  # g starts at ‖v‖
    with torch.no_grad():
        layer.parametrizations.weight.original0.fill_(10.0)
    assert layer.weight.flatten().tolist() == pytest.approx([6.0, 8.0])  # g·v/‖v‖ = 10·[3, 4]/5
    torch.manual_seed(0)
    plain = model_with(SimpleCNN, NoNormAct)
    torch.manual_seed(0)
    normed = model_with(SimpleCNN, WeightNorm(NoNormAct))
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(plain(x), normed(x), atol=1e-5)
    reparametrized = [m for m in normed.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(reparametrized) == 5 and all(hasattr(m, "parametrizations") for m in reparametrized)


def test_spectral_norm_by_hand_and_the_classifier_switch():
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.diag(torch.tensor([3.0, 1.0])))
    SpectralNorm(NoNormAct).reparametrize(layer)
    assert layer.eval().weight.diag().tolist() == pytest.approx([1.0, 1 / 3], abs=1e-5)
    net = model_with(SimpleCNN, SpectralNorm(NoNormAct, classifier=False))
    assert not hasattr(net.fc, "parametrizations")
    assert all(hasattr(m, "parametrizations") for m in net.modules() if isinstance(m, nn.Conv2d))


def test_a_reparametrized_block_declares_what_its_inner_block_does():
    assert declared(WeightNorm(NoNormAct), "conv_bias") and not declared(WeightNorm(BatchNormAct), "conv_bias")
    assert declared(WeightNorm(BatchNormAct), "batch_dependent")
    assert not declared(SpectralNorm(NoNormAct), "batch_dependent", False)
    assert declared(SpectralNorm(SELU()), "act_layer") is nn.SELU
    assert declared(SpectralNorm(SELU(0.5)), "param_groups") is not None
    assert declared(WeightNorm(NoNormAct), "param_groups") is None


# ---------------------------------------------------------------- Fixup

@pytest.mark.parametrize("classes,expected", [(10, 2.302585), (100, 4.605170)])
@pytest.mark.parametrize("downsample", ["conv", "pool"])
def test_fixup_starts_at_zero_logits_so_the_first_loss_is_ln_k(classes, expected, downsample):
    torch.manual_seed(0)
    net = model_with(CifarResNet, Fixup(), 3, classes, downsample=downsample).train()
    x = torch.randn(8, 3, 32, 32) * 5
    logits = net(x)
    assert torch.equal(logits, torch.zeros_like(logits))
    assert F.cross_entropy(logits, torch.randint(classes, (8,))).item() == pytest.approx(expected, abs=1e-6)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in net.modules())


def test_fixup_blocks_are_the_identity_at_initialization_and_scaled_as_the_paper_says():
    torch.manual_seed(0)
    net = model_with(CifarResNet, Fixup(), 3)
    branches = net.residual_branches()
    assert len(branches) == 9 and all(not b[1].weight.any() for b in branches)
    # the first conv of each branch: He normal (fan_out) × L^(-1/(2m-2)) = × 9^(-1/2) for m = 2
    first = branches[-1][0].weight  # 64 -> 64, 3×3
    assert first.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)) / 3, rel=0.03)
    block = net.blocks[1]  # 16 -> 16, no downsampling
    h = torch.rand(2, 16, 8, 8)  # non-negative, as after a ReLU
    assert torch.equal(block(h), h)
    n_scalars = sum(p.numel() for n, p in net.named_parameters() if p.dim() == 1 and p.numel() == 1)
    assert n_scalars == 2 + 9 * 5  # stem: bias before ReLU and before block 1; per block: 5 (Zhang et al.)


def test_fixup_scalars_and_selu_nets_train_at_their_own_learning_rate():
    net = model_with(CifarResNet, Fixup(), 3)
    main, scalars = Fixup().param_groups(net, lr=0.1)
    assert "lr" not in main and scalars["lr"] == pytest.approx(0.01)  # the authors' 1/10
    assert sum(p.numel() for p in scalars["params"]) == 47 + 10  # the scalars and the classifier's bias
    assert {id(p) for p in main["params"] + scalars["params"]} == {id(p) for p in net.parameters()}
    assert not any(p.dim() == 1 for p in main["params"])  # no conv biases: weights only
    selu_net = model_with(SimpleCNN, SELU(lr_scale=0.4))
    optimizer = torch.optim.SGD(SELU(lr_scale=0.4).param_groups(selu_net, lr=0.05), lr=0.05)
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(0.02)]


# ---------------------------------------------------------------- Online Normalization

def online_reference(batches, afwd, abkw, eps=1e-5):
    """The paper's algorithm one sample at a time (numpy, float64): outputs and input gradients per batch."""
    c = batches[0][0].shape[1]
    mu, var, u, v = np.zeros(c), np.ones(c), np.zeros(c), np.zeros(c)
    results = []
    for x, dy in batches:
        dxs = []
        scales, outs = [], []
        for xt in x:  # forward
            scale = np.sqrt(var + eps)
            y = (xt - mu[:, None, None]) / scale[:, None, None]
            m, s = xt.mean((1, 2)), xt.var((1, 2))
            var = afwd * var + (1 - afwd) * s + afwd * (1 - afwd) * (m - mu) ** 2
            mu = afwd * mu + (1 - afwd) * m
            outs.append(y)
            scales.append(scale)
        for y, scale, g_out in zip(outs, scales, dy):  # backward, the control process
            g = g_out - (1 - abkw) * v[:, None, None] * y
            v = v + (g * y).mean((1, 2))
            g = g / scale[:, None, None]
            dx = g - (1 - abkw) * u[:, None, None]
            u = u + dx.mean((1, 2))
            dxs.append(dx)
        results.append((np.stack(outs), np.stack(dxs)))
    return results, (mu, var, u, v)


@pytest.mark.parametrize("n", [1, 2, 5, 64, 129])
def test_online_norm_scan_is_the_recurrence_stepped_one_sample_at_a_time(n):
    # h_t = a_t h_{t-1} + b_t, stepped by hand; the scan has no loop over t (one coefficient: powers; one per
    # step: a prefix scan), whatever the batch size, with zero and negative coefficients among them
    from models.norm.online import _scan

    rng = np.random.default_rng(n)
    b, h = rng.normal(size=(n, 3)), rng.normal(size=3)
    per_step = rng.normal(size=(n, 3)) * (rng.random((n, 3)) > 0.2)
    for a in (0.999, 0.3, per_step):
        coef = np.broadcast_to(a, (n, 3))
        state, before = h.copy(), []
        for t in range(n):
            before.append(state)
            state = coef[t] * state + b[t]
        got, last = _scan(a if np.isscalar(a) else torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(h))
        assert np.allclose(got.numpy(), np.stack(before), rtol=1e-12, atol=1e-12)
        assert np.allclose(last.numpy(), state, rtol=1e-12, atol=1e-12)


def test_online_norm_normalizes_each_sample_with_the_statistics_before_it():
    block = OnlineNormAct(1, apply_act=False, alpha_fwd=0.5, ecm="none").train()
    y = block(as_map([[1.0, 3.0], [2.0, 4.0]], n=2)).view(2, 2)
    # sample 1: mu = 0, var = 1 -> x / sqrt(1 + eps)
    assert y[0].tolist() == pytest.approx([1 / math.sqrt(1 + 1e-5), 3 / math.sqrt(1 + 1e-5)], abs=1e-6)
    # after sample 1 (mean 2, variance 1): mu = 0.5·2 = 1, var = 0.5·1 + 0.5·1 + 0.25·(2 - 0)² = 2
    assert y[1].tolist() == pytest.approx([1 / math.sqrt(2 + 1e-5), 3 / math.sqrt(2 + 1e-5)], abs=1e-6)
    # after sample 2 (mean 3, variance 1): mu = 0.5·1 + 0.5·3 = 2, var = 0.5·2 + 0.5·1 + 0.25·(3 - 1)² = 2.5
    assert block.running_mean.item() == pytest.approx(2.0) and block.running_var.item() == pytest.approx(2.5)
    assert block.eval()(as_map([2.0, 4.0])).flatten().tolist() == pytest.approx(
        [0.0, 2 / math.sqrt(2.5 + 1e-5)], abs=1e-6
    )


def test_online_norm_backward_is_the_papers_control_process_across_batches():
    rng = np.random.default_rng(0)
    batches = [(rng.normal(1.0, 2.0, (5, 3, 4, 4)), rng.normal(size=(5, 3, 4, 4))) for _ in range(3)]
    expected, (mu, var, u, v) = online_reference(batches, afwd=0.9, abkw=0.8)
    block = OnlineNormAct(3, apply_act=False, alpha_fwd=0.9, alpha_bkw=0.8, ecm="none").train()
    for (x, dy), (y_ref, dx_ref) in zip(batches, expected):
        x = torch.tensor(x, dtype=torch.float32, requires_grad=True)
        y = block(x)
        y.backward(torch.tensor(dy, dtype=torch.float32))
        assert np.allclose(y.detach().numpy(), y_ref, atol=1e-5)
        assert np.allclose(x.grad.numpy(), dx_ref, atol=1e-5)
    for buffer, ref in zip((block.running_mean, block.running_var, block.u, block.v), (mu, var, u, v)):
        assert np.allclose(buffer.numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("ecm,apply_act", [("ls", True), ("ls", False), ("ac", True), ("none", False)])
def test_online_norm_fused_training_equals_the_block_as_written(ecm, apply_act):
    # three steps: output, the gradients of x, γ and β, and all four streams; the fused functions eagerly, and
    # compiled for the config's block (layer scaling and ReLU)
    torch.manual_seed(0)
    written = OnlineNormAct(6, apply_act=apply_act, alpha_fwd=0.9, alpha_bkw=0.8, ecm=ecm, compile=False).train()
    with torch.no_grad():
        written.weight.normal_(), written.bias.normal_()
    fused = copy.deepcopy(written)
    for _ in range(3):
        x, g = (torch.randn(4, 6, 5, 5) * 3).requires_grad_(), torch.randn(4, 6, 5, 5)
        a, b = written(x), fused.fused(x, use_compile=ecm == "ls" and apply_act)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
        want = torch.autograd.grad(a, (x, written.weight, written.bias), g)
        got = torch.autograd.grad(b, (x, fused.weight, fused.bias), g)
        assert all(torch.allclose(u, v, rtol=1e-5, atol=1e-5) for u, v in zip(want, got))
        assert all(torch.allclose(u, v, rtol=1e-5, atol=1e-6) for u, v in zip(written.buffers(), fused.buffers()))


def test_online_norm_error_compensation():
    x = torch.randn(4, 8, 3, 3) * 10
    ls = OnlineNormAct(8, apply_act=False, ecm="ls").train()(x)
    assert ls.pow(2).mean((1, 2, 3)).tolist() == pytest.approx([1.0] * 4, abs=1e-3)  # unit second moment per sample
    assert OnlineNormAct(8, apply_act=False, ecm="ac").train()(x).abs().max() <= 5.0
    with pytest.raises(ValueError, match="norm.ecm='x': allowed: ls, ac, none"):
        OnlineNormAct(8, ecm="x")


# ---------------------------------------------------------------- PowerNorm

def test_powernorm_by_hand_in_and_after_warmup():
    x = as_map([1.0, 3.0], n=2).view(2, 1, 1, 1)  # quadratic mean (1 + 9)/2 = 5
    warm = PowerNormAct(1, apply_act=False, group_scaling=False, warmup_iters=10).train()
    assert warm(x).flatten().tolist() == pytest.approx([1 / math.sqrt(5 + 1e-5), 3 / math.sqrt(5 + 1e-5)], abs=1e-6)
    assert warm.running_phi.item() == pytest.approx(5.0)  # step 1: the average of one batch mean, then the EMA: 5
    assert warm.eval()(x).flatten().tolist() == pytest.approx(
        [1 / math.sqrt(5 + 1e-5), 3 / math.sqrt(5 + 1e-5)], abs=1e-6
    )
    after = PowerNormAct(1, apply_act=False, group_scaling=False, warmup_iters=0).train()
    xg = x.clone().requires_grad_(True)
    z = after(xg)  # the running quadratic mean from before the batch: 1
    assert z.flatten().tolist() == pytest.approx([1 / math.sqrt(1 + 1e-5), 3 / math.sqrt(1 + 1e-5)], abs=1e-6)
    assert after.running_phi.item() == pytest.approx(0.9 * 1 + 0.1 * 5)
    z.backward(torch.tensor([1.0, 1.0]).view(2, 1, 1, 1))
    # Γ = 0 before the first backward: ∂x = ∂z / sqrt(1 + eps); then Γ = mean(∂z · z) = (1 + 3)/2 / sqrt(1 + eps)
    assert xg.grad.flatten().tolist() == pytest.approx([1 / math.sqrt(1 + 1e-5)] * 2, abs=1e-6)
    assert after.ema_gz.item() == pytest.approx(2 / math.sqrt(1 + 1e-5), abs=1e-6)
    x2 = x.clone().requires_grad_(True)
    z2 = after(x2)  # scale sqrt(1.4 + eps); ∂x = (1 - 0.1·Γ·z) / scale
    z2.backward(torch.ones(2, 1, 1, 1))
    scale, gamma = math.sqrt(1.4 + 1e-5), 2 / math.sqrt(1 + 1e-5)
    want = [(1 - 0.1 * gamma * v / scale) / scale for v in (1.0, 3.0)]
    assert x2.grad.flatten().tolist() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("group_scaling,apply_act,warmup", [(True, True, 10), (True, False, 1), (False, True, 1),
                                                            (False, False, 10)])
def test_powernorm_fused_training_equals_the_block_as_written(group_scaling, apply_act, warmup):
    # three steps in and after warmup: output, the gradients of x, γ and β, and both buffers; the fused functions
    # eagerly, and compiled for the configs' block (group scaling and ReLU)
    torch.manual_seed(0)
    written = PowerNormAct(6, apply_act=apply_act, group_scaling=group_scaling, warmup_iters=warmup,
                           compile=False).train()
    with torch.no_grad():
        written.weight.normal_(), written.bias.normal_()
    fused = copy.deepcopy(written)
    for _ in range(3):
        x, g = torch.randn(4, 6, 5, 5, requires_grad=True), torch.randn(4, 6, 5, 5)
        a, b = written(x), fused.fused(x, use_compile=group_scaling and apply_act)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
        want = torch.autograd.grad(a, (x, written.weight, written.bias), g)
        got = torch.autograd.grad(b, (x, fused.weight, fused.bias), g)
        assert all(torch.allclose(u, v, rtol=1e-5, atol=1e-5) for u, v in zip(want, got))
        assert all(torch.allclose(u.float(), v.float(), rtol=1e-5, atol=1e-6)
                   for u, v in zip(written.buffers(), fused.buffers()))


def test_powernorm_group_scaling_divides_each_pixel_by_the_rms_of_its_channels():
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1).repeat(2, 1, 1, 1)  # RMS over channels sqrt(12.5)
    block = PowerNormAct(2, apply_act=False, warmup_iters=10).train()
    scaled = x / math.sqrt(12.5 + 1e-5)  # then the batch quadratic mean per channel is scaled² itself
    expected = scaled / (scaled.pow(2) + 1e-5).sqrt()
    assert torch.allclose(block(x), expected, atol=1e-6)
