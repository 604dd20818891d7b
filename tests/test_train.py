"""One run in-process: training, determinism, statuses, checkpoint and records."""
from __future__ import annotations

import contextlib
import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from conftest import TINY

import runner.run
import runner.train
from runner import build
from runner.checkpoint import read_checkpoint
from runner.plan import checkpoint_plan, make_plan
from runner.compose import CONF_DIR
from runner.schema import ConfigError
from runner.losses import CrossEntropy
from runner.metrics import classification_metrics
from runner.optim import sgd, warmup_cosine
from runner.run import run


def tiny(data_dir, results, *extra):
    return make_plan([*TINY, f"data_dir={data_dir}", f"results_dir={results}", *extra])


def test_metrics_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    m = classification_metrics(logits, torch.tensor([0, 0]))
    # nll = mean(log(1 + e^-2), log(1 + e^1))
    assert m["acc"] == 0.5
    assert m["nll"] == pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.e)) / 2, abs=1e-6)


def test_cross_entropy_label_smoothing_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = [1/4, 3/4]
    loss = CrossEntropy(label_smoothing=0.1)(logits, torch.tensor([1]))  # q = [0.05, 0.95]
    assert loss.item() == pytest.approx(-(0.05 * math.log(0.25) + 0.95 * math.log(0.75)), abs=1e-6)
    assert CrossEntropy()(logits, torch.tensor([1])).item() == pytest.approx(-math.log(0.75), abs=1e-6)


def test_warmup_then_cosine_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = sgd([p], lr=1.0, weight_decay=0.0)
    sched = warmup_cosine(opt, total_steps=110, warmup_steps=10)
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01)  # warm-up starts at lr / 100
    assert lrs[10] == pytest.approx(1.0)  # peak after warm-up
    assert lrs[60] == pytest.approx(0.5, abs=1e-6)  # half-way through the cosine: (1 + cos(π/2)) / 2
    assert lrs[109] < 0.001


def test_run_learns_and_records_everything(data_dir, tmp_path):
    plan = tiny(data_dir, tmp_path, "epochs=3")
    record = run(plan)
    assert record["status"] == "ok" and record["run_id"] == plan.run_id
    assert record["metrics"]["test_acc"] > 0.5  # chance is 0.1 on the tiny patches
    folder = tmp_path / "runs" / record["run_id"]
    assert {p.name for p in folder.iterdir()} == {
        "config.yaml",
        "epochs.csv",
        "result.json",
        "checkpoint.pt",
        "logits.pt",
    }
    epochs = pd.read_csv(folder / "epochs.csv")
    assert list(epochs["epoch"]) == [1, 2, 3] and epochs["train_loss"].iloc[-1] < epochs["train_loss"].iloc[0]
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 1 and runs.loc[0, "params"] == record["params"] > 0
    assert runs.loc[0, ["n_train", "n_val", "n_test"]].tolist() == [270, 30, 100]


def test_checkpoint_rebuilds_the_model_and_its_logits(data_dir, tmp_path):
    plan = tiny(data_dir, tmp_path, "model=resnet20", "model.downsample=pool")
    record = run(plan)
    folder = tmp_path / "runs" / record["run_id"]
    ckpt = read_checkpoint(folder / "checkpoint.pt")  # torch.load(weights_only=True)
    model = build.model(checkpoint_plan(ckpt).cfg)
    model.load_state_dict(ckpt["model"])
    model.eval()
    assert ckpt["run_id"] == record["run_id"] and ckpt["choices"]["model"] == "resnet20"
    saved = torch.load(folder / "logits.pt", weights_only=True)
    from datasets import SPECS, Batches, load

    splits = load(plan.cfg.dataset, data_dir)
    spec = SPECS["mnist"]
    x, _ = next(iter(Batches(*splits.test, 1000, spec.mean, spec.std)))
    with torch.no_grad():
        assert torch.allclose(model(x), saved["test_logits"], atol=1e-4)
    assert classification_metrics(saved["test_logits"], saved["test_target"])["acc"] == pytest.approx(
        record["metrics"]["test_acc"]
    )


def test_same_seed_same_metrics(data_dir, tmp_path):
    a = run(tiny(data_dir, tmp_path / "a", "epochs=2"))
    b = run(tiny(data_dir, tmp_path / "b", "epochs=2"))
    c = run(tiny(data_dir, tmp_path / "c", "epochs=2", "seed=1"))
    assert a["metrics"] == b["metrics"]
    assert a["metrics"] != c["metrics"]


def test_a_run_too_short_to_pay_back_compiling_runs_its_pooling_eagerly(data_dir, tmp_path, capsys, monkeypatch):
    from models.pooling import softpool

    asked = []  # which compiled kernels the run asked for; the eager ones stand in (no compilation in this test)
    monkeypatch.setattr(softpool.KERNELS, "compiled", lambda kind: asked.append(kind) or softpool.KERNELS.eager[kind])
    short = run(tiny(data_dir, tmp_path / "short", "pooling=softpool", "epochs=2"))  # 2 × 15 steps of 16 images
    assert short["status"] == "ok" and asked == []
    assert f"steps < {build.COMPILE_MIN_STEPS}: too few to pay back compiling" in capsys.readouterr().out
    monkeypatch.setattr(build, "COMPILE_MIN_STEPS", 30)
    long = run(tiny(data_dir, tmp_path / "long", "pooling=softpool", "epochs=2"))
    assert long["status"] == "ok" and set(asked) == {"forward", "backward"}
    assert "too few to pay back" not in capsys.readouterr().out
    assert long["metrics"]["test_acc"] == pytest.approx(short["metrics"]["test_acc"], abs=0.02)  # same values


def test_a_short_run_builds_compiling_layers_eagerly_and_leaves_its_plan_as_planned():
    cfg = make_plan(["pooling=softpool", "norm=evonorm_s0", "dataset=mnist5k", "epochs=3"]).cfg
    assert build.steps(cfg, 3600) == 3 * (3600 // 64) < build.COMPILE_MIN_STEPS  # 168 steps
    built, why = build.for_run(cfg, 3600)
    assert not built.pooling.compile and not built.norm.compile and cfg.pooling.compile and cfg.norm.compile
    assert "too few to pay back compiling the pooling layer and the norm blocks" in why
    assert build.for_run(cfg, 54_000) == (cfg, None)  # 3 × 843 steps: compiles


def test_completed_run_is_skipped_and_force_reruns(data_dir, tmp_path, capsys):
    first = run(tiny(data_dir, tmp_path))
    again = run(tiny(data_dir, tmp_path))
    assert again["started_at"] == first["started_at"] and "skip" in capsys.readouterr().out
    forced = run(tiny(data_dir, tmp_path, "force=true"))
    assert forced["status"] == "ok" and len(pd.read_csv(tmp_path / "runs.csv")) == 1


def test_non_finite_loss_is_diverged_not_a_crash(data_dir, tmp_path):
    record = run(tiny(data_dir, tmp_path, "lr=1e30", "norm=none"))
    assert record["status"] == "diverged" and "training loss is" in record["error"]
    assert pd.read_csv(tmp_path / "runs.csv").loc[0, "status"] == "diverged"
    assert not (tmp_path / "runs" / record["run_id"] / "checkpoint.pt").exists()


def test_an_exception_is_recorded_as_failed(data_dir, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(runner.run, "fit", broken)
    record = run(tiny(data_dir, tmp_path))
    assert record["status"] == "failed" and record["error"] == "RuntimeError: boom"
    row = pd.read_csv(tmp_path / "runs.csv").iloc[0]
    assert row["status"] == "failed" and row["error"] == "RuntimeError: boom"
    monkeypatch.undo()
    assert run(tiny(data_dir, tmp_path))["status"] == "ok"  # a failed run is not skipped


def test_fail_fast_stops(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(runner.run, "fit", lambda *a, **k: 1 / 0)
    with pytest.raises(SystemExit):
        run(tiny(data_dir, tmp_path, "fail_fast=true"))


def test_interrupt_is_recorded_and_reraised(data_dir, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.run, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tiny(data_dir, tmp_path))
    assert pd.read_csv(tmp_path / "runs.csv").loc[0, "status"] == "interrupted"
    monkeypatch.undo()
    assert run(tiny(data_dir, tmp_path))["status"] == "ok"  # resumed by the same command


def test_cifar_with_augmentation_trains(data_dir, tmp_path):
    plan = tiny(data_dir, tmp_path, "dataset=cifar10", "dataset.verify_checksums=false", "model=resnet20")
    assert plan.cfg.dataset.augment == "crop_flip"
    assert run(plan)["status"] == "ok"


def test_nll_metric_matches_torch(data_dir, tmp_path):
    record = run(tiny(data_dir, tmp_path))
    saved = torch.load(tmp_path / "runs" / record["run_id"] / "logits.pt", weights_only=True)
    assert record["metrics"]["test_nll"] == pytest.approx(
        F.cross_entropy(saved["test_logits"], saved["test_target"]).item(), rel=1e-5
    )


def test_a_run_records_calibration_temperature_and_ood_and_metrics_recomputes_them(data_dir, tmp_path, capsys):
    from runner.metrics import final_metrics
    from runner.metrics import main as metrics_main

    plan = tiny(data_dir, tmp_path, "ood=fashion_mnist", "ts_method=nll_lbfgs")
    record = run(plan)
    assert record["status"] == "ok"
    folder = tmp_path / "runs" / record["run_id"]
    saved = torch.load(folder / "logits.pt", weights_only=True)
    assert len(saved["ood_logits"]) == 100  # the tiny Fashion-MNIST test split
    assert len(saved["test_score_vim"]) == 100 and len(saved["ood_score_mahalanobis"]) == 100
    row = pd.read_csv(tmp_path / "runs.csv").iloc[0]
    expected = final_metrics(saved, "nll_lbfgs")
    for key in ("test_ece", "test_ada_ece", "test_classwise_ece", "test_brier", "test_aurc", "val_ece",
                "temperature", "test_ece_ts", "test_nll_ts", "ood_auroc", "ood_fpr95", "ood_auroc_mahalanobis",
                "ood_fpr95_mahalanobis", "ood_auroc_vim", "ood_fpr95_vim"):
        assert row[key] == pytest.approx(expected[key]), key
    assert row["ood"] == "fashion_mnist" and row["ts_method"] == "nll_lbfgs"
    epochs = pd.read_csv(tmp_path / "epochs.csv")
    assert {"test_ece", "test_mce", "test_msp_auroc", "val_ece"} <= set(epochs.columns)
    assert metrics_main([str(folder)]) == 0
    out = capsys.readouterr().out
    assert "temperature" in out and "ood_auroc" in out


@pytest.mark.parametrize("extra,message", [
    (["ood=cifar10"], "ood=cifar10: its images are 3×32×32, dataset=mnist's are 1×28×28"),
    (["ood=mnist"], "ood=mnist: allowed: "  # every other dataset option of conf/dataset/
     + ", ".join(sorted(p.stem for p in (CONF_DIR / "dataset").glob("*.yaml") if p.stem != "mnist"))
     + " (a dataset other than dataset=mnist)"),
    (["ts_method=grid"], "ts_method=grid: allowed: ece_grid, nll_lbfgs"),
])
def test_ood_and_temperature_config_errors(data_dir, tmp_path, extra, message):
    with pytest.raises(ConfigError) as e:
        tiny(data_dir, tmp_path, *extra)
    assert message in str(e.value)


# ---------------------------------------------------------------- distillation with a teacher run

SHORT_TEACHER = "teacher.overrides=['model=simple_cnn','model.widths=[64,128]','epochs=2']"  # the wide teacher, briefly


def test_the_teacher_is_trained_once_recorded_and_shared_by_its_students(data_dir, tmp_path, monkeypatch):
    plan = tiny(data_dir, tmp_path, "loss=kd", "teacher=simple_cnn_wide", SHORT_TEACHER)
    first = run(plan)
    assert first["status"] == "ok"
    runs = pd.read_csv(tmp_path / "runs.csv").set_index("run_id")
    teacher_id = first["teacher_run_id"]
    assert runs.loc[teacher_id, "model.widths"] == "[64, 128]" and runs.loc[teacher_id, "loss"] == "ce"
    assert runs.loc[first["run_id"], "teacher_test_acc"] == pytest.approx(runs.loc[teacher_id, "test_acc"])
    teacher_started = runs.loc[teacher_id, "started_at"]

    plan2 = tiny(data_dir, tmp_path, "loss=pld", "teacher=simple_cnn_wide", SHORT_TEACHER)
    by_id = tiny(data_dir, tmp_path, "loss=nkd", "teacher=run", f"teacher.run_id={teacher_id}")

    def planned_again(*a, **k):
        raise AssertionError("the run planned again: the plan carries its teacher's")

    import runner.checks
    import runner.plan
    with monkeypatch.context() as patch:
        for module, name in (
            (runner.plan, "plan_from_config"),
            (runner.plan, "checkpoint_plan"),
            (runner.plan, "Composer"),
            (runner.checks, "check_builds"),
            (runner.checks, "check_values"),
        ):
            patch.setattr(module, name, planned_again)
        second = run(plan2)
        assert run(by_id)["status"] == "ok"
    assert second["teacher_run_id"] == teacher_id
    assert pd.read_csv(tmp_path / "runs.csv").set_index("run_id").loc[teacher_id, "started_at"] == teacher_started
    # the same teacher referenced by its run id is the same experiment: the student is not run again
    plan3 = tiny(data_dir, tmp_path, "loss=kd", "teacher=run", f"teacher.run_id={teacher_id}")
    assert plan3.run_id == first["run_id"]
    # a different teacher is a different experiment
    plan4 = tiny(data_dir, tmp_path, "loss=kd", "teacher=simple_cnn_wide",
                 "teacher.overrides=['model=simple_cnn','model.widths=[64,128]','epochs=2','seed=1']")
    assert plan4.run_id != first["run_id"]


def test_a_teacher_for_other_classes_or_shapes_is_a_config_error(data_dir, tmp_path):
    plan = tiny(data_dir, tmp_path)  # a finished mnist run: 10 classes, 1×28×28
    record = run(plan)
    ckpt = tmp_path / "runs" / record["run_id"] / "checkpoint.pt"
    with pytest.raises(ConfigError, match="trained on mnist .*dataset=cifar100 has 100 classes and 3×32×32 images"):
        make_plan([*TINY, f"data_dir={data_dir}", f"results_dir={tmp_path}", "dataset=cifar100",
                 "dataset.verify_checksums=false", "loss=kd", "teacher=checkpoint", f"teacher.checkpoint={ckpt}"])


def test_the_teacher_sees_its_own_normalization_and_stays_in_eval_mode():
    import datasets
    from runner.train import Teacher

    student, own = datasets.SPECS["mnist"], datasets.SPECS["fashion_mnist"]
    bn = torch.nn.BatchNorm2d(1)
    teacher = Teacher(torch.nn.Sequential(bn), student, own)
    u = torch.rand(4, 1, 3, 3)
    x_student = (u - student.mean[0]) / student.std[0]
    teacher.train()
    assert not bn.training
    out = teacher(x_student)
    assert torch.allclose(out, (u - own.mean[0]) / own.std[0] / math.sqrt(1 + bn.eps), atol=1e-5)
    assert bn.running_mean.item() == 0.0  # eval mode: the running statistics are untouched


def test_off_a_terminal_a_long_epoch_prints_a_progress_line(monkeypatch, capsys):
    from runner import progress

    clock = iter([0.0, 10.0, 31.0, 40.0, 62.0])  # the bar's start, then one reading per batch
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    progress.set_prefix("0123456789")
    try:  # 4 batches now, 8 in later epochs, and 5 s of evaluation still to come
        with progress.epoch_bar("epoch 1/3", 4, 8, 5.0) as advance:
            for loss in (None, 0.5, None, 0.25):
                advance(100, loss)
    finally:
        progress.set_prefix(None)
    out = capsys.readouterr().out.splitlines()
    # at 31 s: 200 images in 31 s; 15.5 s a batch for 2 + 8 batches, plus 5 s: 160 s. At 62 s: 8 batches, 129 s.
    assert out == ["[0123456789] epoch 1/3: 2/4 batches, 31s, 6 img/s, loss 0.5, run ETA 2m40s",
                   "[0123456789] epoch 1/3: 4/4 batches, 62s, 6 img/s, loss 0.25, run ETA 2m09s"]


def test_a_non_finite_loss_stops_training_at_its_batch(data_dir, tmp_path, monkeypatch):
    from runner import train
    from runner.optim import warmup_cosine

    seen = []

    class NanAtSix(nn.Module):  # a loss that is NaN from the 6th batch on
        def forward(self, logits, target):
            seen.append(len(seen) + 1)
            loss = nn.functional.cross_entropy(logits, target)
            return loss * float("nan") if len(seen) >= 6 else loss

    batches = [(torch.randn(2, 4), torch.tensor([0, 1])) for _ in range(10)]
    for sync_every, stopped_after in ((4, 8), (1, 6)):  # read every 4th batch (a CUDA run's 25); read every batch
        seen.clear()
        model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with pytest.raises(train.NonFinite) as e:
            train.train_one_epoch(model, batches, NanAtSix(), optimizer, warmup_cosine(optimizer, 10, 0),
                                  contextlib.nullcontext, sync_every=sync_every)
        assert e.value.args[0] == 6 and len(seen) == stopped_after  # the first bad batch, found at the next read
    assert all(torch.isfinite(p).all() for p in model.parameters())  # read every batch: no step with a NaN

    # through a run: recorded diverged with the step, counted over the epochs (2 batches an epoch here)
    calls = []
    real = CrossEntropy.forward

    def nan_at_three(self, logits, target):
        calls.append(1)
        out = real(self, logits, target)
        return out * float("nan") if len(calls) == 3 else out

    monkeypatch.setattr(CrossEntropy, "forward", nan_at_three)
    plan = tiny(data_dir, tmp_path, "epochs=3")
    record = run(plan)
    per_epoch = record["n_train"] // plan.cfg.batch_size
    assert record["status"] == "diverged" and record["diverged_step"] == 3, record
    assert f"at step 3 (epoch {1 + 2 // per_epoch}, batch {2 % per_epoch + 1} of {per_epoch}" in record["error"]
    assert pd.read_csv(tmp_path / "runs.csv").loc[0, "diverged_step"] == 3


def test_fixup_with_zloss_takes_bounded_steps_and_its_loss_falls(data_dir, tmp_path):
    # Fixup zero-initializes the classifier, so every logit of the first batch is equal: the Z-loss's
    # standardization is 0/0 there. The gradient must stay finite and bounded, and training must go on.
    from runner import build

    plan = tiny(data_dir, tmp_path, "model=resnet20", "norm=fixup", "loss=zloss", "epochs=3")
    torch.manual_seed(0)
    model, loss_fn, _ = build.parts(plan.cfg)
    x = torch.randn(16, 1, 28, 28)
    logits = model(x)
    assert torch.equal(logits, logits[:1].expand_as(logits))  # the zero classifier: equal logits
    loss_fn(logits, torch.arange(16) % 10).backward()
    norms = [p.grad.norm().item() for p in model.parameters() if p.grad is not None]
    assert all(math.isfinite(n) for n in norms) and max(norms) < 100
    record = run(plan)
    assert record["status"] == "ok"
    losses = pd.read_csv(tmp_path / "epochs.csv").train_loss
    assert losses.map(math.isfinite).all() and losses.iloc[-1] < losses.iloc[0]


def test_a_loss_with_its_own_weights_trains_them_and_resumes_them(data_dir, tmp_path):
    # USKD's weak classifier: in the optimizer (it changes from its initial weights), in the saved state, and
    # restored on resume: a run continued from epoch 1 ends with the logits of the uninterrupted run
    from datasets import load

    plan = tiny(data_dir, tmp_path, "loss=uskd", "epochs=2", "checkpoint_every=1")
    splits = load(plan.cfg.dataset, data_dir)

    def fit(resume=None):
        torch.manual_seed(plan.cfg.seed)
        model, loss_fn, optimizer = build.parts(plan.cfg)
        initial = loss_fn.weak.weight.detach().clone()
        states = []
        out = runner.train.fit(plan.cfg, model, loss_fn, optimizer, splits, torch.device("cpu"), lambda row: None,
                               resume=resume, on_state=lambda state: states.append(copy.deepcopy(state)))  # as saved
        return out["logits"]["test_logits"], states, initial, loss_fn

    whole, (state,), initial, loss_fn = fit()
    assert not torch.equal(state["loss"]["weak.weight"], initial)
    assert {id(p) for g in build.optimizer(plan.cfg, torch.nn.Linear(1, 1), extra=loss_fn).param_groups
            for p in g["params"]} >= {id(p) for p in loss_fn.parameters()}
    resumed, _, _, _ = fit(state)
    assert torch.equal(resumed, whole)
    with pytest.raises(RuntimeError, match="weak"):  # a state without the loss's weights is refused, not ignored
        fit({k: v for k, v in state.items() if k != "loss"})


def test_ood_takes_any_dataset_option_the_composer_sees_and_the_run_reads_it_from_the_plan(data_dir, tmp_path):
    # an option of the user's --config-dir works as ood= as it does as dataset= (the run once read conf/ itself)
    user = tmp_path / "conf" / "dataset"
    user.mkdir(parents=True)
    (user / "my_digits.yaml").write_text("name: mnist\nval_fraction: 0.2\n")
    cell = [*TINY[:-1], "dataset=fashion_mnist", f"data_dir={data_dir}", f"results_dir={tmp_path / 'res'}"]
    plan = make_plan([*cell, "ood=my_digits"], config_dir=str(tmp_path / "conf"))
    assert plan.ood.name == "mnist" and plan.ood.val_fraction == 0.2 and plan.ood.source_dir is None
    record = run(plan)
    assert record["status"] == "ok" and 0 <= record["metrics"]["ood_auroc_msp"] <= 1
    with pytest.raises(ConfigError, match="ood=fashion_mnist: allowed: .*my_digits"):  # not the run's own dataset
        make_plan([*cell, "ood=fashion_mnist"], config_dir=str(tmp_path / "conf"))
