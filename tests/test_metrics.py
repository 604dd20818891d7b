"""Per-run metrics: METHODS.md §10's worked examples by hand, the binning conventions, and
cross-checks against torchmetrics and scikit-learn where they compute the same thing."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from runner.metrics import (aurc, calibration_errors, classification_metrics, final_metrics, fit_temperature,
                            ood_metrics)

# The torchmetrics docstring example, re-derived by hand in METHODS.md §10
P = torch.tensor([[.25, .20, .55], [.55, .05, .40], [.10, .30, .60], [.90, .05, .05]], dtype=torch.float64)
Y = torch.tensor([0, 1, 2, 0])


def test_worked_example_by_hand():
    m = classification_metrics(P.log(), Y, n_bins=3)  # softmax(log p) = p
    # conf [.55, .55, .60, .90], correct [0, 0, 1, 1]; bin [1/3, 2/3): conf .566667, acc 1/3, mass .75;
    # bin (2/3, 1]: .9, 1, .25
    assert m["acc"] == 0.5
    assert m["ece"] == pytest.approx(0.75 * (0.566667 - 1 / 3) + 0.25 * 0.1, abs=1e-6) == pytest.approx(0.2, abs=1e-6)
    assert m["mce"] == pytest.approx(0.233333, abs=1e-6)
    assert m["rmsce"] == pytest.approx(math.sqrt(0.75 * (0.7 / 3) ** 2 + 0.25 * 0.1 ** 2), abs=1e-9)  # 0.208167
    assert m["nll"] == pytest.approx(-(math.log(.25) + math.log(.05) + math.log(.60) + math.log(.90)) / 4, abs=1e-9)
    brier = (
        (0.75**2 + 0.2**2 + 0.55**2)
        + (0.55**2 + 0.95**2 + 0.4**2)
        + (0.1**2 + 0.3**2 + 0.4**2)
        + (0.1**2 + 0.05**2 + 0.05**2)
    ) / 4
    assert m["brier"] == pytest.approx(brier, abs=1e-9) == pytest.approx(0.636250, abs=1e-6)  # summed over classes
    assert m["classwise_ece"] == pytest.approx((0.325 + 0.100 + 0.150) / 3, abs=1e-6)  # 0.191667
    # Both correct predictions are more confident than both wrong ones: MSP separates them perfectly.
    assert m["msp_auroc"] == 1.0
    # Risk–coverage, most confident first: errors [0, 0, 1, 1] -> risks 0, 0, 1/3, 1/2
    assert m["aurc"] == pytest.approx((0 + 0 + 1 / 3 + 1 / 2) / 4)


def test_adaptive_ece_keeps_the_samples_the_reference_drops():
    conf, hit = P.max(1).values.numpy(), (P.argmax(1) == Y).double().numpy()
    # Equal-mass edges [0.55, 0.60, 0.90]: the reference's first bin (0.55, 0.60] drops both samples
    # at 0.55 and gives 0.125; closing it gives [0.55, 0.60]: 0.75·|1/3 − 0.566667| + 0.25·0.1 = 0.2
    assert calibration_errors(conf, hit, n_bins=2)["ada_ece"] == pytest.approx(0.2, abs=1e-6)


def test_a_confidence_on_a_bin_edge_goes_to_the_lower_bin():
    # conf [0.5, 0.9], correct [0, 1], 2 bins: (0, 0.5] holds 0.5 -> ECE 0.5·0.5 + 0.5·0.1 = 0.30.
    # torchmetrics puts 0.5 in [0.5, 1) and gets 0.20: the convention this project does not follow.
    assert calibration_errors(np.array([0.5, 0.9]), np.array([0.0, 1.0]), 2)["ece"] == pytest.approx(0.30)


def test_confidence_one():
    errors = calibration_errors(np.array([1.0, 0.95]), np.array([1.0, 0.0]), 15)
    assert errors["ece"] == pytest.approx(0.475)  # both land in (14/15, 1]: |0.5 − 0.975|
    assert errors["mce"] == pytest.approx(0.475)  # torchmetrics: 0.95, from its extra bin for exactly 1.0


def test_top_label_calibration_matches_torchmetrics_away_from_bin_edges():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    torch.manual_seed(0)
    logits = torch.randn(500, 10) * 3
    target = torch.randint(0, 10, (500,))
    probs = logits.double().softmax(1)
    edges = torch.linspace(0, 1, 16, dtype=torch.float64)
    assert (probs.max(1).values.unsqueeze(1) - edges).abs().min() > 1e-9  # no confidence on an edge
    ours = classification_metrics(logits, target)
    for norm, key in (("l1", "ece"), ("l2", "rmsce"), ("max", "mce")):
        theirs = tm.multiclass_calibration_error(probs, target, num_classes=10, n_bins=15, norm=norm).item()
        assert ours[key] == pytest.approx(theirs, abs=1e-5), key


def test_msp_auroc_matches_scikit_learn_and_is_nan_without_errors():
    from sklearn.metrics import roc_auc_score

    torch.manual_seed(1)
    logits, target = torch.randn(300, 5), torch.randint(0, 5, (300,))
    probs = logits.double().softmax(1)
    correct = (probs.argmax(1) == target).numpy()
    assert classification_metrics(logits, target)["msp_auroc"] == pytest.approx(
        roc_auc_score(correct, probs.max(1).values)
    )
    assert math.isnan(classification_metrics(torch.eye(3) * 5, torch.arange(3))["msp_auroc"])


def test_aurc_of_a_perfect_ranking_and_of_a_reversed_one():
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    assert aurc(conf, np.array([1.0, 1.0, 0.0, 0.0])) == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4)
    assert aurc(conf, np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx((1 + 1 + 2 / 3 + 2 / 4) / 4)


def test_temperature_grid_recovers_a_known_temperature():
    # Labels drawn from softmax(z / 2): the logits z are over-confident by exactly T = 2.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 5, generator=g, dtype=torch.float64) * 4
    y = torch.multinomial((z / 2).softmax(1), 1, generator=g).squeeze(1)
    assert fit_temperature(z, y, "ece_grid") == pytest.approx(2.0, abs=0.2)
    assert fit_temperature(z, y, "nll_lbfgs") == pytest.approx(2.0, abs=0.1)
    t = fit_temperature(z, y, "ece_grid")
    assert round(t * 10) == pytest.approx(t * 10)  # a point of the 0.1 grid
    with pytest.raises(ValueError, match="ece_grid, nll_lbfgs"):
        fit_temperature(z, y, "platt")


def test_nll_lbfgs_reaches_the_nll_minimum():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(3000, 4, generator=g, dtype=torch.float64) * 3
    y = torch.multinomial((z / 1.7).softmax(1), 1, generator=g).squeeze(1)
    t = fit_temperature(z, y, "nll_lbfgs")
    nll = lambda temp: F.cross_entropy(z / temp, y).item()  # noqa: E731
    grid = np.linspace(t - 0.05, t + 0.05, 2001)  # a fine grid around it, by brute force
    assert t == pytest.approx(grid[int(np.argmin([nll(v) for v in grid]))], abs=1e-4)


def test_fpr95_with_tied_scores_counts_every_threshold():
    # in-distribution MSP [0.9 ×19, 0.6], OOD [0.6, 0.6, 0.5, 0.5]: keeping 95 % of the in-distribution images
    # (19 of 20) needs the threshold 0.9, which passes no OOD image: FPR95 = 0. With dropped intermediate
    # points roc_curve jumps from (tpr 0) to the 0.6 threshold, and read FPR95 = 0.5.
    def logits(msp):
        return torch.tensor([[math.log(m), math.log(1 - m)] for m in msp])

    m = ood_metrics(logits([0.9] * 19 + [0.6]), logits([0.6, 0.6, 0.5, 0.5]))
    assert m["ood_fpr95"] == 0.0


def test_aurc_with_ties_does_not_depend_on_the_input_order():
    # two samples tied at 0.8, one right and one wrong; a third at 0.5, right. Over both orders of the tie the
    # risks at coverage 1, 2, 3 average to ½, ½, ⅓: AURC = (½ + ½ + ⅓)/3 = 4/9.
    conf, hit = np.array([0.8, 0.8, 0.5]), np.array([1.0, 0.0, 1.0])
    assert aurc(conf, hit) == pytest.approx(4 / 9) == aurc(conf[[1, 0, 2]], hit[[1, 0, 2]])


def test_energy_and_max_logit_ood_scores_by_hand():
    # in: logits [3, 0] and [1, 1]; out: [2, 2] and [0, 0].
    # max logit: in 3, 1; out 2, 0 -> pairs ordered right: (3>2, 3>0, 1<2, 1>0) = 3/4; keeping 95 % of in needs the
    # threshold 1, which passes the OOD 2: FPR95 = 1/2.
    # energy (logsumexp): in 3.0486, 1.6931; out 2.6931, 0.6931 -> also 3/4 and 1/2.
    m = ood_metrics(torch.tensor([[3.0, 0.0], [1.0, 1.0]]), torch.tensor([[2.0, 2.0], [0.0, 0.0]]))
    assert m["ood_auroc_max_logit"] == pytest.approx(0.75) and m["ood_fpr95_max_logit"] == pytest.approx(0.5)
    assert m["ood_auroc_energy"] == pytest.approx(0.75) and m["ood_fpr95_energy"] == pytest.approx(0.5)
    # MSP: in 0.9526, 0.5; out 0.5, 0.5 -> (in 0.95 beats both, in 0.5 ties both: ½ each) = (2 + 1)/4
    assert m["ood_auroc_msp"] == m["ood_auroc"] == pytest.approx(0.75)


def test_ood_auroc_and_fpr95_by_hand():
    # MSP of in-distribution [0.9, 0.8, 0.7, 0.6] and OOD [0.65, 0.5]: the pairs (in, out) ordered right
    # are 3·2 + 1 (0.7 > 0.65, 0.6 < 0.65) = 7 of 8 -> AUROC 0.875. Keeping 95 % of the in-distribution
    # images needs a threshold at 0.6, which passes 0.65: FPR95 = 1/2.
    def logits(msp):  # two classes: MSP m = softmax([log m, log(1 − m)])
        return torch.tensor([[math.log(m), math.log(1 - m)] for m in msp])

    m = ood_metrics(logits([0.9, 0.8, 0.7, 0.6]), logits([0.65, 0.5]))
    assert m["ood_auroc"] == pytest.approx(0.875) and m["ood_fpr95"] == pytest.approx(0.5)


def test_final_metrics_record_the_temperature_and_the_scaled_test_metrics():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 4, generator=g, dtype=torch.float64) * 4
    y = torch.multinomial((z / 2).softmax(1), 1, generator=g).squeeze(1)
    saved = {"test_logits": z[:2000], "test_target": y[:2000], "val_logits": z[2000:], "val_target": y[2000:]}
    m = final_metrics(saved, "nll_lbfgs")
    scaled = classification_metrics(z[:2000] / m["temperature"], y[:2000])
    assert m["test_ece_ts"] == scaled["ece"] and m["test_nll_ts"] == scaled["nll"]
    assert m["test_ece_ts"] < m["test_ece"] and m["test_nll_ts"] < m["test_nll"]
    assert m["temperature"] == pytest.approx(2.0, abs=0.15) and "ood_auroc" not in m
