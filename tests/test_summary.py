"""The summary over hand-made result folders: groups, verdicts and ranks checked by hand."""
from __future__ import annotations

import hashlib
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps
from conftest import ROOT

from runner import records, rundir
from runner.metrics import final_metrics, higher_is_better, is_rate, kind
from runner.summary.cli import main as summary_main


def opening(report: str) -> str:
    """The report's answering paragraph: the first after the provenance header that heads it."""
    lines = report.splitlines()
    start = lines.index("## How these numbers were made") + 1
    return next(line for line in lines[start:] if line and not line.startswith("- "))

BASE = {"global_pool": "avg", "norm": "batch", "optim": "sgd"}


def make_run(root, *, dataset="mnist5k", model="simple_cnn", pooling="max", loss="ce", seed=0, acc=0.9, ece=0.05,
             status="ok", teacher=None, ood=None, at_chance=False, epochs_acc=None, device="cpu", metrics=None,
             logits=None):
    """A run folder as the runner writes it: result.json, epochs.csv and logits.pt; its id from its settings."""
    teacher_choice, teacher_cfg = {"settings": ("resnet20", {"overrides": ["model=resnet20"], "run_id": None}),
                                   "run": ("run", {"overrides": [], "run_id": "abcdef0123"}),
                                   "checkpoint": ("checkpoint", {"overrides": [], "checkpoint": "/x/checkpoint.pt"}),
                                   None: (None, None)}[teacher]
    key = json.dumps([dataset, model, pooling, loss, seed, teacher, ood])
    rid = hashlib.sha1(key.encode()).hexdigest()[:10]
    choices = {"dataset": dataset, "model": model, "pooling": pooling, "loss": loss, "teacher": teacher_choice, **BASE}
    config = {"dataset": {"name": dataset, "val_fraction": 0.1}, "pooling": {"kernel_size": 2}, "seed": seed,
              "epochs": 2, "lr": 0.05, "ood": ood, "teacher": teacher_cfg}
    epochs_acc = epochs_acc or (acc - 0.1, acc)
    metrics = {"test_acc": acc, "test_ece": ece, "test_nll": 1 - acc, "test_ada_ece_ts": ece / 2, "val_acc": acc} | (
        metrics or {}
    )
    record = {"run_id": rid, "choices": choices, "config": config, "status": status, "n_test": 1000,
              "error": None if status == "ok" else "boom", "metrics": metrics if status == "ok" else {},
              "at_chance": at_chance, "device_type": device,
              "best": {"epoch": 1, "test_acc": epochs_acc[0], "val_acc": acc + 0.01}}
    if teacher:
        record |= {"teacher_run_id": "abcdef0123", "teacher_test_acc": 0.99}
    folder = root / "runs" / rid
    rundir.write_json(folder / "result.json", record)
    records.write_csv(
        folder / "epochs.csv",
        pd.DataFrame({"epoch": range(1, len(epochs_acc) + 1), "test_acc": epochs_acc, "val_acc": epochs_acc}),
    )
    logits = logits or (torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
    torch.save({"test_logits": logits[0], "test_target": logits[1]}, folder / "logits.pt")
    return rid


@pytest.fixture
def mixed(tmp_path):
    """Three grids in one folder, as a real results folder ends up:
    A: mnist5k/simple_cnn, pooling max and softpool on seeds 0..8, avg on 0..3 (unequal seeds); softpool = max + 0.01.
    B: cifar10/resnet20, max, softpool and avg on seeds 0..2; avg seed 2 ended at chance; softpool 0.82, max 0.80,
    avg 0.75.
    C: fashion_mnist/simple_cnn, max only, seeds 0..2, seed 0 also with ood=mnist.
    And a kd student of one teacher named three ways (by settings, run id, checkpoint) on mnist5k seeds 0..2."""
    for s in range(9):
        make_run(tmp_path, pooling="max", seed=s, acc=0.90 + 0.001 * s)
        make_run(tmp_path, pooling="softpool", seed=s, acc=0.91 + 0.001 * s)
    for s in range(4):
        make_run(tmp_path, pooling="avg", seed=s, acc=0.88 + 0.001 * s)
    for s in range(3):
        make_run(tmp_path, dataset="cifar10", model="resnet20", pooling="max", seed=s, acc=0.80)
        make_run(tmp_path, dataset="cifar10", model="resnet20", pooling="softpool", seed=s, acc=0.82)
        make_run(tmp_path, dataset="cifar10", model="resnet20", pooling="avg", seed=s, acc=0.10 if s == 2 else 0.75,
                 at_chance=s == 2)
        make_run(tmp_path, dataset="fashion_mnist", pooling="max", seed=s, acc=0.85)
    make_run(tmp_path, dataset="fashion_mnist", pooling="max", seed=0, acc=0.84, ood="mnist")
    for s, way in enumerate(("settings", "run", "checkpoint")):
        make_run(tmp_path, loss="kd", seed=s, acc=0.95, teacher=way)
    make_run(tmp_path, pooling="avg", seed=9, acc=0.0, status="failed")
    return tmp_path


def test_groups_verdicts_and_ranks_of_a_mixed_folder(mixed, capsys):
    out = mixed / "summary"
    assert summary_main([str(mixed), "--out", str(out), "--baseline", "pooling=max", "--no-plots"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    acc = summary[summary.metric == "test_acc"].set_index("group")
    # a teacher named three ways is one teacher: one kd group of 3 runs
    kd = [g for g in acc.index if "loss=kd" in g]
    assert len(kd) == 1 and acc.loc[kd[0], "n"] == 3 and "teacher=abcdef0123" in kd[0]
    # ood=mnist and no ood are two groups, not one; the label says none where a run had no ood
    fashion = sorted(g for g in acc.index if "fashion_mnist" in g)
    assert len(fashion) == 2 and any("ood=none" in g for g in fashion) and any("ood=mnist" in g for g in fashion)
    # the at-chance run is out: cifar10 avg has 2 runs
    assert acc.loc[[g for g in acc.index if "cifar10" in g and "pooling=avg" in g][0], "n"] == 2

    c = pd.read_csv(out / "comparison.csv")
    c = c[c.metric == "test_acc"].set_index(["task", "method"])
    assert len(c) == 4  # softpool and avg on mnist5k and on cifar10; fashion_mnist and kd have no other pooling
    sp = c.loc[[i for i in c.index if "mnist5k" in i[0] and i[1] == "pooling=softpool"][0]]
    # 9 pairs, every difference +0.01: exact sign test p = 2/2^9; no spread, so the t-test's p is 0 and the rule's
    # is the sign test's; Holm over 4 comparisons: the smallest p × 4. These runs have no logits: this test set only
    assert sp.n_pairs == 9 and sp.diff_mean == pytest.approx(0.01) and sp.p_sign == pytest.approx(2 / 512)
    assert sp.seeds_favour_method == 9 and sp.seeds_favour_baseline == 0 and sp.p_rule == pytest.approx(2 / 512)
    assert sp.p_holm == pytest.approx(4 * 2 / 512) and sp.verdict == "better on this test set (p = 0.016)"
    assert math.isnan(sp.test_set_sd) and math.isnan(sp.diff_ci_low_test)
    avg = c.loc[[i for i in c.index if "mnist5k" in i[0] and i[1] == "pooling=avg"][0]]
    assert avg.n_pairs == 4 and avg.unpaired_seeds == "4 5 6 7 8"
    # 4 pairs cannot reach 0.05 / 4 (2/2^n < 0.0125 needs n = 8)
    assert avg.verdict.startswith(
        "too few seeds to decide: with 4 seeds this test cannot go below p = 0.125 over 4 comparisons at α = 0.05; "
        "8 are needed"
    )
    cifar_avg = c.loc[[i for i in c.index if "cifar10" in i[0] and i[1] == "pooling=avg"][0]]
    assert cifar_avg.n_pairs == 2 and cifar_avg.verdict.startswith("too few seeds to decide")

    ranks = pd.read_csv(out / "ranks.csv").set_index("method")
    # only mnist5k/simple_cnn/ce and cifar10/resnet20/ce have all three poolings; means over the common seeds:
    # mnist5k {0..3}: softpool 0.9115 > max 0.9015 > avg 0.8815; cifar10 {0, 1}: softpool 0.82 > max 0.80 > avg 0.75
    assert ranks["tasks"].tolist() == [2, 2, 2]
    assert ranks.loc["pooling=softpool", "mean_rank"] == 1 and ranks.loc["pooling=max", "mean_rank"] == 2
    assert ranks.loc["pooling=avg", "mean_rank"] == 3 and ranks.loc["pooling=softpool", "borda"] == 4
    poi = pd.read_csv(out / "probability_of_improvement.csv").set_index(["method", "other"])
    # softpool beats max in every run pair of both tasks (mnist5k: 0.9115 vs 0.9015 at worst; cifar10: 0.82 vs 0.80)
    assert poi.loc[("pooling=softpool", "pooling=max"), "p_improvement"] == 1.0
    assert poi.loc[("pooling=softpool", "pooling=max"), "ci_low"] == 1.0
    report = (out / "report.md").read_text()
    # Friedman on 2 tasks × 3 methods ranked the same way: χ² = 12/(2·3·4)·(2² + 4² + 6²) − 3·2·4 = 4, p = e^−2
    assert f"Friedman test: p = {math.exp(-2):.3g}" in report and "no critical-difference diagram is drawn" in report
    assert "Left out because they ended at chance" in report and "Tasks without every method, not ranked" in report
    first = opening(report)
    assert first.startswith("pooling=") and "better" in first and "too few seeds to decide" in first


def test_plots_and_the_critical_difference_diagram_only_when_friedman_rejects(mixed):
    out = mixed / "summary"
    assert summary_main([str(mixed), "--out", str(out), "--baseline", "pooling=max", "--rope", "0.005"]) == 0
    plots = {p.name for p in (out / "plots").iterdir()}
    drawn = {"differences", "intervals", "probability_of_improvement", "improvement_intervals", "performance_profiles",
             "learning_curves", "reliability"}
    assert {f"{name}.{fmt}" for name in drawn for fmt in ("png", "pdf")} <= plots  # every figure also as a vector file
    assert all((out / "plots" / f"{name}.pdf").read_bytes().startswith(b"%PDF") for name in drawn)
    assert "critical_difference.png" not in plots and "critical_difference.pdf" not in plots
    c = pd.read_csv(out / "comparison.csv")
    assert {"p_better", "p_equivalent", "p_worse"} <= set(c.columns)
    row = c[(c.metric == "test_acc") & (c.method == "pooling=softpool") & c.task.str.contains("mnist5k")].iloc[0]
    assert row.p_better == pytest.approx(1.0)  # every difference 0.01 > rope: no variance, all mass beyond the ROPE


def test_where_select_reference_format_and_out(mixed):
    out = mixed / "only_cifar"
    assert summary_main([str(mixed), "--out", str(out), "--where", "dataset=cifar10", "pooling=max,softpool",
                         "--baseline", "pooling=max", "--select", "best_val", "--format", "tex",
                         "--reference", "pooling=max:best_test_acc=0.9125", "--no-plots"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.metric) >= {"best_test_acc"} and all("cifar10" in g or g for g in summary.group)
    assert summary.group.nunique() == 2
    assert "\\begin{tabular}" in (out / "comparison.tex").read_text() and (out / "methods.tex").is_file()
    assert "pooling=max (published)" in (out / "report.md").read_text()
    assert not (mixed / "summary.csv").exists()  # nothing written beside the input when --out is given


@pytest.mark.parametrize("args,message", [
    (["--metric", "test_accc"], "--metric test_accc: not recorded"),
    (["--baseline", "pooling"], "--baseline pooling: expected axis=value"),
    (["--baseline", "pooling=maxx"], "no run in the statistics has pooling=maxx"),
    (["--where", "nosuch=1"], "--where nosuch=1: expected column=value"),
    (["--rope", "-1"], "--rope -1.0: allowed"),
    (["--reference", "x"], "--reference x: expected 'label:metric=value'"),
])
def test_usage_errors_exit_2(mixed, capsys, args, message):
    assert summary_main([str(mixed), "--out", str(mixed / "s"), *args]) == 2
    assert message in capsys.readouterr().out


def test_an_empty_results_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert summary_main([str(tmp_path)]) == 2
    assert "no runs found" in capsys.readouterr().out


def test_every_metric_a_run_writes_has_a_kind():
    logits = torch.randn(50, 4)
    saved = {
        "test_logits": logits,
        "test_target": torch.arange(50) % 4,
        "val_logits": logits,
        "val_target": torch.arange(50) % 4,
        "ood_logits": torch.randn(20, 4),
    }
    columns = list(final_metrics(saved)) + ["train_loss", "train_acc"]
    columns += [f"best_{c}" for c in columns if c.startswith(("test_", "val_"))]
    assert [c for c in columns if kind(c) is None] == []  # every metric has its direction and scale in one table
    assert higher_is_better("test_ada_ece_ts") is False and higher_is_better("best_test_acc") is True
    assert higher_is_better("test_temperature") is None
    # rates are fractions in [0, 1]; NLL and Brier (summed over classes, in [0, 2]) are not
    assert is_rate("test_mce") and is_rate("best_test_ece_ts") and is_rate("ood_fpr95_energy")
    assert not is_rate("test_nll") and not is_rate("test_brier") and not is_rate("test_temperature")


def test_a_group_that_mixes_device_types_is_warned_about(tmp_path, capsys):
    for seed, device in enumerate(["cpu", "cpu", "cuda"]):
        make_run(tmp_path, seed=seed, device=device)
    assert summary_main([str(tmp_path), "--no-plots"]) == 0
    assert "mixes runs on cpu/none, cuda/none" in capsys.readouterr().out


def test_the_critical_difference_diagram_is_drawn_when_friedman_rejects(tmp_path):
    # 4 datasets × 3 poolings ranked the same way in each: χ² = 12/(4·3·4)·(4² + 8² + 12²) − 3·4·4 = 8, p = e^−4
    for dataset in ("mnist5k", "mnist", "fashion_mnist", "cifar10"):
        for pooling, acc in (("max", 0.90), ("avg", 0.85), ("softpool", 0.95)):
            for seed in range(2):
                make_run(tmp_path, dataset=dataset, pooling=pooling, seed=seed, acc=acc + 0.001 * seed)
    assert summary_main([str(tmp_path), "--baseline", "pooling=max"]) == 0
    assert (tmp_path / "plots" / "critical_difference.png").exists()
    report = (tmp_path / "report.md").read_text()
    assert f"Friedman test: p = {math.exp(-4):.3g} (the ranks differ" in report
    # but with 4 tasks the exact Wilcoxon test cannot go below 2/2^4 = 0.125, so no pair is promised
    assert "no pair of methods does after Wilcoxon–Holm over 4 tasks" in report and "shows which" not in report


def test_one_sentence_speaks_of_a_rate_on_one_scale(tmp_path):
    # MCE is a rate: softpool's is about 0.012 below max's on 4 seeds, too few to decide, so the sentence gives the
    # difference and the verdict's advice; both in points (they once said -0.012 and "1.2 points" side by side)
    for s, noise in enumerate((0.002, -0.001, 0.0, -0.001)):
        make_run(tmp_path, pooling="max", seed=s, metrics={"test_mce": 0.10})
        make_run(tmp_path, pooling="softpool", seed=s, metrics={"test_mce": 0.088 + noise})
    assert summary_main([str(tmp_path), "--baseline", "pooling=max", "--metric", "test_mce", "--no-plots"]) == 0
    first = opening((tmp_path / "report.md").read_text())
    # no comparison can be decided at 4 seeds: the paragraph says so first, then the sentence
    assert first.startswith("Exploratory: no comparison here can be decided; with 4 paired seeds the rule's smallest "
                            "p is 0.125 and 6 are needed")
    said = first[first.index("pooling=softpool vs"):]
    assert said.startswith("pooling=softpool vs pooling=max: 4/4 seeds favour pooling=softpool; mean -1.2 points [")
    assert "a difference of 1.2 points" in said and "0.012" not in said


def _tables(out):
    return {name: pd.read_csv(out / f"{name}.csv") for name in ("summary", "comparison")}


def test_a_run_read_twice_counts_once(tmp_path):
    # the same root twice, a root and one of its own run folders, two roots that share runs: one table keyed by run id,
    # the same statistics as the root alone (each copy once paired with every copy made n = 12 from 3 seeds)
    root = tmp_path / "R"
    for s in range(3):
        make_run(root, pooling="max", seed=s, acc=0.90 + 0.002 * s)
        make_run(root, pooling="softpool", seed=s, acc=0.904 + 0.001 * s)
    other = tmp_path / "R2"  # a colleague's folder: a copy of two of the runs, and one run of its own
    for folder in sorted((root / "runs").iterdir())[:2]:
        shutil.copytree(folder, other / "runs" / folder.name)
    make_run(other, pooling="avg", seed=0)
    args = ["--baseline", "pooling=max", "--no-plots", "--where", "pooling=max,softpool", "--out"]
    assert summary_main([str(root), *args, str(tmp_path / "once")]) == 0
    once = _tables(tmp_path / "once")
    assert set(once["comparison"].n_pairs) == {3}
    one_run = next((root / "runs").iterdir())
    for i, inputs in enumerate(([root, root], [root, one_run], [root, other])):
        assert summary_main([*map(str, inputs), *args, str(tmp_path / f"twice{i}")]) == 0
        twice = _tables(tmp_path / f"twice{i}")
        for name in once:
            pd.testing.assert_frame_equal(twice[name], once[name])


def test_two_different_records_under_one_run_id_exit_2_naming_both(tmp_path, capsys):
    root, other = tmp_path / "R", tmp_path / "R2"
    rid = make_run(root, seed=0, acc=0.90)
    make_run(root, pooling="softpool", seed=0)
    make_run(other, seed=0, acc=0.95)  # the same settings, so the same run id, with another result
    assert summary_main([str(root), str(other), "--no-plots"]) == 2
    err = capsys.readouterr().out
    assert f"run {rid} is recorded twice with different results" in err
    assert str(root / "runs" / rid) in err and str(other / "runs" / rid) in err


def test_a_method_sharing_one_seed_with_the_baseline_is_a_row_that_says_so(tmp_path):
    # at-chance and diverged runs drop out, so one shared seed happens: it is no comparison, and no crash
    for s in range(3):
        make_run(tmp_path, pooling="max", seed=s, acc=0.90 + 0.001 * s)
    for s in (2, 3):
        make_run(tmp_path, pooling="softpool", seed=s, acc=0.93)
    assert summary_main([str(tmp_path), "--baseline", "pooling=max", "--no-plots"]) == 0
    c = pd.read_csv(tmp_path / "comparison.csv")
    row = c[c.metric == "test_acc"].iloc[0]
    assert row.n_pairs == 1 and row.verdict == "not comparable (1 shared seed)" and math.isnan(row.p_rule)
    assert "not comparable (1 shared seed)" in (tmp_path / "report.md").read_text()


def test_a_group_that_mixes_thread_counts_is_warned_about(tmp_path, capsys):
    # the thread count is not part of the run id (where it ran), but it changes floating-point sums
    for seed, threads in enumerate([1, 1, 2]):
        rid = make_run(tmp_path, seed=seed)
        record = rundir.read_result(tmp_path / "runs" / rid)
        rundir.write_json(tmp_path / "runs" / rid / "result.json", record | {"threads": threads})
    assert summary_main([str(tmp_path), "--no-plots"]) == 0
    assert "mixes runs on 1, 2 torch threads" in capsys.readouterr().out


def test_a_metric_without_a_direction_gets_no_verdict(tmp_path):
    # the fitted temperature is a measurement, not a quality: it is summarized but never called better or worse
    for s in range(8):
        make_run(tmp_path, pooling="max", seed=s, metrics={"temperature": 1.0 + 0.01 * s})
        make_run(tmp_path, pooling="softpool", seed=s, metrics={"temperature": 2.0 + 0.01 * s})
    assert summary_main([str(tmp_path), "--baseline", "pooling=max", "--no-plots"]) == 0
    assert "temperature" not in set(pd.read_csv(tmp_path / "comparison.csv").metric)
    assert "temperature" in set(pd.read_csv(tmp_path / "summary.csv").metric)


def test_the_report_names_pairs_only_when_the_post_hoc_test_finds_them(tmp_path):
    # 8 tasks, 3 methods ranked the same way in each: Friedman χ² = 12/(8·3·4)·(8² + 16² + 24²) − 3·8·4 = 16, and
    # each Wilcoxon pair has the exact two-sided p = 2/2^8 = 0.0078, 0.023 after Holm over 3: pairs do differ
    for task in range(8):
        for pooling, acc in (("max", 0.90), ("avg", 0.85), ("softpool", 0.95)):
            for seed in range(2):
                make_run(tmp_path, dataset=f"d{task}", pooling=pooling, seed=seed, acc=acc + 0.001 * seed + 0.01 * task)
    assert summary_main([str(tmp_path), "--baseline", "pooling=max", "--no-plots"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert f"Friedman test: p = {math.exp(-8):.3g} (the ranks differ; the critical-difference diagram shows" in report


def _logits(correct):
    """Two-class logits whose top class is the target (0) exactly where ``correct`` is true."""
    correct = torch.as_tensor(correct, dtype=torch.bool)
    logits = torch.where(correct[:, None], torch.tensor([2.0, 0.0]), torch.tensor([0.0, 2.0]))
    return logits, torch.zeros(len(correct), dtype=torch.long)


def test_a_difference_made_by_a_few_test_images_is_not_a_verdict(tmp_path):
    # 6 seeds on 200 test images: max is right on images 0..179; avg is right on the same images except 176..179,
    # and also on 180..187. So avg wins 8 images and loses 4, the same ones on every seed: +0.02 on every seed.
    # Seeds alone (this test set): 6/6 seeds, no spread, p = 2/64 -> "better". But 8 against 4 images is what one
    # test set of 200 gives by chance: the test set's variance of the mean is var(e_j)/N (every seed makes the same
    # per-image differences e_j: 8 ones, 4 minus ones, 188 zeros), and the t-test with it does not reject.
    base = torch.arange(200) < 180
    avg = base.clone()
    avg[176:180], avg[180:188] = False, True
    for s in range(6):
        make_run(tmp_path, pooling="max", seed=s, acc=0.90, logits=_logits(base))
        make_run(tmp_path, pooling="avg", seed=s, acc=0.92, logits=_logits(avg))
    assert summary_main([str(tmp_path), "--baseline", "pooling=max", "--no-plots"]) == 0
    row = pd.read_csv(tmp_path / "comparison.csv").query("metric == 'test_acc'").iloc[0]
    var_e = (12 - 200 * 0.02 ** 2) / 199  # Σ(e − ē)² / (N − 1)
    sd = math.sqrt(var_e / 200)
    assert row.test_set_sd == pytest.approx(sd) and row.diff_ci_low == row.diff_ci_high == pytest.approx(0.02)
    half = sps.t.ppf(0.975, 5) * sd
    assert (row.diff_ci_low_test, row.diff_ci_high_test) == pytest.approx((0.02 - half, 0.02 + half))
    assert row.p_sign == pytest.approx(2 / 64) and row.p_rule == pytest.approx(2 * sps.t.sf(0.02 / sd, 5))
    assert row.verdict.startswith(f"no detectable difference (p = {row.p_rule:.2g}); no number of seeds gives 80 % "
                                  "power for a difference of 2 points on this test set: its own sampling error")
    said = opening((tmp_path / "report.md").read_text())
    assert said.startswith("pooling=avg vs pooling=max: 6/6 seeds favour pooling=avg; mean +2 points [")
    assert "over seeds and test set (seeds alone [+2, +2])" in said
    # a run whose logits are not those of its recorded result does not lend them: this test set only
    make_run(tmp_path, pooling="avg", seed=0, acc=0.92, logits=_logits(base))
    assert summary_main([str(tmp_path), "--baseline", "pooling=max", "--no-plots"]) == 0
    row = pd.read_csv(tmp_path / "comparison.csv").query("metric == 'test_acc'").iloc[0]
    assert math.isnan(row.test_set_sd) and row.verdict.startswith("better on this test set")


def test_one_task_is_no_contest_and_leaves_no_cross_task_tables_or_figures(mixed):
    # the mixed folder ranks 2 tasks; the same folder kept to one task has nothing to rank, and the earlier
    # summary's ranks, probabilities of improvement and their figure do not stay behind to be read as this one's
    assert summary_main([str(mixed), "--baseline", "pooling=max"]) == 0
    assert (mixed / "ranks.csv").exists() and (mixed / "plots" / "probability_of_improvement.png").exists()
    assert summary_main([str(mixed), "--baseline", "pooling=max", "--where", "dataset=mnist5k"]) == 0
    assert not (mixed / "ranks.csv").exists() and not (mixed / "probability_of_improvement.csv").exists()
    assert not any((mixed / "plots" / f"{name}.{fmt}").exists() for fmt in ("png", "pdf") for name in
                   ("probability_of_improvement", "improvement_intervals", "performance_profiles"))
    report = (mixed / "report.md").read_text()
    assert "Across tasks: 1 task(s) with every method; ranks, IQM, probability of improvement and Swiss scores " \
           "need at least 2" in report and "Borda" not in report


def test_the_bayesian_rule_decides_only_when_asked_and_the_sentence_says_which_rule(tmp_path, capsys):
    # 3 seeds, softpool 1 point above max on each with a little spread: the declared rule cannot decide at 3 seeds,
    # while the Bayesian posterior (normal noise assumed) is sure; the sentence gives both and says why they differ
    for s, noise in enumerate((0.001, -0.001, 0.0)):
        make_run(tmp_path, pooling="max", seed=s, acc=0.90)
        make_run(tmp_path, pooling="softpool", seed=s, acc=0.91 + noise)
    assert summary_main([str(tmp_path), "--baseline", "pooling=max", "--rope", "0.002", "--no-plots"]) == 0
    said = opening((tmp_path / "report.md").read_text())
    assert "too few seeds to decide" in said and "Bayesian: P(better) = 1.00" in said
    assert "assumes normal seed noise, which the declared rule does not; --decide rope makes it the rule" in said
    args = [str(tmp_path), "--baseline", "pooling=max", "--rope", "0.002", "--decide", "rope", "--no-plots"]
    assert summary_main(args) == 0
    row = pd.read_csv(tmp_path / "comparison.csv").query("metric == 'test_acc'").iloc[0]
    assert row.verdict.startswith("better (P(better) = 1.00 ≥ 0.95, ROPE ±0.2 points)")
    # asking for the Bayesian rule without a ROPE is a usage error that writes nothing
    (tmp_path / "report.md").unlink()
    assert summary_main([str(tmp_path), "--baseline", "pooling=max", "--decide", "rope"]) == 2
    assert "--decide rope: give the region of practical equivalence with --rope" in capsys.readouterr().out
    assert not (tmp_path / "report.md").exists()


def test_a_careless_where_metric_or_out_gets_one_line_and_exit_2(tmp_path, capsys):
    for s in range(2):
        make_run(tmp_path, pooling="max", seed=s)
    (tmp_path / "afile").write_text("x")
    cases = [(["--where", "pooling=nope"], "--where pooling=nope: no run has that pooling; values: max"),
             (["--metric", "run_id"], "--metric run_id: not recorded. Allowed: "),
             (["--out", str(tmp_path / "afile")], f"--out {tmp_path / 'afile'}: a file; allowed: a folder")]
    for extra, message in cases:
        assert summary_main([str(tmp_path), "--no-plots", *extra]) == 2
        out = capsys.readouterr().out
        assert message in out and "Traceback" not in out
        assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize("content, message", [
    (b"", "empty; a runs.csv has a header row"),
    (b"run_id,status,seed,test_acc\n\xe9t\xe9,ok,0,0.5\n", "not UTF-8 text"),
    (b"a,b\n1,2,3,4\n\"unclosed\n", "not a CSV table"),
])
def test_a_table_written_by_anyone_gets_one_line_and_exit_2(tmp_path, capsys, content, message):
    (tmp_path / "runs.csv").write_bytes(content)
    assert summary_main([str(tmp_path / "runs.csv"), "--no-plots"]) == 2
    out = capsys.readouterr().out
    assert f"{tmp_path / 'runs.csv'}: {message}" in out and "Traceback" not in out
    assert not (tmp_path / "report.md").exists()


def test_latex_text_is_escaped_and_ascii():
    from runner.summary.export import tex_text

    # each special character by hand (LaTeX's own escapes), the symbols in math mode, anything else a '?'
    assert tex_text("a_b & 50% #1 {x} $ ~ ^ \\ ± ≥ α – ü") == (
        r"a\_b \& 50\% \#1 \{x\} \$ \textasciitilde{} \textasciicircum{} \textbackslash{} $\pm$ $\geq$ $\alpha$ -- ?")


def test_the_latex_tables_compile_with_pdflatex_without_an_overfull_box(tmp_path):
    import subprocess

    from runner.summary.export import latex_methods

    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex is missing: make test installs Debian's texlive-latex-base and texlive-latex-recommended")
    out = tmp_path / "out"
    assert summary_main([str(ROOT / "docs/examples/pooling_mnist5k/runs.csv"), "--baseline", "pooling=max",
                         "--format", "tex", "--no-plots", "--out", str(out)]) == 0
    # and a table whose method names hold every character LaTeX treats specially
    odd = pd.DataFrame({"group": ["loss=a_b&c", "loss=50%#{x}~^\\"], "metric": "test_acc", "n": 3,
                        "mean": [0.9, 0.8], "ci_low": [0.89, 0.78], "ci_high": [0.91, 0.82]})
    (out / "odd.tex").write_text(latex_methods(odd, ["test_acc"], pd.DataFrame(), None, "test_acc"))
    names = ["methods.tex", "comparison.tex", "odd.tex"]
    assert all((out / n).read_text().isascii() for n in names)
    (out / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                                 + "".join(f"\\input{{{n}}}\n" for n in names) + "\\end{document}\n")
    done = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=out,
                          capture_output=True, text=True, timeout=600)
    log = (out / "doc.log").read_text(errors="replace")
    assert done.returncode == 0 and (out / "doc.pdf").is_file(), log[-3000:]
    assert "Overfull \\hbox" not in log and "! " not in log, log[-3000:]
    assert "a\\_b\\&c" in (out / "odd.tex").read_text()


def test_the_report_and_every_export_begin_with_how_to_reproduce_them(data_dir, tmp_path, main_cli):
    from conftest import TINY

    args = ["-m", "seed=0,1", *TINY, f"data_dir={data_dir}", f"results_dir={tmp_path}"]
    assert main_cli(*args).returncode == 0
    records_ = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*/result.json")]
    assert summary_main([str(tmp_path), "--format", "tex", "--no-plots", "--include-at-chance"]) == 0
    text = (tmp_path / "report.md").read_text()
    lines = text.splitlines()
    assert lines[2] == "## How these numbers were made"
    header = text[:text.index("\n\n", text.index("- Commands"))]
    assert f"`python -m runner {' '.join(args)}`" in header
    assert "Seeds per method: " in header and ": 0-1 (2)" in header
    assert f"git commit `{records_[0]['git_commit']}`" in header and "python 3." in header
    cpu, wall = (sum(r[k] for r in records_) for k in ("cpu_seconds", "wall_seconds"))
    assert f"runs 2 runs, {cpu:,.0f} CPU-s, {wall:,.0f} s wall" in header
    methods = (tmp_path / "methods.tex").read_text()
    assert methods.startswith("% - Commands: python -m runner -m seed=0,1") and "% - Compute: runs 2 runs" in methods


def test_each_figure_draws_on_an_axes_the_user_gives():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runner.summary import plots

    fig, (a, b, c) = plt.subplots(1, 3)
    scores = {"A": {"t1": np.array([0.9, 0.8]), "t2": np.array([0.7])}, "B": {"t1": np.array([0.6]),
                                                                           "t2": np.array([0.5, 0.4])}}
    plots.performance_profiles(a, scores, "test_acc")
    rows = pd.DataFrame({"group": ["A", "B"], "n": 3, "mean": [0.9, 0.8], "ci_low": [0.85, 0.7],
                         "ci_high": [0.95, 0.9]})
    plots.intervals(b, rows, {"A": np.array([0.88, 0.9, 0.92]), "B": np.array([0.7, 0.8, 0.9])}, "test_acc", c)
    assert len(a.get_lines()) == 2 and a.get_legend() is not None  # one profile per method, on the user's axes
    assert [t.get_text() for t in b.get_yticklabels()] == ["A (n=3)", "B (n=3)"]
    plt.close(fig)


def test_the_score_distribution_by_hand():
    from runner.across import score_distribution

    # task 1: 2 of 3 runs above 1.5, 1 of 3 above 2.5; task 2: both above 1.5, none above 2.5; each task weighs half
    tasks = [np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0])]
    assert score_distribution(tasks, np.array([1.5, 2.5])) == pytest.approx([5 / 6, 1 / 6])
    assert score_distribution(tasks, np.array([1.5, 2.5]), higher_is_better=False) == pytest.approx([1 / 6, 5 / 6])


PROBE = """<script>window.addEventListener("load", function () {
  var images = document.images, loaded = 0;
  for (var i = 0; i < images.length; i++) { if (images[i].complete && images[i].naturalWidth > 0) loaded++; }
  var p = document.createElement("pre"); p.id = "probe";
  p.textContent = "images " + images.length + " loaded " + loaded + " height " + document.body.scrollHeight;
  document.body.appendChild(p);
});</script>"""


def test_report_html_is_one_self_contained_page_that_renders_in_chromium(tmp_path):
    import re
    import subprocess

    out = tmp_path / "out"
    assert summary_main([str(ROOT / "docs/examples/pooling_max_avg_mnist5k"), "--baseline", "pooling=max",
                         "--out", str(out)]) == 0
    page = (out / "report.html").read_text()
    figures = sorted((out / "plots").glob("*.png"))
    assert page.count('src="data:image/png;base64,') == len(figures) > 0  # every figure inside the page
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from a file or the network
    said = opening((out / "report.md").read_text())
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)),
                   None)
    if browser is None:
        pytest.skip("no Chromium to render report.html: make test installs Debian's chromium")
    (tmp_path / "probed.html").write_text(page.replace("</body>", PROBE + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"]
    dom = subprocess.run([browser, *flags, "--dump-dom", f"file://{tmp_path / 'probed.html'}"], capture_output=True,
                         text=True, timeout=600).stdout
    images, loaded, height = map(int, re.search(r"images (\d+) loaded (\d+) height (\d+)", dom).groups())
    assert images == loaded == len(figures) and height > 1500
    assert html_text(said) in " ".join(re.sub(r"<[^>]+>", " ", dom).split())  # the verdict, as the page shows it
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, "--window-size=1200,2000", f"--screenshot={shot}",
                    f"file://{out / 'report.html'}"], capture_output=True, timeout=600)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def html_text(markdown_line: str) -> str:
    """A markdown line as a browser shows its text: code spans unmarked, whitespace collapsed."""
    return " ".join(markdown_line.replace("`", "").split())


def test_a_summary_without_a_comparison_leaves_no_earlier_comparison_behind(tmp_path):
    src = str(ROOT / "docs/examples/pooling_max_avg_mnist5k/runs.csv")
    out = tmp_path / "out"
    assert summary_main([src, "--baseline", "pooling=max", "--format", "tex", "--no-plots", "--out", str(out)]) == 0
    assert (out / "comparison.tex").is_file() and (out / "methods.tex").is_file()
    assert summary_main([src, "--format", "tex", "--no-plots", "--out", str(out)]) == 0  # no --baseline now
    assert not (out / "comparison.tex").exists() and (out / "methods.tex").is_file()
