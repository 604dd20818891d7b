"""The summary over hand-made result folders: statistics checked against scipy and by hand."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from runner import records
from runner.summary import main as summary_main

AXES = {"model": "simple_cnn", "global_pool": "avg", "norm": "batch", "loss": "ce", "optim": "sgd"}


def make_run(root, run_id, *, pooling, seed, acc, ece=0.1, dataset="mnist5k", status="ok", epochs_acc=(0.5,),
             loss="ce", teacher=None):
    """A run folder as the runner writes it: result.json, epochs.csv and logits.pt."""
    folder = root / "runs" / run_id
    choices = {"dataset": dataset, "pooling": pooling, **AXES, "loss": loss, "teacher": str(teacher)}
    config = {"dataset": {"name": dataset, "val_fraction": 0.1}, "pooling": {"kernel_size": 2},
              "seed": seed, "epochs": len(epochs_acc), "lr": 0.05,
              "teacher": None if teacher is None else {"overrides": [f"model={teacher}"], "run_id": None}}
    metrics = {} if status != "ok" else {"test_acc": acc, "test_ece": ece, "test_nll": 1 - acc}
    extra = {} if teacher is None else {"teacher_run_id": "t0", "teacher_test_acc": 0.99}
    records.write_json(folder / "result.json", {"run_id": run_id, "choices": choices, "config": config, "status": status,
                                                "error": None if status == "ok" else "boom", "metrics": metrics} | extra)
    records.write_csv(folder / "epochs.csv", pd.DataFrame({"epoch": range(1, len(epochs_acc) + 1), "test_acc": epochs_acc}))
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    torch.save({"test_logits": logits, "test_target": torch.tensor([0, 1, 1])}, folder / "logits.pt")


@pytest.fixture
def sweep(tmp_path):
    """pooling max vs avg vs lp on seeds 0..3 (lp lacks seed 3; one avg run failed)."""
    acc = {"max": [0.90, 0.92, 0.91, 0.95], "avg": [0.88, 0.89, 0.90, 0.91], "lp": [0.91, 0.93, 0.92]}
    for pooling, values in acc.items():
        for seed, a in enumerate(values):
            make_run(tmp_path, f"{pooling}{seed}", pooling=pooling, seed=seed, acc=a, epochs_acc=(a - 0.2, a))
    make_run(tmp_path, "avg9", pooling="avg", seed=9, acc=0.0, status="failed")
    return tmp_path, acc


def test_summary_statistics_match_scipy_and_failed_runs_are_not_averaged(sweep, capsys):
    root, acc = sweep
    assert summary_main(["--results", str(root), "--no-plots"]) == 0
    s = pd.read_csv(root / "summary.csv")
    row = s[(s.pooling == "avg") & (s.metric == "test_acc")].iloc[0]
    values = np.array(acc["avg"])  # the failed seed 9 is not among them
    lo, hi = stats.t.interval(0.95, 3, loc=values.mean(), scale=values.std(ddof=1) / 2)
    assert row.n == 4 and row["mean"] == pytest.approx(0.895) and row["std"] == pytest.approx(values.std(ddof=1))
    assert (row.ci_low, row.ci_high) == pytest.approx((lo, hi))
    assert row.higher_is_better and not s[s.metric == "test_ece"].higher_is_better.any()
    out = capsys.readouterr().out
    assert "not aggregated: 1 runs (1 failed)" in out and "avg9 failed: boom" in out
    assert "`avg9` failed: boom" in (root / "report.md").read_text()


def test_paired_comparison_with_holm_and_unpaired_seeds(sweep):
    root, acc = sweep
    assert summary_main(["--results", str(root), "--baseline", "pooling=max", "--no-plots"]) == 0
    c = pd.read_csv(root / "comparison.csv", keep_default_na=False)
    c = c[c.metric == "test_acc"].set_index("method")
    d_avg = np.array(acc["avg"]) - np.array(acc["max"])  # [-0.02, -0.03, -0.01, -0.04]
    d_lp = np.array(acc["lp"]) - np.array(acc["max"][:3])  # [0.01, 0.01, 0.01]: seed 3 has no lp run
    p_avg = stats.ttest_rel(acc["avg"], acc["max"]).pvalue
    assert c.loc["pooling=avg", "n_pairs"] == 4 and c.loc["pooling=avg", "diff_mean"] == pytest.approx(d_avg.mean())
    assert c.loc["pooling=avg", "p_t"] == pytest.approx(p_avg)
    assert c.loc["pooling=avg", "p_wilcoxon"] == pytest.approx(stats.wilcoxon(d_avg).pvalue)  # exact: 2/16 = 0.125
    assert c.loc["pooling=lp", "n_pairs"] == 3 and str(c.loc["pooling=lp", "unpaired_seeds"]) == "3"
    # identical differences: no variance, the t-test's p is 0; Holm over the 2 comparisons by hand:
    # sorted p = (0, p_avg) -> adjusted (2·0, max(2·0, 1·p_avg))
    assert c.loc["pooling=lp", "p_t"] == 0.0 and d_lp.std() == pytest.approx(0)
    assert c.loc["pooling=avg", "p_t_holm"] == pytest.approx(min(1.0, p_avg))
    assert c.loc["pooling=lp", "p_t_holm"] == 0.0
    assert c.loc["pooling=avg", "verdict"] == ("worse" if p_avg < 0.05 else "no detectable difference")
    assert c.loc["pooling=lp", "verdict"] == "better"
    ece = pd.read_csv(root / "comparison.csv")
    assert set(ece[ece.metric == "test_ece"].verdict) == {"no detectable difference"}  # all differences are 0


def test_ranks_and_borda_across_datasets(tmp_path):
    # mnist5k: max 0.9 > avg 0.8 > lp 0.7; cifar10: lp 0.6 > max 0.5 > avg 0.4 (one seed each)
    for ds, order in (("mnist5k", {"max": 0.9, "avg": 0.8, "lp": 0.7}), ("cifar10", {"lp": 0.6, "max": 0.5, "avg": 0.4})):
        for pooling, a in order.items():
            make_run(tmp_path, f"{ds}{pooling}", pooling=pooling, seed=0, acc=a, dataset=ds)
    assert summary_main(["--results", str(tmp_path), "--no-plots"]) == 0
    r = pd.read_csv(tmp_path / "ranks.csv").set_index("method")
    assert r.loc["pooling=max", "mean_rank"] == 1.5 and r.loc["pooling=max", "borda"] == 2 + 1
    assert r.loc["pooling=lp", "mean_rank"] == 2.0 and r.loc["pooling=lp", "borda"] == 0 + 2
    assert r.loc["pooling=avg", "mean_rank"] == 2.5 and r.loc["pooling=avg", "borda"] == 1 + 0
    assert list(r.index) == ["pooling=max", "pooling=lp", "pooling=avg"]


def test_lower_is_better_metrics_rank_and_sort_the_other_way(tmp_path):
    for pooling, ece in (("max", 0.3), ("avg", 0.1)):
        make_run(tmp_path, pooling, pooling=pooling, seed=0, acc=0.9, ece=ece)
    assert summary_main(["--results", str(tmp_path), "--metric", "test_ece", "--no-plots"]) == 0
    assert pd.read_csv(tmp_path / "ranks.csv").method.tolist() == ["pooling=avg", "pooling=max"]


def test_plots_and_report_and_a_second_run_gives_the_same_files(sweep):
    root, _ = sweep
    args = ["--results", str(root), "--baseline", "pooling=max"]
    assert summary_main(args) == 0
    first = {p.name: p.read_bytes() for p in root.glob("*.csv")} | {"report.md": (root / "report.md").read_bytes()}
    pngs = sorted(p.name for p in (root / "plots").glob("*.png"))
    assert pngs == ["comparison.png", "learning_curves.png", "reliability.png"]
    assert all((root / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    report = (root / "report.md").read_text()
    assert "## Against pooling=max" in report and "![reliability](plots/reliability.png)" in report
    assert summary_main(args) == 0
    assert first == {p.name: p.read_bytes() for p in root.glob("*.csv")} | {"report.md": (root / "report.md").read_bytes()}


@pytest.mark.parametrize("args,message", [
    (["--metric", "test_accuracy"], "--metric test_accuracy: not a recorded metric. Allowed: test_acc, test_ece, test_nll"),
    (["--baseline", "pooling"], "--baseline pooling: expected axis=value"),
    (["--baseline", "pooling=maxx"], "no ok run has pooling=maxx. Values: avg, lp, max"),
])
def test_usage_errors_exit_2(sweep, capsys, args, message):
    root, _ = sweep
    assert summary_main(["--results", str(root), "--no-plots", *args]) == 2
    assert message in " ".join(capsys.readouterr().out.split())
    assert not (root / "summary.csv").exists()


def test_an_empty_results_folder_is_an_error(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    assert summary_main(["--results", str(tmp_path)]) == 2
    assert "no runs found" in capsys.readouterr().out


def test_a_distillation_loss_is_compared_with_its_teacher_attached(tmp_path):
    # CE has no teacher, KD has one: comparing losses pairs them by seed all the same
    for seed, (ce, kd) in enumerate([(0.90, 0.92), (0.91, 0.93), (0.89, 0.90)]):
        make_run(tmp_path, f"ce{seed}", pooling="max", seed=seed, acc=ce)
        make_run(tmp_path, f"kd{seed}", pooling="max", seed=seed, acc=kd, loss="kd", teacher="resnet20")
    assert summary_main(["--results", str(tmp_path), "--baseline", "loss=ce", "--no-plots"]) == 0
    c = pd.read_csv(tmp_path / "comparison.csv")
    row = c[c.metric == "test_acc"].iloc[0]
    assert row.method == "loss=kd teacher=resnet20" and row.n_pairs == 3
    assert row.diff_mean == pytest.approx((0.02 + 0.02 + 0.01) / 3)


def test_a_group_that_mixes_device_types_is_warned_about(tmp_path, capsys):
    for seed, kind in enumerate(["cpu", "cpu", "cuda"]):
        make_run(tmp_path, f"m{seed}", pooling="max", seed=seed, acc=0.9)
        path = tmp_path / "runs" / f"m{seed}" / "result.json"
        record = json.loads(path.read_text()) | {"device_type": kind, "autocast": "bfloat16" if kind == "cuda" else None}
        path.write_text(json.dumps(record))
    assert summary_main([str(tmp_path), "--results", str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "mixes runs on cpu/None, cuda/bfloat16" in out
