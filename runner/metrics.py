"""Per-run metrics from logits: accuracy, likelihood, calibration, misclassification and OOD detection.

Conventions (METHODS.md §10); probabilities are always ``softmax(logits)``, whatever the loss:

- ECE, MCE, RMSCE: top-label confidence in B equal-width bins ``(b/B, (b+1)/B]`` (left-open, as in
  the calibration papers' code; torchmetrics uses ``[b/B, (b+1)/B)`` and differs only for a
  confidence exactly on an edge). ECE weights ``|acc − conf|`` by bin mass, MCE is the largest gap
  over non-empty bins, RMSCE the mass-weighted root mean square.
- AdaECE: B equal-mass bins with the edges of Mukhoti et al.'s reference, whose first bin is
  open at the minimum confidence and so silently drops every sample at it; here the first bin is
  closed, so every sample counts.
- Classwise ECE: per class k, ``p[:, k]`` in B equal-width bins against the frequency of y = k,
  averaged over the K classes (given, not inferred from the targets).
- Brier: ``mean_n Σ_k (p_nk − 1[k = y_n])²``, summed over classes, in [0, 2].
- ``msp_auroc``: AUROC of the maximum softmax probability for telling correct from wrong predictions
  (Hendrycks and Gimpel, 2017); ``aurc``: area under the risk–coverage curve (Geifman et al., 2019),
  the mean over k of the error rate among the k most confident predictions.

The binned calibration errors are written here because no library computes them with these
conventions (torchmetrics has top-label ECE with the other edge rule, and no AdaECE or classwise
ECE); the tests cross-check against torchmetrics and scikit-learn where they agree.

``python -m runner.metrics results/runs/<run_id> …`` recomputes every metric from a run's saved
logits, so an old run can be measured with the current definitions.
"""
from __future__ import annotations

import argparse
import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from runner import rundir
from runner.schema import TS_METHODS

# What each metric is, for sorting, verdicts and the report's units: its direction (True when larger is better)
# and whether it is a rate (a fraction in [0, 1], shown in points on the 0–100 scale). NLL and Brier (in [0, 2],
# summed over classes) are not rates. One table: a new metric gets both facts here and nowhere else.
@dataclass(frozen=True)
class Kind:
    higher_is_better: bool | None
    rate: bool


METRIC_KINDS = {"acc": Kind(True, True), "msp_auroc": Kind(True, True), "ood_auroc": Kind(True, True),
                "nll": Kind(False, False), "brier": Kind(False, False), "ece": Kind(False, True),
                "ada_ece": Kind(False, True), "classwise_ece": Kind(False, True), "mce": Kind(False, True),
                "rmsce": Kind(False, True), "aurc": Kind(False, True), "ood_fpr95": Kind(False, True),
                "loss": Kind(False, False), "temperature": Kind(None, False)}


def kind(column: str) -> Kind | None:
    """What a runs.csv metric column is (``test_ece`` and ``best_test_ece_ts`` -> Kind(False, True)), or None for a
    column this table does not know. A ``_ts`` metric (after temperature scaling) is its base metric's kind; every
    OOD score's pair (``ood_auroc_energy``) is its family's."""
    name = column.removeprefix("best_")
    for family in ("ood_auroc", "ood_fpr95"):
        if name.startswith(family):
            return METRIC_KINDS[family]
    for prefix in ("test_", "val_", "train_", ""):
        if name.startswith(prefix):
            base = name[len(prefix):].removesuffix("_ts")
            if base in METRIC_KINDS:
                return METRIC_KINDS[base]
    return None


def higher_is_better(column: str) -> bool | None:
    """The direction of a runs.csv metric column, or None for a column with no direction."""
    k = kind(column)
    return k.higher_is_better if k else None


def is_rate(column: str) -> bool:
    """Whether a metric column is a fraction in [0, 1] (reported in points)."""
    k = kind(column)
    return bool(k and k.rate)


def reliability(conf: np.ndarray, hit: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mass, accuracy, mean confidence) per bin ``(edges[b], edges[b+1]]``, the first bin closed on the left."""
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, len(edges) - 2)  # conf == edges[b+1] -> bin b
    counts = np.bincount(index, minlength=len(edges) - 1)
    safe = np.maximum(counts, 1)
    acc = np.bincount(index, weights=hit, minlength=len(edges) - 1) / safe
    return counts / len(conf), acc, np.bincount(index, weights=conf, minlength=len(edges) - 1) / safe


def _binned_gaps(conf: np.ndarray, hit: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mass, |acc − conf|) per bin."""
    mass, acc, avg_conf = reliability(conf, hit, edges)
    return mass, np.abs(acc - avg_conf)


def top_label(logits: torch.Tensor, target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(max softmax probability, 1.0 where the argmax is the target) per sample, as float64 arrays."""
    conf, pred = F.softmax(logits.detach().double().cpu(), dim=1).max(dim=1)
    return conf.numpy(), (pred == target.cpu()).double().numpy()


def calibration_errors(conf: np.ndarray, hit: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """ECE, MCE and RMSCE over equal-width bins, AdaECE over equal-mass bins (see the module docstring)."""
    mass, gap = _binned_gaps(conf, hit, np.linspace(0.0, 1.0, n_bins + 1))
    # Mukhoti et al.'s equal-mass edges: interpolate the sorted confidences at N·b/B.
    ada_edges = np.interp(np.linspace(0, len(conf), n_bins + 1), np.arange(len(conf)), np.sort(conf))
    ada_mass, ada_gap = _binned_gaps(conf, hit, ada_edges)
    return {"ece": float(mass @ gap), "ada_ece": float(ada_mass @ ada_gap), "mce": float(gap[mass > 0].max()),
            "rmsce": float(math.sqrt(mass @ gap**2))}


def classwise_ece(probs: np.ndarray, target: np.ndarray, n_bins: int = 15) -> float:
    """Mean over classes k of the ECE of ``p[:, k]`` against the indicator ``y == k``."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    per_class = []
    for k in range(probs.shape[1]):
        mass, gap = _binned_gaps(probs[:, k], (target == k).astype(float), edges)
        per_class.append(mass @ gap)
    return float(np.mean(per_class))


def aurc(conf: np.ndarray, hit: np.ndarray) -> float:
    """Area under the risk–coverage curve: mean over k = 1..N of the error rate of the k most confident.

    Samples with equal confidence have no order among them, so each error among tied samples counts as
    its group's mean error (the expectation over every order of the ties): the result does not depend on
    the order of the input."""
    order = np.argsort(-conf, kind="stable")
    c, errors = conf[order], 1.0 - hit[order]
    starts = np.r_[0, np.flatnonzero(np.diff(c)) + 1]  # first index of each run of equal confidences
    sums = np.add.reduceat(errors, starts)
    sizes = np.diff(np.r_[starts, len(c)])
    errors = np.repeat(sums / sizes, sizes)
    return float(np.mean(np.cumsum(errors) / np.arange(1, len(errors) + 1)))


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    # scikit-learn and scipy are imported where used: every command imports this module (for its metric table) and
    # they would add about a second to starting one (planning a grid, --cfg job, a grid preview)
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else float("nan")


def per_image(logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """The metrics that are a mean over test images, image by image: ``acc`` (1 when the top class is right),
    ``nll`` and ``brier``. The summary reads them from saved logits to count the test set's own sampling."""
    logits = logits.detach().double().cpu()
    target = target.cpu()
    log_p = F.log_softmax(logits, dim=1)
    probs = log_p.exp()
    onehot = F.one_hot(target, logits.shape[1]).double()
    return {"acc": (probs.argmax(dim=1) == target).double(), "nll": -log_p.gather(1, target[:, None])[:, 0],
            "brier": ((probs - onehot) ** 2).sum(dim=1)}


def per_image_column(column: str) -> str | None:
    """The ``per_image`` score behind a runs.csv column (``test_acc`` -> ``acc``), or None: only the final test
    metrics before temperature scaling are means of these scores over the saved test logits."""
    name = column.removeprefix("test_")
    return name if column.startswith("test_") and name in ("acc", "nll", "brier") else None


def classification_metrics(logits: torch.Tensor, target: torch.Tensor, n_bins: int = 15) -> dict[str, float]:
    """Every per-run metric of ``softmax(logits)`` against integer ``target``; rates are fractions in [0, 1].

    ``msp_auroc`` is NaN when every prediction is right (or every one wrong): there is nothing to detect.
    """
    logits = logits.detach().double().cpu()
    target = target.cpu()
    probs = F.softmax(logits, dim=1)
    conf, _ = probs.max(dim=1)
    images = per_image(logits, target)
    hit = images["acc"]
    conf_np, hit_np = conf.numpy(), hit.numpy()
    return {
        **{name: score.mean().item() for name, score in images.items()},
        **calibration_errors(conf_np, hit_np, n_bins),
        "classwise_ece": classwise_ece(probs.numpy(), target.numpy(), n_bins),
        "msp_auroc": _auroc(hit_np, conf_np),
        "aurc": aurc(conf_np, hit_np),
    }


@functools.lru_cache(maxsize=1)
def metric_names() -> tuple[str, ...]:
    """The names ``classification_metrics`` writes for each split (read off one call on four made-up samples)."""
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.0]])
    return tuple(classification_metrics(logits, torch.tensor([0, 1, 1, 0])))


# ---------------------------------------------------------------- temperature scaling

def fit_temperature(logits: torch.Tensor, target: torch.Tensor, method: str = "ece_grid", n_bins: int = 15) -> float:
    """The temperature T for ``softmax(logits / T)``, fitted on held-out (validation) logits.

    ``ece_grid``: T in 0.1, 0.2, …, 10.0 minimising ECE, the protocol of the focal and dual-focal
    calibration papers. ``nll_lbfgs``: T minimising NLL by L-BFGS on log T (Guo et al., 2017).
    """
    logits = logits.detach().double().cpu()
    target = target.cpu()
    if method == "ece_grid":
        grid = np.round(np.arange(1, 101) * 0.1, 1)
        eces = []
        for t in grid:
            eces.append(calibration_errors(*top_label(logits / t, target), n_bins)["ece"])
        return float(grid[int(np.argmin(eces))])  # the first (smallest) T of a tie
    if method == "nll_lbfgs":
        log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(logits / log_t.exp(), target)
            loss.backward()
            return loss

        opt.step(closure)
        # L-BFGS can stop short of the minimum on a flat NLL; polish log T with a bounded 1-D search around it.
        from scipy.optimize import minimize_scalar  # here, as sklearn in _auroc

        start = float(log_t.item())
        with torch.no_grad():
            res = minimize_scalar(lambda v: F.cross_entropy(logits / math.exp(v), target).item(), method="bounded",
                                  bounds=(start - 1.0, start + 1.0), options={"xatol": 1e-8})
        return float(math.exp(res.x))
    raise ValueError(f"temperature scaling method must be one of {', '.join(TS_METHODS)}, got {method!r}")


# ---------------------------------------------------------------- out-of-distribution detection

def _fpr95(labels: np.ndarray, scores: np.ndarray) -> float:
    """The share of OOD samples scored at least as high as the threshold that keeps 95 % of in-distribution ones."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)  # every threshold: ties must not drop points
    return float(fpr[np.searchsorted(tpr, 0.95)])


# Scores of "in-distribution-ness" from the logits alone: higher means more in-distribution.
OOD_SCORES = {
    "msp": lambda s: F.softmax(s, dim=1).amax(dim=1),  # max softmax probability (Hendrycks and Gimpel, ICLR 2017)
    "energy": lambda s: torch.logsumexp(s, dim=1),  # negative free energy at T = 1 (Liu et al., NeurIPS 2020)
    "max_logit": lambda s: s.amax(dim=1),  # maximum logit (Hendrycks et al., ICML 2022)
}


def ood_metrics(in_logits: torch.Tensor, out_logits: torch.Tensor) -> dict[str, float]:
    """For each score of OOD_SCORES, ``ood_auroc_<score>`` (in-distribution = positive) and ``ood_fpr95_<score>``;
    the MSP ones also as ``ood_auroc`` and ``ood_fpr95``, their names before the other scores existed."""
    out: dict[str, float] = {}
    for name, score in OOD_SCORES.items():
        out |= ood_pair(name, score(in_logits.double()).numpy(), score(out_logits.double()).numpy())
    return {"ood_auroc": out["ood_auroc_msp"], "ood_fpr95": out["ood_fpr95_msp"]} | out


def ood_pair(name: str, in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, float]:
    """``ood_auroc_<name>`` and ``ood_fpr95_<name>`` of one score (higher = in-distribution)."""
    labels = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    values = np.r_[np.asarray(in_scores, dtype=float), np.asarray(out_scores, dtype=float)]
    return {f"ood_auroc_{name}": _auroc(labels, values), f"ood_fpr95_{name}": _fpr95(labels, values)}


# ---------------------------------------------------------------- a run's final metrics

def final_metrics(saved: Mapping[str, torch.Tensor], ts_method: str = "ece_grid", n_bins: int = 15) -> dict[str, Any]:
    """``test_*`` and ``val_*`` metrics, the fitted ``temperature`` and the test metrics after scaling,
    and ``ood_*`` when the saved logits include an OOD test set. A run without a test pass (``skip_test``, a
    tuning trial's) has the ``val_*`` metrics and the temperature only."""
    if "test_logits" not in saved:
        val = classification_metrics(saved["val_logits"], saved["val_target"], n_bins)
        return {f"val_{k}": v for k, v in val.items()} | {
            "temperature": fit_temperature(saved["val_logits"], saved["val_target"], ts_method, n_bins)}
    test = classification_metrics(saved["test_logits"], saved["test_target"], n_bins)
    val = classification_metrics(saved["val_logits"], saved["val_target"], n_bins)
    t = fit_temperature(saved["val_logits"], saved["val_target"], ts_method, n_bins)
    scaled = classification_metrics(saved["test_logits"].double() / t, saved["test_target"], n_bins)
    out = {f"test_{k}": v for k, v in test.items()} | {f"val_{k}": v for k, v in val.items()}
    out |= {"temperature": t, "test_ece_ts": scaled["ece"], "test_nll_ts": scaled["nll"],
            "test_ada_ece_ts": scaled["ada_ece"]}
    if "ood_logits" in saved:
        out |= ood_metrics(saved["test_logits"], saved["ood_logits"])
    for key in sorted(saved):  # feature-based scores (Mahalanobis, ViM), computed when the run ended
        if key.startswith("test_score_") and f"ood_score_{key[11:]}" in saved:
            out |= ood_pair(key[11:], saved[key].double().numpy(), saved[f"ood_score_{key[11:]}"].double().numpy())
    return out


def main(argv: list[str] | None = None) -> int:

    parser = argparse.ArgumentParser(prog="python -m runner.metrics",
                                     description="Recompute every metric of finished runs from their saved logits.")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (results/runs/<run_id>)")
    parser.add_argument("--write", action="store_true",
                        help="store the recomputed metrics in each run's result.json and rebuild the tables")
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)
    for folder in args.runs:
        record, saved = rundir.read_result(folder), rundir.read_logits(folder)
        if record is None or saved is None:
            console.print(f"error: {folder}: not a finished run folder (needs result.json and logits.pt)", style="red")
            return 2
        cfg = record["config"]
        metrics = final_metrics(saved, cfg.get("ts_method", "ece_grid"))
        table = Table(title=f"{record['run_id']} ({' '.join(f'{k}={v}' for k, v in record['choices'].items())})")
        table.add_column("metric")
        table.add_column("recomputed", justify="right")
        table.add_column("recorded", justify="right")
        for k, v in metrics.items():
            old = record.get("metrics", {}).get(k)
            table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v),
                          "" if old is None else f"{old:.6g}" if isinstance(old, float) else str(old))
        console.print(table)
        if args.write:
            from runner import records  # here: the tables need pandas, which a plan's metric checks do not

            rundir.write_json(folder / "result.json", record | {"metrics": record.get("metrics", {}) | metrics})
            records.rebuild_tables(folder.parent.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
