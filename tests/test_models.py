"""Models and the layer families they are built from: shapes, hand-counted parameters, contracts."""
from __future__ import annotations

import functools

import pytest
import torch

from models import build_model
from models.norm import BatchNormAct, NoNormAct
from models.pooling import AvgPool, GlobalAvgPool, GlobalMaxPool, MaxPool
from models.resnet import CifarResNet
from models.simple_cnn import SimpleCNN

POOLS = [MaxPool, AvgPool]
NORMS = [BatchNormAct, NoNormAct]
HEADS = [GlobalAvgPool, GlobalMaxPool]


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("size,k,s", [(28, 2, 2), (7, 2, 2), (9, 3, 2), (8, 3, 1)])
def test_local_pool_output_size(pool, size, k, s):
    out = pool(4, kernel_size=k, stride=s)(torch.randn(2, 4, size, size + 1))
    assert tuple(out.shape) == (2, 4, (size - k) // s + 1, (size + 1 - k) // s + 1)


def test_pool_values_by_hand():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    assert MaxPool(1)(x).item() == 4.0 and AvgPool(1)(x).item() == 2.5


def test_norm_blocks_own_the_activation():
    x = torch.tensor([-1.0, 2.0]).view(1, 1, 1, 2)
    assert NoNormAct(1)(x.clone()).flatten().tolist() == [0.0, 2.0]
    assert NoNormAct(1, apply_act=False)(x.clone()).flatten().tolist() == [-1.0, 2.0]
    bn = BatchNormAct(1, apply_act=False).train()
    y = bn(torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)).flatten()  # (x - 2) / sqrt(1 + eps)
    assert y.tolist() == pytest.approx([-1.0, 1.0], abs=1e-4)
    assert BatchNormAct(1).train()(torch.tensor([1.0, 3.0]).view(2, 1, 1, 1)).flatten().tolist() == pytest.approx(
        [0.0, 1.0], abs=1e-4
    )


def factories(pool=MaxPool, head=GlobalAvgPool, norm=BatchNormAct, **pool_kw):
    return dict(pool=functools.partial(pool, **pool_kw), global_pool=head, norm=norm)


def test_resnet20_has_the_papers_parameter_count():
    # He et al. 2016, Table 6: 0.27M. By hand, option-A shortcuts, BN weight and bias:
    # stem 3·16·9 + 32; stage 1: 6 convs 16·16·9 + 6 BN·32; stage 2: 16·32·9 + 5·32·32·9 + 6·64;
    # stage 3: 32·64·9 + 5·64·64·9 + 6·128; classifier 64·10 + 10.
    expected = (432 + 32) + (6 * 2304 + 192) + (4608 + 5 * 9216 + 384) + (18432 + 5 * 36864 + 768) + 650
    model = build_model(CifarResNet, in_channels=3, num_classes=10, **factories())
    assert expected == 269_722
    assert sum(p.numel() for p in model.parameters()) == expected


def test_simple_cnn_parameter_count_by_hand():
    # convs 1→32, 32→32, 32→64, 64→64 (3×3, no bias before BN), BN 2·C each, linear 64·10 + 10
    expected = 9 * (32 + 32 * 32 + 32 * 64 + 64 * 64) + 2 * (32 + 32 + 64 + 64) + 650
    model = build_model(SimpleCNN, in_channels=1, num_classes=10, **factories())
    assert sum(p.numel() for p in model.parameters()) == expected


def test_no_norm_gives_the_convolutions_a_bias():
    model = build_model(SimpleCNN, in_channels=1, num_classes=10, **factories(norm=NoNormAct))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.bias is not None for c in convs)


@pytest.mark.parametrize("make", [SimpleCNN, functools.partial(CifarResNet, downsample="conv"),
                                  functools.partial(CifarResNet, downsample="pool")])
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_every_option_runs_in_every_model(make, pool, norm, head, channels, size):
    model = build_model(make, in_channels=channels, num_classes=7, **factories(pool, head, norm))
    x = torch.randn(2, channels, size, size, requires_grad=True)
    out = model.train()(x)
    assert tuple(out.shape) == (2, 7)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_pool_downsampling_puts_the_pooling_layer_in_the_resnet():
    model = CifarResNet(3, 10, downsample="pool", **factories(AvgPool))
    pools = [m for m in model.modules() if isinstance(m, AvgPool)]
    assert len(pools) == 4  # main path and shortcut at the two stage boundaries
    assert all(c.stride == (1, 1) for c in model.modules() if isinstance(c, torch.nn.Conv2d))
    assert tuple(model(torch.randn(2, 3, 32, 32)).shape) == (2, 10)


def test_resnet_rejects_a_depth_that_is_not_6n_plus_2():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(3, 10, depth=21, **factories())


def test_state_dict_round_trip():
    a = build_model(CifarResNet, in_channels=3, num_classes=10, **factories())
    b = build_model(CifarResNet, in_channels=3, num_classes=10, **factories())
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(a.eval()(x), b.eval()(x))
