"""Every option of every family folder under conf/ meets its family's contract (DESIGN.md, "Contracts").

The option lists are read from the YAML folders, never typed out: a new YAML is covered the moment it
exists, and ``test_every_option_has_by_hand_tests`` fails until its family's table of hand-checked cases
(test_pooling.py, test_norm.py, test_losses.py) names it too.
"""
from __future__ import annotations


import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from runner.compose import CONF_DIR
from runner.targets import TARGET_HOMES, resolve_target


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def planned(option_plan):
    return option_plan


DISTILLATION = [o for o in options("loss") if getattr(
    resolve_target("loss._target_", OmegaConf.load(CONF_DIR / "loss" / f"{o}.yaml")._target_, TARGET_HOMES["loss"]),
    "needs_teacher", False)]


@pytest.mark.parametrize("option", options("pooling"))
def test_local_pooling_contract(option, planned):
    node = planned("pooling", option).cfg.pooling.copy()
    if "compile" in node:  # as a short run builds it; the compiled kernels against the reference: test_pooling.py
        node.compile = False
    make = instantiate(node)
    k, s = planned("pooling", option).cfg.pooling.kernel_size, planned("pooling", option).cfg.pooling.stride
    layer = make(3)
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    y = layer.train()(x)
    assert y.shape == (2, 3, (9 - k) // s + 1, (8 - k) // s + 1) and y.dtype == x.dtype
    y.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    layer.eval()
    with torch.no_grad():
        assert torch.equal(layer(x), layer(x))  # deterministic in eval mode


COMPILED_POOLING = [o for o in options("pooling") if "compile" in OmegaConf.load(CONF_DIR / "pooling" / f"{o}.yaml")]


@pytest.mark.parametrize("option", COMPILED_POOLING)
def test_a_compiled_pooling_compiles_once_per_layer_shape_whatever_the_batch(option, planned):
    # a grid's runs, an epoch's last batch and evaluation's larger one change the batch size: each new size must
    # not compile the layer again (10 s a time on an empty cache); Kernels marks every tensor's first dim dynamic
    from torch._dynamo.utils import counters

    layer = instantiate(planned("pooling", option).cfg.pooling)(2).train()
    graphs = []
    for n in (2, 3, 5):
        x = torch.randn(n, 2, 8, 8, requires_grad=True)
        layer(x).sum().backward()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] > 0 and graphs[1] == graphs[0] == graphs[2], graphs


@pytest.mark.parametrize("option", options("global_pool"))
def test_global_pooling_contract(option, planned):
    head = instantiate(planned("global_pool", option).cfg.global_pool)(16)  # a width the models use
    x = torch.randn(2, 16, 7, 6, requires_grad=True)
    y = head(x)
    assert y.shape == (2, head.out_features) and head.out_features >= 16
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("option", options("norm"))
def test_norm_block_contract(option, planned):
    node = planned("norm", option).cfg.norm.copy()
    if "compile" in node:  # as a short run builds it; compiled against eager: test_norm.py
        node.compile = False
    block = instantiate(node)(8)
    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    y = block.train()(x * 1)  # not a leaf: blocks may apply their activation in place
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("option", options("loss"))
def test_loss_contract(option, planned):
    from runner import build

    loss = build.loss(planned("loss", option).cfg)
    logits = torch.randn(6, 10, requires_grad=True)
    target = torch.tensor([0, 1, 2, 3, 4, 9])
    kw = {"teacher_logits": torch.randn(6, 10)} if getattr(loss, "needs_teacher", False) else {}
    if getattr(loss, "needs_mid_features", False):  # sized by the planned model's penultimate stage
        from models.features import penultimate_stage

        channels = penultimate_stage(build.model(planned("loss", option).cfg))[1]
        kw["mid_features"] = torch.randn(6, channels, 4, 4, requires_grad=True)
    value = loss(logits, target, **kw)
    assert value.shape == () and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    for p in [*loss.parameters(), *kw.values()]:  # a loss's own weights and the features it reads learn too
        if p.requires_grad:
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize("option", options("loss"))
def test_every_loss_takes_the_settings_of_every_loss(option, composer):
    # GROUP_SETTINGS["loss"] (logit_clip) comes from one base config in the defaults list: no loss YAML repeats it
    from runner.schema import GROUP_SETTINGS
    from runner.targets import typed_config

    for key in GROUP_SETTINGS["loss"]:
        cfg, _ = composer.compose([f"loss={option}", f"loss.{key}=2"])
        assert typed_config(cfg, {}).loss[key] == 2.0
        assert key not in OmegaConf.load(CONF_DIR / "loss" / f"{option}.yaml")


@pytest.mark.parametrize("option", options("model"))
def test_model_contract(option, planned):
    from runner import build

    plan = planned("model", option)
    net = build.model(plan.cfg)
    from datasets import SPECS

    spec = SPECS[plan.cfg.dataset.name]
    out = net(torch.randn(2, spec.in_channels, spec.image_size, spec.image_size))
    assert out.shape == (2, spec.num_classes)


def test_every_option_has_by_hand_tests():
    import test_losses
    import test_norm
    import test_pooling

    tables = {
        "pooling": test_pooling.LOCAL,
        "global_pool": test_pooling.HEADS,
        "norm": {**test_norm.BLOCKS, **test_norm.RESIDUAL_ONLY},
        "loss": {**test_losses.PLAIN, **test_losses.DISTILL, **test_losses.SELF},
    }
    missing = {g: sorted(set(options(g)) - set(t)) for g, t in tables.items()}
    assert not any(missing.values()), f"options without hand-checked cases: {missing}"


LOADABLE = [(group, option) for group in ("model", "pooling", "global_pool", "norm") for option in options(group)]


@pytest.mark.parametrize("group,option", LOADABLE, ids=[f"{g}={o}" for g, o in LOADABLE])
def test_load_run_returns_the_trained_model_of_every_option(group, option, planned, tmp_path):
    import json

    from datasets import SPECS
    from runner.loading import load_run
    from runner.build import model
    from runner.checkpoint import save_checkpoint

    plan = planned(group, option)
    torch.manual_seed(0)
    trained = model(plan.cfg)
    with torch.no_grad():  # weights and buffers no fresh model has: a model that ignored them would differ
        for t in [*trained.parameters(), *(b for b in trained.buffers() if b.is_floating_point())]:
            t.add_(0.01 * torch.randn_like(t))
    folder = tmp_path / "runs" / plan.run_id
    folder.mkdir(parents=True)
    save_checkpoint(folder / "checkpoint.pt", trained, plan.cfg, plan.choices, plan.run_id)
    (folder / "result.json").write_text(json.dumps({"run_id": plan.run_id, "status": "ok", "config": {},
                                                    "choices": {}, "metrics": {"test_acc": 0.5}}))
    run = load_run(folder)
    spec = SPECS[plan.cfg.dataset.name]
    x = torch.randn(2, spec.in_channels, spec.image_size, spec.image_size)
    assert not run.model.training and run.run_id == plan.run_id and run.metrics == {"test_acc": 0.5}
    assert run.config[group] == plan.cfg[group]
    with torch.no_grad():
        assert torch.allclose(run.model(x), trained.eval()(x))
