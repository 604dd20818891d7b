"""The pooling library: shared contract checks over one table of every layer, then each method's
values worked out by hand from its definition (METHODS.md §1–4), its properties and its pitfalls."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.norm import BatchNormAct
from models.pooling import (
    AdaPool,
    AvgPool,
    GatedPool,
    GGeM,
    GeM,
    GlobalAvgMaxPool,
    GlobalAvgPool,
    GlobalCatAvgMaxPool,
    GlobalMaxPool,
    GlobalSoftPool,
    LpPool,
    MaxPool,
    MixedPool,
    SoftPool,
    SpatialPyramidPool,
    StochasticPool,
    TreePool,
    ada_pool2d,
    dice_pool2d,
    soft_pool2d,
    soft_pool2d_reference,
)
from models.resnet import CifarResNet
from models.simple_cnn import SimpleCNN
from models.vgg import STAGES, VGG

LOCAL = {  # every local pooling option, eager where a layer can compile (the compiled path is tested below)
    "max": MaxPool, "avg": AvgPool,
    "softpool": functools.partial(SoftPool, compile=False),
    "mixed": functools.partial(MixedPool, compile=False),
    "mixed_channel": functools.partial(MixedPool, per="channel", compile=False),
    "gated": functools.partial(GatedPool, compile=False),
    "gated_channel": functools.partial(GatedPool, per="channel", compile=False),
    "tree": functools.partial(TreePool, compile=False), "tree3": functools.partial(TreePool, depth=3, compile=False),
    "lp": LpPool, "lp_fixed": functools.partial(LpPool, p=2.5, learnable=False),
    "stochastic": functools.partial(StochasticPool, compile=False),
    "adapool": functools.partial(AdaPool, compile=False),
    "adapool_channel": functools.partial(AdaPool, beta="channel", compile=False),
    "adapool_region": functools.partial(AdaPool, beta="region", compile=False),
}
HEADS = {"avg": GlobalAvgPool, "max": GlobalMaxPool, "avgmax": GlobalAvgMaxPool, "catavgmax": GlobalCatAvgMaxPool,
         "gem": GeM, "ggem": functools.partial(GGeM, groups=2), "softpool": GlobalSoftPool, "spp": SpatialPyramidPool}
HEAD_FEATURES = {"catavgmax": 2, "spp": 21}  # out_features / C where it is not 1


def window(*values: float, dtype=torch.float32) -> torch.Tensor:
    """One 2×2 window of one channel, row by row: (1, 1, 2, 2)."""
    return torch.tensor(values, dtype=dtype).view(1, 1, 2, 2)


# ------------------------------------------------------------------ the shared contract, every layer

@pytest.mark.parametrize("name", LOCAL)
@pytest.mark.parametrize("h,w,k,s", [(28, 28, 2, 2), (7, 9, 2, 2), (9, 8, 3, 2), (8, 7, 3, 1), (10, 11, 2, 3)])
def test_local_pool_output_size_follows_the_floor_rule(name, h, w, k, s):
    out = LOCAL[name](4, kernel_size=k, stride=s)(torch.rand(2, 4, h, w))
    assert tuple(out.shape) == (2, 4, (h - k) // s + 1, (w - k) // s + 1)


@pytest.mark.parametrize("name", LOCAL)
def test_local_pool_gradient_check_in_float64(name):
    torch.manual_seed(0)
    layer = LOCAL[name](3, kernel_size=2, stride=2).double().eval()  # stochastic pooling is deterministic in eval
    x = (torch.rand(2, 3, 5, 4, dtype=torch.float64) + 0.1).requires_grad_()  # positive, no ties: max is smooth here
    assert torch.autograd.gradcheck(layer, (x,))
    params = [p for p in layer.parameters()]
    if params:  # the learned parameters get the right gradient too
        assert torch.autograd.gradcheck(lambda *ps: torch.func.functional_call(
            layer, dict(zip([n for n, _ in layer.named_parameters()], ps)), (x.detach(),)), tuple(
            p.detach().clone().requires_grad_() for p in params))


@pytest.mark.parametrize("name", LOCAL)
def test_local_pool_is_finite_for_large_inputs_and_state_dict_round_trips(name):
    torch.manual_seed(0)
    a, b = LOCAL[name](3), LOCAL[name](3)
    b.load_state_dict(a.state_dict())
    x = torch.tensor([-1e4, 1e4, 3.0, -2.5]).repeat(2, 3, 2, 2).view(2, 3, 4, 4)
    ya, yb = a.eval()(x), b.eval()(x)
    assert torch.isfinite(ya).all() and torch.equal(ya, yb)


@pytest.mark.parametrize("name", LOCAL)
def test_local_pool_eval_is_deterministic(name):
    layer = LOCAL[name](3).eval()
    x = torch.rand(2, 3, 6, 6)
    assert torch.equal(layer(x), layer(x))


# ------------------------------------------------------------------ SoftPool (METHODS.md §1)

@pytest.mark.parametrize("compile", [False, True])
def test_softpool_values_and_gradients_by_hand(compile):
    ln2, ln3, ln4 = math.log(2), math.log(3), math.log(4)
    # weights 0.1, 0.2, 0.3, 0.4 -> (2 ln2 + 3 ln3 + 4 ln4) / 10
    assert soft_pool2d(window(0, ln2, ln3, ln4), 2, compile=compile).item() == pytest.approx(1.022731, abs=1e-6)
    x = window(1, 2, 3, 4).requires_grad_()
    y = soft_pool2d(x, 2, compile=compile)
    y.backward()
    assert y.item() == pytest.approx(3.492653, abs=1e-6)
    assert x.grad.flatten().tolist() == pytest.approx([-0.047852, -0.042932, 0.120182, 0.970602], abs=1e-6)
    assert x.grad.sum().item() == pytest.approx(1.0, abs=1e-6)  # ∂y/∂a sums to 1 over a window
    assert soft_pool2d(window(-1, -2, -3, -4), 2, compile=compile).item() == pytest.approx(-1.507347, abs=1e-6)


@pytest.mark.parametrize("compile", [False, True])
def test_softpool_is_exact_where_the_authors_formula_overflows(compile):
    for c in (100.0, 1000.0, 1e4, -1e4):  # a constant window returns itself exactly
        assert soft_pool2d(torch.full((1, 1, 2, 2), c), 2, compile=compile).item() == c
    assert soft_pool2d(window(89, 0, 0, 0), 2, compile=compile).item() == pytest.approx(89.0)
    naive = F.avg_pool2d(window(89, 0, 0, 0) * window(89, 0, 0, 0).exp(), 2) / F.avg_pool2d(
        window(89, 0, 0, 0).exp(), 2
    )
    assert torch.isnan(naive).all()  # what the shift avoids: inf / inf
    # ±1e4 mixed in one window: the weight of 1e4 is 1, so the output is 1e4 and the gradient one-hot
    x = window(1e4, -1e4, 0, 5).requires_grad_()
    y = soft_pool2d(x, 2, compile=compile)
    y.backward()
    assert y.item() == 1e4 and x.grad.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("compile", [False, True])
def test_softpool_in_half_precision_matches_float64(dtype, compile):
    torch.manual_seed(0)
    x = (torch.randn(2, 3, 8, 8) * 30).to(dtype)  # values to ±100: exp overflows float16 at 11
    x[0, 0, :2, :2] = 1e4
    expected = soft_pool2d_reference(x.double(), 2)
    y = soft_pool2d(x.requires_grad_(), 2, compile=compile)
    assert y.dtype == dtype and torch.isfinite(y).all()
    eps = torch.finfo(dtype).eps
    assert torch.allclose(y.double(), expected, rtol=2 * eps, atol=2 * eps)  # the float32 result, rounded once
    y.float().sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


def test_softpool_compiled_matches_the_reference_for_any_window():
    torch.manual_seed(0)
    for h, w, k, s in [(9, 8, 2, 2), (9, 10, 3, 2), (7, 7, 3, 1), (8, 9, 2, 3)]:
        x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
        y = soft_pool2d(x, k, s, compile=True)
        ref = soft_pool2d_reference(x, k, s)
        assert torch.allclose(y, ref, atol=1e-12)
        g = torch.randn_like(y)
        assert torch.allclose(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ref, x, g)[0], atol=1e-12)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: soft_pool2d(t, 2, 2, compile=True), (x,))


def test_softpool_follows_the_paper_not_the_official_cpu_fallback():
    # Ch0 window [0, ln3], ch1 [ln3, 0] (each row repeated to make a 2×2 window). Per-channel softmax
    # weights 1/4, 3/4 give 3 ln3 / 4 = 0.823959 in both; the official CPU fallback sums exp over
    # channels (weights [4, 4]) and gives ln3 / 2 = 0.549306.
    ln3 = math.log(3)
    x = torch.tensor([[[0, ln3], [0, ln3]], [[ln3, 0], [ln3, 0]]]).view(1, 2, 2, 2)
    assert soft_pool2d(x, 2).flatten().tolist() == pytest.approx([0.823959] * 2, abs=1e-6)


@pytest.mark.parametrize("compile", [False, True])
def test_softpool_lies_between_avg_and_max_and_is_shift_equivariant(compile):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 9, 9) * 5
    y = soft_pool2d(x, 3, 2, compile=compile)
    assert (F.avg_pool2d(x, 3, 2) <= y + 1e-5).all() and (y <= F.max_pool2d(x, 3, 2) + 1e-5).all()
    assert torch.allclose(soft_pool2d(x + 7.5, 3, 2, compile=compile), y + 7.5, atol=1e-5)


def test_softpool_falls_back_to_eager_when_compilation_fails(monkeypatch):
    from models.pooling import softpool

    def broken(kind):
        def fail(*args):
            raise RuntimeError("no C++ compiler")
        return fail

    monkeypatch.setattr(softpool.KERNELS, "compiled", broken)
    monkeypatch.setattr(softpool.KERNELS, "error", None)
    with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler.*eager"):
        y = soft_pool2d(window(1, 2, 3, 4), 2, compile=True)
    assert y.item() == pytest.approx(3.492653, abs=1e-6)


# ------------------------------------------------------------------ adaPool (METHODS.md §2)

def test_adapool_values_by_hand():
    # [0, 2] per row: ā = 1, DSC = [0, 0.8] -> eDSCW = 2e^0.8 / (1 + e^0.8); eM = 2e² / (1 + e²)
    x = window(0, 2, 0, 2)
    assert dice_pool2d(x, 2, 2).item() == pytest.approx(1.379949, abs=1e-6)
    assert soft_pool2d(x, 2).item() == pytest.approx(1.761594, abs=1e-6)
    assert ada_pool2d(x, 0.5, 2, compile=False).item() == pytest.approx(1.570772, abs=1e-6)
    layer = AdaPool(1)  # θ = 0: β = ½
    assert layer.kernels(x, use_compile=False).item() == pytest.approx(1.570772, abs=1e-6)
    with torch.no_grad():
        layer.theta.fill_(60.0)  # β = 1: eDSCW alone
    assert layer.kernels(window(1, 2, 3, 4), use_compile=False).item() == pytest.approx(2.572250, abs=1e-6)
    assert dice_pool2d(window(1, 2, 3, 4), 2, 2).item() == pytest.approx(2.572250, abs=1e-6)
    assert dice_pool2d(window(5, 5, 5, 5), 2, 2).item() == 5.0


def test_adapool_with_beta_0_is_softpool_and_with_beta_1_is_edscw():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 7)
    assert torch.equal(ada_pool2d(x, 0.0, 2, compile=False), soft_pool2d(x, 2, compile=False))
    assert torch.equal(ada_pool2d(x, 1.0, 2, compile=False), dice_pool2d(x, 2, 2))
    layer = AdaPool(3, compile=False)
    with torch.no_grad():
        layer.theta.fill_(-60.0)  # σ(−60) = 8.8e-27: β is 0 to float precision
    assert torch.allclose(layer(x), soft_pool2d(x, 2, compile=False))


def test_adapool_zero_windows_give_zero_not_nan():
    assert dice_pool2d(torch.zeros(1, 1, 2, 2), 2, 2).item() == 0.0
    # zero mean with an exact 0 in the window: the reference's DSC is 0/0 = NaN there
    x = window(-1, 0, 1, 0).requires_grad_()
    y = AdaPool(1, compile=False)(x)
    y.backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("beta", ["scalar", "channel", "region"])
def test_adapool_kernels_equal_the_definition_in_value_and_gradient(beta):
    # input and β gradients, float64; every window shape the kernels treat apart, with zero windows, a zero mean
    # beside nonzero values and lone zeros (DSC's 0/0 and |·|'s kink); compiled on the tiling windows it compiles
    torch.manual_seed(0)
    shapes = [(9, 8, 2, 2), (9, 10, 3, 2), (7, 7, 3, 1), (8, 9, 2, 3), (9, 9, 3, 3)]
    for (h, w, k, s), use_compile in [*((shape, False) for shape in shapes), ((9, 8, 2, 2), beta == "channel")]:
        layer = AdaPool(3, k, s, beta=beta).double()
        with torch.no_grad():
            layer.theta.normal_()
        x = torch.randn(2, 3, h, w, dtype=torch.float64)
        x[0, 0], x[1, 1, :3, :3], x[1, 2, 0, 0] = 0.0, 0.0, 0.0
        x[1, 0, :2, :2] = torch.tensor([[-1.0, 1.0], [0.0, 0.0]])
        x.requires_grad_()
        y, ref = layer.kernels(x, use_compile), layer.reference(x)
        assert torch.allclose(y, ref, rtol=1e-10, atol=1e-12), (h, w, k, s)
        g = torch.randn_like(y)
        got = torch.autograd.grad(y, (x, layer.theta), g)
        want = torch.autograd.grad(ref, (x, layer.theta), g)
        assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(got, want)), (h, w, k, s)


def test_adapool_region_beta_runs_at_any_resolution():
    layer = AdaPool(2, beta="region", region_size=(3, 3), compile=False)
    with torch.no_grad():
        layer.theta.copy_(torch.arange(9.0).view(1, 1, 3, 3))
    assert torch.equal(layer.mixing((3, 3)), torch.sigmoid(layer.theta))  # the paper's β at its own size
    for size in (6, 11, 32):
        assert layer(torch.rand(1, 2, size, size)).shape[-1] == size // 2
    assert sum(p.numel() for p in AdaPool(64, beta="channel").parameters()) == 64


# ------------------------------------------------------------------ mixed, gated, tree (METHODS.md §3)

def values(layer, x: torch.Tensor) -> list[float]:
    """A mixed, gated or tree layer's output for x by its reference form and by its fused kernels run eagerly."""
    return [layer.reference(x).item(), layer.kernels(x, use_compile=False).item()]


def test_mixed_gated_tree_values_by_hand():
    x = window(1, 2, 3, 4)  # max 4, avg 2.5
    mixed = MixedPool(1)
    with torch.no_grad():
        mixed.theta.fill_(math.log(0.25 / 0.75))  # a = σ(θ) = 0.25
    assert values(mixed, x) == pytest.approx([0.25 * 4 + 0.75 * 2.5] * 2)
    gated = GatedPool(1)
    assert values(gated, x) == pytest.approx([3.25] * 2)  # ω = 0: σ = ½
    with torch.no_grad():
        gated.mask.view(-1)[0] = math.log(3)  # ωᵀx = ln 3: σ = 0.75
    assert values(gated, x) == pytest.approx([0.75 * 4 + 0.25 * 2.5] * 2)
    tree = TreePool(1)
    with torch.no_grad():
        tree.filters.zero_()
        tree.filters[0, 0].view(-1)[0] = 1.0  # v₁ = [1, 0, 0, 0]
        tree.filters[0, 1] = 0.25  # v₂ = average
    assert values(tree, x) == pytest.approx([0.5 * 1 + 0.5 * 2.5] * 2)


def test_three_level_tree_mixes_leaf_pairs_then_the_pairs():
    x = window(1, 2, 3, 4)
    tree = TreePool(1, depth=3)
    with torch.no_grad():
        tree.filters.zero_()
        for leaf, value in enumerate((1.0, 2.0, 3.0, 4.0)):  # leaf m responds value·x₁ = value
            tree.filters[0, leaf].view(-1)[0] = value
        tree.filters[0, 4].view(-1)[0] = math.log(3)  # root gate σ = 0.75
        tree.filters[0, 5].view(-1)[0] = 0.0          # left gate σ = 0.5
        tree.filters[0, 6].view(-1)[0] = -math.log(3)  # right gate σ = 0.25
    left, right = 0.5 * 1 + 0.5 * 2, 0.25 * 3 + 0.75 * 4
    assert values(tree, x) == pytest.approx([0.75 * left + 0.25 * right] * 2)


def test_mixed_with_a_1_is_max_and_a_0_is_avg():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9)
    layer = MixedPool(3, kernel_size=3, stride=2)
    for theta, expected in ((60.0, F.max_pool2d(x, 3, 2)), (-60.0, F.avg_pool2d(x, 3, 2))):
        with torch.no_grad():
            layer.theta.fill_(theta)
        assert torch.allclose(layer(x), expected, atol=1e-6)
        assert torch.allclose(layer.kernels(x, use_compile=False), expected, atol=1e-6)


def test_gate_masks_are_shared_over_channels_per_layer_and_separate_per_channel():
    assert sum(p.numel() for p in GatedPool(64).parameters()) == 4  # one 2×2 mask, independent of C
    assert sum(p.numel() for p in GatedPool(64, per="channel").parameters()) == 64 * 4
    assert sum(p.numel() for p in MixedPool(64, per="channel").parameters()) == 64
    assert sum(p.numel() for p in TreePool(64, depth=3).parameters()) == (4 + 3) * 4
    layer = GatedPool(2, per="channel")
    with torch.no_grad():
        layer.mask[1].fill_(100.0)  # channel 1: σ → 1 (max); channel 0: σ = ½
    x = window(1, 2, 3, 4).repeat(1, 2, 1, 1)
    assert layer.reference(x).flatten().tolist() == pytest.approx([3.25, 4.0])
    assert layer.kernels(x, use_compile=False).flatten().tolist() == pytest.approx([3.25, 4.0])


LEARNED = {"mixed": functools.partial(MixedPool, per="channel"), "gated": GatedPool,
           "gated_channel": functools.partial(GatedPool, per="channel"), "tree": TreePool,
           "tree3_channel": functools.partial(TreePool, depth=3, per="channel")}


def kernels_against_reference(layer, x: torch.Tensor, use_compile: bool) -> None:
    """Value and gradient (input and parameters) of the fused kernels equal the reference's, float64."""
    y, ref = layer.kernels(x, use_compile), layer.reference(x)
    assert torch.allclose(y, ref, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(y)
    wrt = (x, *layer.parameters())
    got, want = torch.autograd.grad(y, wrt, g), torch.autograd.grad(ref, wrt, g)
    assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(got, want))


@pytest.mark.parametrize("name", LEARNED)
def test_mixed_gated_tree_kernels_equal_the_definition_in_value_and_gradient(name):
    # every window shape the kernels treat apart: tiling, overlapping, gapped, a map the windows do not cover;
    # random parameters (not the zero-gate start), so that every gate and filter gradient is exercised
    torch.manual_seed(0)
    for h, w, k, s in [(9, 8, 2, 2), (9, 10, 3, 2), (7, 7, 3, 1), (8, 9, 2, 3), (9, 9, 3, 3)]:
        layer = LEARNED[name](3, k, s).double()
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_()
        kernels_against_reference(layer, torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True), False)


@pytest.mark.parametrize("name", ["mixed", "gated_channel", "tree3_channel"])
def test_mixed_gated_tree_compiled_kernels_equal_the_definition(name):
    torch.manual_seed(0)
    layer = LEARNED[name](3, 2, 2).double()  # the tiling windows the layers compile (every config's)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    kernels_against_reference(layer, torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True), True)


@pytest.mark.parametrize("cls", [MixedPool, GatedPool])
def test_fused_max_gives_its_gradient_to_the_first_of_tied_values_as_max_pool2d_does(cls):
    # after a ReLU most windows are ties (all zeros): max_pool2d's gradient goes to one element, not split
    layer = cls(1, per="layer").double()
    with torch.no_grad():
        for p in layer.parameters():
            p.fill_(3.0)  # a = σ(3): mostly max
    x = torch.tensor([[0.0, 0.0, 5.0, 1.0], [0.0, 0.0, 5.0, 5.0]], dtype=torch.float64).view(1, 1, 2, 4)
    got = torch.autograd.grad(layer.kernels(x.requires_grad_(), False).sum(), x)[0]
    want = torch.autograd.grad(layer.reference(x).sum(), x)[0]
    assert torch.equal(got, want)


# ------------------------------------------------------------------ Lp / GeM, stochastic (METHODS.md §4)

def test_power_average_values_by_hand():
    x = window(1, 2, 3, 4)
    assert LpPool(1, p=3.0)(x).item() == pytest.approx(25 ** (1 / 3), abs=1e-5)  # mean of cubes = 25
    assert LpPool(1, p=1.0)(x).item() == pytest.approx(2.5, abs=1e-6)
    assert LpPool(1, p=100.0, learnable=False)(x).item() == pytest.approx(3.944931, abs=1e-5)  # 4¹⁰⁰ overflows fp32
    assert x.pow(100).mean().pow(0.01).isinf()  # what the log domain avoids
    y = LpPool(1, p=0.5)(-x)  # negative inputs are clamped to eps, fractional p: no NaN
    assert y.item() == pytest.approx(1e-6, rel=1e-4)
    assert torch.nn.LPPool2d(0.5, 2)(-x).isnan().all()  # torch's own LPPool2d here


@pytest.mark.parametrize("compile", [False, True])
def test_power_average_fused_kernels_equal_the_definition_in_value_and_gradient(compile):
    # the fused kernels against power_mean over unfolded windows differentiated by autograd, float64, every
    # window shape the kernels treat apart (tiling, overlapping, gapped, a map the windows do not cover)
    torch.manual_seed(0)
    for (h, w, k, s), p in zip([(9, 8, 2, 2), (9, 10, 3, 2), (7, 7, 3, 1), (8, 9, 2, 3), (9, 9, 3, 3)],
                               [3.0, 0.7, 2.5, 12.0, 1.0]):
        layer = LpPool(3, k, s, p=p, compile=compile).double()
        x = torch.randn(2, 3, h, w, dtype=torch.float64).mul(2).requires_grad_()  # a third are clamped to eps
        y, ref = layer(x), layer.reference(x)
        assert torch.allclose(y, ref, rtol=1e-10, atol=1e-12), (h, w, k, s)
        g = torch.randn_like(y)
        got = torch.autograd.grad(y, (x, layer.power.p), g)
        want = torch.autograd.grad(ref, (x, layer.power.p), g)
        assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(got, want)), (h, w, k, s)
    if not compile:  # and against finite differences, input and exponent together
        layer = LpPool(2, 2, 2, p=2.0, compile=False).double()
        x = torch.rand(2, 2, 5, 4, dtype=torch.float64).add(0.1).requires_grad_()
        p = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
        from models.pooling.lp import lp_pool2d

        assert torch.autograd.gradcheck(lambda t, q: lp_pool2d(t, q, 2, 2, 1e-6, compile=False), (x, p))


STOCHASTIC_FORMS = {  # training's sampling: the definition, and the fused kernels run eagerly
    "reference": lambda layer, x: layer.reference(x), "kernels": lambda layer, x: layer.sample(x, use_compile=False)}


@pytest.mark.parametrize("form", STOCHASTIC_FORMS)
def test_stochastic_pooling_samples_in_proportion_and_averages_in_eval(form):
    layer = StochasticPool(1)
    x = window(1, 2, 3, 4)
    assert layer.eval()(x).item() == pytest.approx((1 + 4 + 9 + 16) / 10)
    torch.manual_seed(0)
    draws = STOCHASTIC_FORMS[form](layer.train(), x.expand(40_000, 1, 2, 2)).flatten()
    freq = torch.stack([(draws == v).float().mean() for v in (1, 2, 3, 4)])
    assert torch.allclose(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.01)  # 4σ of a binomial frequency is 0.01
    assert draws.mean().item() == pytest.approx(3.0, abs=0.02)


@pytest.mark.parametrize("form", STOCHASTIC_FORMS)
def test_stochastic_pooling_zero_windows_and_gradient_to_the_sample(form):
    layer, sample = StochasticPool(1).train(), STOCHASTIC_FORMS[form]
    assert sample(layer, torch.zeros(1, 1, 2, 2)).item() == 0 and layer.eval()(-window(1, 2, 3, 4)).item() == 0
    x = window(0, 0, 5, 0).requires_grad_()
    sample(layer.train(), x).backward()
    assert x.grad.flatten().tolist() == [0, 0, 1, 0]
    x = window(-1, -2, -3, -4).requires_grad_()  # nothing positive: the last tap is sampled, clamped to 0
    sample(layer, x).backward()
    assert x.grad.flatten().tolist() == [0, 0, 0, 0]


@pytest.mark.parametrize("compile", [False, True])
def test_stochastic_kernels_sample_what_the_definition_samples_from_the_same_seed(compile):
    # the same uniform numbers in the same order: the same taps, the same values, the same gradients; every window
    # shape the kernels treat apart, eagerly; the tiling windows the layer compiles, compiled
    shapes = [(9, 8, 2, 2), (9, 10, 3, 2), (7, 7, 3, 1), (8, 9, 2, 3), (9, 9, 3, 3)]
    for h, w, k, s in shapes[:1] if compile else shapes:
        layer = StochasticPool(3, k, s).double().train()
        x = torch.randn(4, 3, h, w, dtype=torch.float64)
        x[0, 0] = 0.0  # all-zero windows
        x.requires_grad_()
        torch.manual_seed(1)
        y = layer.sample(x, compile)
        torch.manual_seed(1)
        ref = layer.reference(x)
        assert torch.equal(y, ref), (h, w, k, s)
        g = torch.randn_like(y)
        got, want = torch.autograd.grad(y, x, g)[0], torch.autograd.grad(ref, x, g)[0]
        assert torch.allclose(got, want, rtol=0, atol=1e-12), (h, w, k, s)  # overlaps sum in another order


# ------------------------------------------------------------------ global heads

def test_global_heads_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]]).view(1, 1, 2, 2)
    assert GlobalAvgPool(1)(x).tolist() == [[3.0]] and GlobalMaxPool(1)(x).tolist() == [[6.0]]
    assert GlobalAvgMaxPool(1)(x).tolist() == [[4.5]] and GlobalCatAvgMaxPool(1)(x).tolist() == [[3.0, 6.0]]
    assert GeM(1)(window(1, 2, 3, 4)).item() == pytest.approx(25 ** (1 / 3), abs=1e-5)
    w = torch.tensor([1.0, 2.0, 3.0, 6.0]).softmax(0)
    assert GlobalSoftPool(1)(x).item() == pytest.approx((w * torch.tensor([1.0, 2.0, 3.0, 6.0])).sum().item())
    assert GlobalSoftPool(1)(torch.full((1, 1, 3, 3), 1e4)).item() == 1e4


def test_avgmax_heads_match_timm():
    timm_layers = pytest.importorskip("timm.layers")
    x = torch.randn(2, 5, 7, 6)
    for ours, kind in ((GlobalAvgMaxPool, "avgmax"), (GlobalCatAvgMaxPool, "catavgmax"), (GlobalAvgPool, "avg")):
        theirs = timm_layers.SelectAdaptivePool2d(pool_type=kind, flatten=True)
        assert torch.allclose(ours(5)(x), theirs(x)) and ours(5).out_features == 5 * theirs.feat_mult()


def test_spatial_pyramid_has_c_times_21_features_in_level_order():
    spp = SpatialPyramidPool(8)
    x = torch.rand(2, 8, 8, 8)
    y = spp(x)
    assert spp.out_features == 168 and tuple(y.shape) == (2, 168)
    assert torch.equal(y[:, :8], x.amax((2, 3)))  # level 1: the global max of each channel
    assert torch.equal(y[:, 8:40].view(2, 8, 2, 2), F.max_pool2d(x, 4))  # level 2: 4×4 quadrants
    assert torch.equal(SpatialPyramidPool(3)(torch.full((1, 3, 7, 7), 2.5)), torch.full((1, 63), 2.5))


@pytest.mark.parametrize("name", HEADS)
def test_head_shapes_gradients_and_out_features(name):
    head = HEADS[name](6)
    x = torch.rand(2, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    assert head.out_features == 6 * HEAD_FEATURES.get(name, 1)
    assert tuple(head.double()(x).shape) == (2, head.out_features)
    assert torch.autograd.gradcheck(head, (x + 0.05,))


# ------------------------------------------------------------------ inside the models

# VGG-11's five stages and five poolings (down to 1×1 at 32 px) at an eighth of its widths: the structure that
# finds a layer's small-map bugs, at a fiftieth of the cost; the full VGG-11 has its own tests below and in
# test_contracts.py
NARROW_VGG11 = tuple(tuple(w // 8 for w in stage) for stage in STAGES)
MODELS = {
    "simple_cnn": SimpleCNN,
    "resnet20_pool": functools.partial(CifarResNet, downsample="pool"),
    "vgg11_narrow": functools.partial(VGG, stages=NARROW_VGG11),
}


def _model(make, size, **factories):
    if getattr(make, "func", make) is VGG and size == 28:  # 28 → 14 → 7 → 3 → 1: four poolings fit
        make = functools.partial(make, downsample_at=(0, 1, 2, 3))
    defaults = dict(pool=MaxPool, global_pool=GlobalAvgPool, norm=BatchNormAct)
    channels = 1 if size == 28 else 3
    return build_model(make, in_channels=channels, num_classes=7, **(defaults | factories)), channels


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("pool", LOCAL)
@pytest.mark.parametrize("size", [28, 32])
def test_every_local_pool_runs_in_every_model(model, pool, size):
    torch.manual_seed(0)
    net, channels = _model(MODELS[model], size, pool=LOCAL[pool])
    x = torch.randn(2, channels, size, size)
    out = net.train()(x)
    out.sum().backward()
    assert tuple(out.shape) == (2, 7) and torch.isfinite(out).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
    assert tuple(net.eval()(x).shape) == (2, 7)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("size", [28, 32])
def test_every_head_sizes_the_classifier_in_every_model(model, head, size):
    net, channels = _model(MODELS[model], size, global_pool=HEADS[head])
    assert net.fc.in_features == net.global_pool.out_features
    assert tuple(net(torch.randn(2, channels, size, size)).shape) == (2, 7)


def test_vgg11_parameter_count_by_hand():
    # eight 3×3 convs without bias (BN follows): 3→64, 64→128, 128→256, 256→256, 256→512, then 512→512 ×3;
    # BN weight and bias per channel; one linear 512 → 10
    convs = 9 * (3 * 64 + 64 * 128 + 128 * 256 + 256 * 256 + 256 * 512 + 3 * 512 * 512)
    bn = 2 * (64 + 128 + 256 + 256 + 512 * 4)
    net = build_model(VGG, in_channels=3, num_classes=10, pool=MaxPool, global_pool=GlobalAvgPool, norm=BatchNormAct)
    assert sum(p.numel() for p in net.parameters()) == convs + bn + 512 * 10 + 10 == 9_228_362
    assert sum(isinstance(m, MaxPool) for m in net.modules()) == 5


@pytest.mark.parametrize("make,down,pools,size_out", [
    (SimpleCNN, (1,), 1, 16), (SimpleCNN, (), 0, 32), (VGG, (0, 2), 2, 8),
    (functools.partial(CifarResNet, downsample="pool"), (0, 1, 2), 6, 4),
    (functools.partial(CifarResNet, downsample="conv"), (2,), 0, 16),
])
def test_downsample_at_chooses_where_the_pooling_layers_sit(make, down, pools, size_out):
    net = build_model(functools.partial(make, downsample_at=down), in_channels=3, num_classes=10,
                      pool=AvgPool, global_pool=SpatialPyramidPool, norm=BatchNormAct)
    assert sum(isinstance(m, AvgPool) for m in net.modules()) == pools  # resnet: main path and shortcut
    seen = []
    net.global_pool.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[-1]))
    net.eval()(torch.randn(1, 3, 32, 32))  # one image: shapes only (BatchNorm cannot train on one)
    assert seen == [size_out]


def test_ggem_is_gem_per_channel_group_by_hand():
    # two channels in two groups with p = 1 and p = 3: channel 0 is the mean 2.5, channel 1 is (25)^{1/3}
    head = GGeM(2, groups=2, learnable=False)
    head.power.p.copy_(torch.tensor([1.0, 3.0]))
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2).repeat(1, 2, 1, 1)
    assert head(x).tolist()[0] == pytest.approx([2.5, 25 ** (1 / 3)], abs=1e-5)
    one = GGeM(4, groups=1)(x.repeat(1, 2, 1, 1))  # one group: GeM
    assert torch.allclose(one, GeM(4)(x.repeat(1, 2, 1, 1)))
    with pytest.raises(ValueError, match="groups=3 does not divide a layer of 4 channels"):
        GGeM(4, groups=3)
