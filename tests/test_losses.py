"""The loss library: METHODS.md §5–8's values worked out by hand, invariances, and numerical safety."""
from __future__ import annotations

import math

import numpy as np

import pytest
import torch
import torch.nn.functional as F

from runner.losses import (AdaptiveFocalLoss, CrossEntropy, CrossEntropyZReg, DiceMetricLoss, DualFocalLoss, FocalLoss,
                           KnowledgeDistillation, NormalizedKnowledgeDistillation, PlackettLuceDistillation,
                           SelfAdjustingDiceLoss, SparsemaxLoss, TransformedTeacherMatching, UniversalSelfDistillation,
                           WeightedTransformedTeacherMatching, ZLoss)
from runner.losses.dice import tversky_loss

PLAIN = {"ce": CrossEntropy(), "zloss": ZLoss(), "ce_zreg": CrossEntropyZReg(), "focal": FocalLoss(),
         "focal_adaptive": AdaptiveFocalLoss(), "dual_focal": DualFocalLoss(), "dice": DiceMetricLoss(smooth=0.0),
         "jaccard": DiceMetricLoss(alpha=1.0, beta=1.0, smooth=0.0), "dice_sa": SelfAdjustingDiceLoss(),
         "sparsemax": SparsemaxLoss()}
DISTILL = {
    "kd": KnowledgeDistillation(),
    "pld": PlackettLuceDistillation(),
    "pld_cifar": PlackettLuceDistillation(temperature=4.0),
    "ttm": TransformedTeacherMatching(),
    "wttm": WeightedTransformedTeacherMatching(),
    "nkd": NormalizedKnowledgeDistillation(),
}
SELF = {"uskd": UniversalSelfDistillation}  # sized by the model and the classes: SELF[name](channels, num_classes)


def call(name, s, y, t=None):
    """Loss ``name`` of logits ``s``: a distillation loss gets teacher logits ``t``, a self-distillation loss
    (sized for ``s``, seeded) a mid-level feature map of ones."""
    if name in SELF:
        torch.manual_seed(0)
        return SELF[name](3, s.shape[1])(s, y, mid_features=torch.ones(len(s), 3, 2, 2, dtype=s.dtype))
    return {**PLAIN, **DISTILL}[name](s, y, **({"teacher_logits": t} if name in DISTILL else {}))


def one(logits, target, loss, teacher=None):
    s = torch.tensor([logits], dtype=torch.float64)
    y = torch.tensor([target])
    kw = {} if teacher is None else {"teacher_logits": torch.tensor([teacher], dtype=torch.float64)}
    return loss(s, y, **kw).item()


# ------------------------------------------------------------------ Z-loss and ce_zreg (§5)

@pytest.mark.parametrize("logits,target,a,b,expected", [
    ([1, 0, 0, 0], 0, 1, 0, 0.162902),  # z_y = √3
    ([1, 0, 0, 0], 0, 1, math.sqrt(3), math.log(2)),
    ([1, 0, 0, 0], 1, 1, 0, 1.022923),  # z_y = −1/√3
    ([12, 7, 7, 7], 0, 1, 0, 0.162902),  # 5·[1, 0, 0, 0] + 7: shift and scale invariance
    ([2, 1, 0], 0, 1, 0, 0.257609),
    ([2, 1, 0], 2, 1, 0, 1.482354),
    ([3, 1, 0, -4], 0, 0.1, 10, 12.286238),
    ([3, 1, 0, -4], 0, 10, 1, 0.015773),
])
def test_zloss_values_by_hand(logits, target, a, b, expected):
    assert one(logits, target, ZLoss(a=a, b=b, eps=1e-12)) == pytest.approx(expected, abs=1e-6)  # the authors' eps
    assert one(logits, target, ZLoss(a=a, b=b)) == pytest.approx(expected, rel=1e-4)  # the runner's bounded eps


def test_zloss_gradient_at_equal_logits_is_finite_and_bounded():
    # A zero-initialized classifier (norm=fixup) gives exactly equal logits: z = 0 for every class, and
    # dz_y/ds_k = (δ_yk − 1/K)/sqrt(var + eps²) = (δ_yk − 1/K)/eps; dL/dz_y = −σ(−a·b)·… = −½ for a = 1, b = 0;
    # so |dL/ds_y| = ½·(1 − 1/K)/(eps·N) for the batch mean.
    n, k = 128, 10
    s = torch.zeros(n, k, requires_grad=True)
    ZLoss()(s, torch.arange(n) % k).backward()
    assert torch.isfinite(s.grad).all()
    assert s.grad.abs().max().item() == pytest.approx(0.5 * (1 - 1 / k) / (1e-3 * n), rel=1e-5)


def test_zloss_is_shift_and_positive_scale_invariant_and_safe_for_equal_logits():
    torch.manual_seed(0)
    s, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    loss = ZLoss(a=2.0, b=1.0)
    assert loss(3.5 * s - 12, y).item() == pytest.approx(loss(s, y).item(), abs=1e-5)
    assert loss(torch.zeros(2, 5), torch.tensor([0, 3])).item() == pytest.approx(
        F.softplus(torch.tensor(2.0)).item() / 2
    )


def test_ce_zreg_is_cross_entropy_plus_the_log_z_penalty():
    assert one([0, 0, 0, 0], 0, CrossEntropyZReg()) == pytest.approx(math.log(4) + 1e-4 * math.log(4) ** 2)
    penalty = one([2, 1, 0], 0, CrossEntropyZReg()) - one([2, 1, 0], 0, CrossEntropy())
    assert penalty == pytest.approx(5.796566e-4, abs=1e-9)


# ------------------------------------------------------------------ focal family (§6)

P = [0.5, 0.3, 0.2]
LOG_P = [math.log(p) for p in P]


@pytest.mark.parametrize("target,gamma,dfl,fl", [
    (0, 0, 0.693147, 0.693147), (0, 2, 0.443614, 0.173287), (1, 2, 0.975218, 0.589947), (2, 2, 1.030040, 1.030040),
])
def test_dual_focal_and_focal_values_by_hand(target, gamma, dfl, fl):
    assert one(LOG_P, target, DualFocalLoss(gamma=gamma)) == pytest.approx(dfl, abs=1e-6)
    assert one(LOG_P, target, FocalLoss(gamma=gamma)) == pytest.approx(fl, abs=1e-6)


def test_dual_focal_uses_the_probability_just_below_the_target_not_the_largest_other():
    # y = 1 (p_y = 0.3): p_j = 0.2 gives 0.975218; the largest non-target (0.5) would give 1.733721
    assert one(LOG_P, 1, DualFocalLoss(gamma=2)) == pytest.approx(0.975218, abs=1e-6)
    assert one(LOG_P, 1, DualFocalLoss(gamma=2)) != pytest.approx(1.733721, abs=1e-3)
    assert one([0.0, 0.0], 0, DualFocalLoss(gamma=2)) == pytest.approx(0.25 * math.log(2))  # a tie is not below
    batch = DualFocalLoss(gamma=2)(torch.tensor([LOG_P] * 3), torch.tensor([0, 1, 2])).item()
    assert batch == pytest.approx(2.448872 / 3, abs=1e-6)  # the reference sums (2.448872); the runner averages


def test_adaptive_focal_picks_gamma_5_below_0_2_and_3_above():
    for p_y, gamma in ((0.1, 5), (0.3, 3), (0.7, 3)):
        logits = [math.log(p_y), math.log(1 - p_y)]
        assert one(logits, 0, AdaptiveFocalLoss()) == pytest.approx(-(1 - p_y) ** gamma * math.log(p_y))


# ------------------------------------------------------------------ PLD, KD, TTM (§7)

T = [2.0, 1.0, 0.0]  # q = softmax(T) = [0.665241, 0.244728, 0.090031]


@pytest.mark.parametrize("s,target,tau,expected", [
    ([0, 0, 0], 0, 1, 0.900475), ([0, 0, 0], 2, 1, 0.560019), ([3, 1, 0], 0, 1, 0.189653), ([0, 0, 0], 0, 4, 0.686880),
])
def test_pld_values_by_hand(s, target, tau, expected):
    assert one(s, target, PlackettLuceDistillation(temperature=tau), teacher=T) == pytest.approx(expected, abs=1e-6)


def test_pld_is_translation_invariant_and_with_one_hot_weights_is_cross_entropy():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 7, dtype=torch.float64), torch.randn(6, 7, dtype=torch.float64), torch.randint(0, 7, (6,))
    pld = PlackettLuceDistillation()
    assert pld(s + 5.0, y, teacher_logits=t).item() == pytest.approx(pld(s, y, teacher_logits=t).item())
    # a teacher certain of the true class: α = one-hot(y), the loss is CE
    certain = F.one_hot(y, 7).double() * 1e4
    assert pld(s, y, teacher_logits=certain).item() == pytest.approx(F.cross_entropy(s, y).item())


def test_kd_and_ttm_by_hand():
    kl1 = sum(q * math.log(q / (1 / 3)) for q in torch.tensor(T).softmax(0).tolist())
    assert kl1 == pytest.approx(0.266217, abs=1e-6)
    assert one([0, 0, 0], 0, KnowledgeDistillation(temperature=1.0, ce_weight=0.0, kd_weight=1.0), T) == pytest.approx(
        kl1
    )
    assert one([0, 0, 0], 0, KnowledgeDistillation(temperature=4.0, ce_weight=0.0, kd_weight=1.0), T) == pytest.approx(
        0.328202, abs=1e-6)
    kd = one([0, 0, 0], 0, KnowledgeDistillation(), T)  # 0.1·CE + 0.9·τ²·KL at τ = 4
    assert kd == pytest.approx(0.1 * math.log(3) + 0.9 * 0.328202, abs=1e-6)
    # TTM at T = 1, β = 1: CE + KD's KL at τ = 1 without the τ² factor
    assert one([0, 0, 0], 0, TransformedTeacherMatching(temperature=1.0, beta=1.0), T) == pytest.approx(
        math.log(3) + kl1
    )


def test_wttm_and_nkd_by_hand():
    # teacher t = [2, 1, 0]: p_t = [0.665241, 0.244728, 0.090031]; student s = [0, 0, 0], y = 0
    # WTTM at T = 2: p_t^½ = [0.815623, 0.494700, 0.300052], w = 1.610374; their normalization is softmax(t/2) =
    # [0.506480, 0.307196, 0.186324], KL to uniform 0.078421; CE ln 3 + w·KL = 1.098612 + 0.126287
    assert one([0, 0, 0], 0, WeightedTransformedTeacherMatching(temperature=2.0, beta=1.0), T) == pytest.approx(
        1.224899, abs=1e-6)
    # at T = 1 the weight Σ p_t = 1: WTTM is TTM
    assert one([0, 0, 0], 0, WeightedTransformedTeacherMatching(temperature=1.0, beta=1.0), T) == pytest.approx(
        one([0, 0, 0], 0, TransformedTeacherMatching(temperature=1.0, beta=1.0), T))
    # NKD at T = 1, γ = 1.5: target term −p_t,y·ln(1/3) = 0.730842; non-target: teacher softmax([1, 0]) against the
    # student's [½, ½]: −1.5·ln ½ = 1.039721; plus CE ln 3
    assert one([0, 0, 0], 0, NormalizedKnowledgeDistillation(), T) == pytest.approx(
        math.log(3) + 0.730842 + 1.039721, abs=1e-6)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def _authors_forms(s: np.ndarray, t: np.ndarray, y: np.ndarray, tau: float, weight: float) -> tuple[float, float]:
    """The NKD and WTTM terms as the authors' code computes them (cls_KD nkd.py: a mask removes the target column;
    TTM repo wttm.py: the teacher's softmax raised to 1/T and renormalized), in numpy, without the CE term."""
    n, k = s.shape
    rows = np.arange(n)
    t_y = np.exp(log_softmax(t))[rows, y]
    target_term = -(t_y * log_softmax(s)[rows, y]).mean()
    mask = np.ones_like(s, dtype=bool)
    mask[rows, y] = False
    s_nt, t_nt = s[mask].reshape(n, k - 1), t[mask].reshape(n, k - 1)
    nkd = target_term - weight * tau**2 * (np.exp(log_softmax(t_nt / tau)) * log_softmax(s_nt / tau)).sum(1).mean()
    p_t = np.exp(log_softmax(t)) ** (1 / tau)
    norm = p_t.sum(1)
    p_t = p_t / norm[:, None]
    kl = (p_t * (np.log(p_t) - log_softmax(s))).sum(1)
    return nkd, (norm * kl).mean()


def test_nkd_and_wttm_match_the_authors_forms_on_random_inputs():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(16, 10)) * 3, rng.normal(size=(16, 10)) * 3
    y = rng.integers(0, 10, 16)
    for tau in (1.0, 4.0):
        nkd_ref, wttm_ref = _authors_forms(s, t, y, tau, 1.5)
        ce = F.cross_entropy(torch.tensor(s), torch.tensor(y)).item()
        args = (torch.tensor(s), torch.tensor(y))
        nkd = NormalizedKnowledgeDistillation(temperature=tau, gamma=1.5)(*args, teacher_logits=torch.tensor(t)).item()
        wttm = WeightedTransformedTeacherMatching(temperature=tau, beta=1.0)(
            *args, teacher_logits=torch.tensor(t)
        ).item()
        assert nkd - ce == pytest.approx(nkd_ref, abs=1e-6)
        assert wttm - ce == pytest.approx(wttm_ref, abs=1e-6)


# ------------------------------------------------------------------ USKD (self-distillation, no teacher)

def uskd_one(p, weak_p, alpha, beta, mu, rank_by="code", target=0):
    """USKD of one sample with final probabilities ``p``, its weak head giving probabilities ``weak_p`` (zero
    weights, bias log weak_p: the feature does not matter)."""
    loss = UniversalSelfDistillation(1, len(p), alpha=alpha, beta=beta, mu=mu, rank_by=rank_by).double()
    with torch.no_grad():
        loss.weak.weight.zero_()
        loss.weak.bias.copy_(torch.tensor(weak_p, dtype=torch.float64).log())
    return loss(torch.tensor([p], dtype=torch.float64).log(), torch.tensor([target]),
                mid_features=torch.zeros(1, 1, dtype=torch.float64)).item()


def test_uskd_by_hand():
    # p = [0.5, 0.3, 0.2], y = 0, a uniform weak head. One sample: the soft target s_y² + 1 − mean s_y² is 1, so
    # L_target = −ln 0.5. Ranked by p (the weak term is the same for every class): Zipf 1, 1/2, 1/3; the
    # non-target 1/2, 1/3 renormalize to 0.6, 0.4 against the non-target softmax 0.3/0.5, 0.2/0.5:
    # L_non = −(0.6 ln 0.6 + 0.4 ln 0.4) = 0.673012. L_weak = μ·ln 3 (any smoothed label against 1/3 each).
    uniform = [1 / 3] * 3
    assert uskd_one(P, uniform, 0.0, 1.0, 0.0) - math.log(2) == pytest.approx(0.673012, abs=1e-6)
    assert uskd_one(P, uniform, 1.0, 0.0, 0.0) == pytest.approx(2 * math.log(2), abs=1e-9)
    assert uskd_one(P, uniform, 0.0, 0.0, 1.0) - math.log(2) == pytest.approx(math.log(3), abs=1e-9)
    # all together: ln 2 + 0.5·ln 2 + 0.25·0.673012 + 0.1·ln 3
    assert uskd_one(P, uniform, 0.5, 0.25, 0.1) == pytest.approx(1.317835, abs=1e-6)
    # the target ranks among the classes: p = [0.3, 0.5, 0.2] puts it second, so the non-target labels are
    # 1 and 1/3 (not 1 and 1/2): 0.75, 0.25 against 0.5/0.7, 0.2/0.7 -> 0.565545
    assert uskd_one([0.3, 0.5, 0.2], uniform, 0.0, 1.0, 0.0) + math.log(0.3) == pytest.approx(0.565545, abs=1e-6)


def test_uskd_ranks_by_the_final_log_probabilities_or_by_both_heads_probabilities():
    # weak head [0.5, 0.195, 0.305], so v_k/(1 − v_y) = [1, 0.39, 0.61]. rank_by=code adds ln p_k/(1 − ln 0.5):
    # [0.5906, −0.3211, −0.3406], order 0, 1, 2 as before: L_non = 0.673012. rank_by=probs adds p_k/0.5 = [1, 0.6, 0.4]:
    # [2, 0.99, 1.01], order 0, 2, 1: labels 1/3, 1/2 -> 0.4, 0.6 and L_non = −(0.4 ln 0.6 + 0.6 ln 0.4) = 0.754105
    weak = [0.5, 0.195, 0.305]
    assert uskd_one(P, weak, 0.0, 1.0, 0.0, "code") - math.log(2) == pytest.approx(0.673012, abs=1e-6)
    assert uskd_one(P, weak, 0.0, 1.0, 0.0, "probs") - math.log(2) == pytest.approx(0.754105, abs=1e-6)


def test_uskd_soft_target_is_shifted_to_a_batch_mean_of_one_and_carries_no_gradient():
    # two samples with s_y = 0.5 and 0.8: s_y² = 0.25, 0.64, mean 0.445, soft targets 0.805 and 1.195;
    # L_target = (0.805·ln 2 − 1.195·ln 0.8)/2 = 0.412320, and its gradient is soft_n·(s_n − e_y)/2
    s = torch.tensor([[0.5, 0.5], [0.8, 0.2]], dtype=torch.float64).log().requires_grad_()
    y = torch.tensor([0, 0])
    mid = torch.zeros(2, 1, dtype=torch.float64)
    with_t, without = (UniversalSelfDistillation(1, 2, alpha=a, beta=0.0, mu=0.0).double() for a in (1.0, 0.0))
    term = with_t(s, y, mid_features=mid) - without(s, y, mid_features=mid)
    assert term.item() == pytest.approx(0.412320, abs=1e-6)
    (grad,) = torch.autograd.grad(term, s)
    expected = (
        torch.tensor([[0.805 * (0.5 - 1), 0.805 * 0.5], [1.195 * (0.8 - 1), 1.195 * 0.2]], dtype=torch.float64) / 2
    )
    assert torch.allclose(grad, expected, atol=1e-9)


def _uskd_authors_form(s, mid, w, b, y, alpha, beta, mu):
    """The USKD term of the authors' uskd.py (hard labels), transcribed to numpy: the final head enters the rank as
    log-probabilities; the Zipf labels follow the rank of every class, the target's too."""
    n, k = s.shape
    rows = np.arange(n)
    sp = np.exp(log_softmax(s))
    p_t = sp[rows, y] ** 2
    p_t = p_t + 1 - p_t.mean()
    ls = log_softmax(s)
    loss_t = -(p_t * ls[rows, y]).mean()
    target = np.full((n, k), 0.1 / k)
    target[rows, y] += 0.9
    wl = mid @ w.T + b
    loss_weak = -(mu * target * log_softmax(wl)).sum(1).mean()
    wp = np.exp(log_softmax(wl))
    rank = wp / (1 - wp[rows, y][:, None] + 1e-6) + ls / (1 - ls[rows, y][:, None] + 1e-6)
    order = np.argsort(-rank, axis=1, kind="stable")
    z = (1 / np.arange(1, k + 1))[np.argsort(order, axis=1)]
    mask = np.ones((n, k), bool)
    mask[rows, y] = False
    nz = z[mask].reshape(n, k - 1)
    nz = nz / nz.sum(1, keepdims=True)
    loss_non = -(nz * log_softmax(s[mask].reshape(n, k - 1))).sum(1).mean()
    return alpha * loss_t + beta * loss_non + loss_weak


def test_uskd_matches_the_authors_form_on_random_inputs():
    rng = np.random.default_rng(1)
    s, mid = rng.normal(size=(16, 10)) * 3, rng.normal(size=(16, 6, 2, 2))
    y = rng.integers(0, 10, 16)
    for alpha, beta, mu in ((1.0, 0.1, 0.005), (0.1, 0.1, 0.1)):  # the authors' ImageNet and CIFAR-100 settings
        loss = UniversalSelfDistillation(6, 10, alpha=alpha, beta=beta, mu=mu).double()
        w, b = loss.weak.weight.detach().numpy(), loss.weak.bias.detach().numpy()
        ref = _uskd_authors_form(s, mid.mean((2, 3)), w, b, y, alpha, beta, mu)
        ours = loss(torch.tensor(s), torch.tensor(y), mid_features=torch.tensor(mid)).item()
        assert ours - F.cross_entropy(torch.tensor(s), torch.tensor(y)).item() == pytest.approx(ref, abs=1e-6)


def test_uskd_trains_its_weak_head_and_the_features_under_it():
    loss = UniversalSelfDistillation(4, 5)
    mid = torch.randn(3, 4, 2, 2, requires_grad=True)
    loss(torch.randn(3, 5), torch.tensor([0, 1, 4]), mid_features=mid).backward()
    assert loss.weak.weight.grad.abs().sum() > 0 and mid.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mid_features"):
        loss(torch.zeros(1, 5), torch.tensor([0]))
    for bad in ({"alpha": -1.0}, {"mu": -0.1}, {"rank_by": "paper"}):
        with pytest.raises(ValueError):
            UniversalSelfDistillation(4, 5, **bad)


def test_distillation_without_teacher_logits_is_an_error():
    for loss in DISTILL.values():
        assert loss.needs_teacher
        with pytest.raises(ValueError, match="teacher_logits"):
            loss(torch.zeros(1, 3), torch.tensor([0]))
    assert not any(loss.needs_teacher for loss in PLAIN.values())


# ------------------------------------------------------------------ dice family (§8)

PROBS = torch.tensor([[0.8, 0.2], [0.4, 0.6]], dtype=torch.float64)
LABELS = F.one_hot(torch.tensor([0, 1]), 2).double()


def test_dice_and_jaccard_metric_losses_by_hand():
    # class 0: ‖p‖ = 1.2, ‖y‖ = 1, ‖p − y‖ = 0.6 -> tp 0.8, fp 0.4, fn 0.2; class 1: tp 0.6, fp 0.2, fn 0.4
    dice = [(0.8 + 1e-3) / (0.8 + 0.3 + 1e-3), (0.6 + 1e-3) / (0.6 + 0.3 + 1e-3)]
    assert dice == pytest.approx([0.727520, 0.667037], abs=1e-6)
    assert (
        tversky_loss(PROBS, LABELS, 0.5, 0.5).item()
        == pytest.approx(1 - sum(dice) / 2)
        == pytest.approx(0.302721, abs=1e-6)
    )
    assert tversky_loss(PROBS, LABELS, 1.0, 1.0).item() == pytest.approx(0.463925, abs=1e-6)
    assert tversky_loss(PROBS, LABELS, 0.5, 0.5, smooth=0.0).item() == pytest.approx(1 - (0.8 / 1.1 + 0.6 / 0.9) / 2)
    assert DiceMetricLoss()(PROBS.log(), torch.tensor([0, 1])).item() == pytest.approx(0.302721, abs=1e-6)


def test_dice_metric_loss_is_zero_exactly_when_the_soft_label_equals_the_prediction():
    assert tversky_loss(PROBS, PROBS, 0.5, 0.5).item() == 0.0 and tversky_loss(PROBS, PROBS, 1.0, 1.0).item() == 0.0
    classic = 1 - (2 * (PROBS * PROBS).sum(0) / (2 * PROBS.sum(0))).mean()  # per class: 2Σpq / (Σp + Σq)
    assert classic.item() == pytest.approx(1 - (1.6 / 2.4 + 0.8 / 1.6) / 2) == pytest.approx(0.416667, abs=1e-6)


def test_classes_absent_from_the_batch_are_left_out():
    probs = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
    only = tversky_loss(probs[:, :1], torch.ones(1, 1, dtype=torch.float64), 0.5, 0.5)
    assert tversky_loss(probs, F.one_hot(torch.tensor([0]), 3).double(), 0.5, 0.5).item() == pytest.approx(only.item())


def test_self_adjusting_dice_is_the_authors_square_form():
    # METHODS.md §8a: α = 0.01, smooth = 1, probs [[0.8, 0.2], [0.4, 0.6]], y = [0, 1] -> 0.131078
    assert SelfAdjustingDiceLoss()(PROBS.log(), torch.tensor([0, 1])).item() == pytest.approx(0.131078, abs=1e-6)


def test_self_adjusting_dice_against_the_authors_loop_on_random_inputs():
    """Their DiceLoss(square_denominator=True, alpha, smooth): softmax, per class c the column (N,1),
    p̃ = (1 − p)^α·p, 1 − (2·p̃·y + s)/(p̃² + y² + s), summed over classes, mean over N."""
    torch.manual_seed(0)
    logits, target = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 5, (16,))
    probs, onehot = logits.softmax(1), F.one_hot(target, 5).double()
    loss = 0
    for c in range(5):
        p, y = probs[:, c:c + 1], onehot[:, c:c + 1]
        q = (1 - p) ** 0.01 * p
        loss = loss + (1 - (2 * q * y + 1.0) / (q * q + y * y + 1.0))
    assert SelfAdjustingDiceLoss()(logits, target).item() == pytest.approx(loss.mean().item(), abs=1e-9)


def test_self_adjusting_dice_raises_a_confident_correct_prediction():
    # the per-sample α = 1 form would lower the true logit at p_y = 0.9 (its (1 − p)p peaks at ½); this one raises it
    s = torch.tensor([[math.log(0.9), math.log(0.1)]], requires_grad=True)
    SelfAdjustingDiceLoss()(s, torch.tensor([0])).backward()
    assert s.grad[0, 0] < 0


def test_ce_weight_mixes_cross_entropy_in():
    s, y = PROBS.log(), torch.tensor([0, 1])
    mixed = DiceMetricLoss(ce_weight=0.25)(s, y).item()
    assert mixed == pytest.approx(0.25 * F.cross_entropy(s, y).item() + 0.75 * 0.302721, abs=1e-6)


# ------------------------------------------------------------------ every loss: safety and contract

@pytest.mark.parametrize("name", [*PLAIN, *DISTILL, *SELF])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_loss_and_gradient_for_extreme_and_half_precision_logits(name, dtype):
    s = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0], [1e4, 1e4, -1e4]]).to(dtype).requires_grad_()
    value = call(name, s, torch.tensor([0, 0, 2]), torch.tensor([[2.0, 1.0, 0.0]] * 3).to(dtype))
    value.backward()
    assert (
        value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(s.grad).all()
    )  # half: computed in float32


@pytest.mark.parametrize("name", [*PLAIN, *DISTILL, *SELF])
def test_equal_logits_give_a_finite_loss_and_gradient(name):
    # Z-loss's standardization is 0/0 here; with eps its gradient is of order 1/eps = 1e12: finite in
    # float32, beyond float16's range (65504), so this case is checked in float32.
    s = torch.full((2, 4), 3.0, requires_grad=True)
    value = call(name, s, torch.tensor([0, 3]), torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 2))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("name", [*PLAIN, *DISTILL, *SELF])
def test_every_loss_is_a_batch_mean(name):
    torch.manual_seed(0)
    s, y, t = torch.randn(4, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 3]), torch.randn(4, 5, dtype=torch.float64)
    if name in ("dice", "jaccard", "uskd"):  # batch-level by definition (USKD: its soft target's batch mean of s_y²):
        # the same batch twice gives the same loss
        assert call(name, s.repeat(2, 1), y.repeat(2), t.repeat(2, 1)).item() == pytest.approx(
            call(name, s, y, t).item()
        )
        return
    each = [call(name, s[i:i + 1], y[i:i + 1], t[i:i + 1]).item() for i in range(4)]
    assert call(name, s, y, t).item() == pytest.approx(sum(each) / 4)


# ------------------------------------------------------------------ LogitClip (a wrapper around any loss)

def test_logit_clip_by_hand():
    from runner.losses.clip import LogitClip, clip_logits

    s = torch.tensor([[3.0, 4.0], [0.3, 0.4]])  # L2 norms 5 and 0.5
    assert clip_logits(s, 1.0).flatten().tolist() == pytest.approx([0.6, 0.8, 0.3, 0.4])  # only the first is clipped
    loss = LogitClip(CrossEntropy(), 1.0)(s[:1], torch.tensor([0]))
    assert loss.item() == pytest.approx(math.log1p(math.exp(0.2)), abs=1e-6)  # CE of [0.6, 0.8], target 0
    kd = LogitClip(KnowledgeDistillation(), 1.0)
    assert kd.needs_teacher and torch.isfinite(kd(s, torch.tensor([0, 1]), teacher_logits=s))


def test_logit_clip_is_a_setting_of_every_loss_and_off_keeps_the_run_id():
    from runner.plan import make_plan

    assert make_plan(["loss.logit_clip=null"]).run_id == make_plan([]).run_id
    assert make_plan(["loss=focal", "loss.logit_clip=2"]).cfg.loss.logit_clip == 2.0



# ------------------------------------------------------------------ sparsemax (Martins and Astudillo 2016)

def test_sparsemax_and_its_loss_by_hand():
    from runner.losses.sparsemax import sparsemax

    # z = [1, 0.5, 0]: k = 2 (1 + 2·0.5 > 1.5, 1 + 3·0 < 1.5), τ = (1.5 − 1)/2 = 0.25 -> p = [0.75, 0.25, 0]
    z = torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64, requires_grad=True)
    assert sparsemax(z).tolist()[0] == pytest.approx([0.75, 0.25, 0.0])
    loss = SparsemaxLoss()(z, torch.tensor([0]))
    # −1 + ½((1 − 0.0625) + (0.25 − 0.0625)) + ½ = 0.0625 = ½‖e_y − z‖² − ½‖p − z‖²
    assert loss.item() == pytest.approx(0.0625)
    loss.backward()
    assert z.grad.tolist()[0] == pytest.approx([0.75 - 1, 0.25, 0.0])  # sparsemax(z) − e_y


def test_sparsemax_is_the_projection_onto_the_simplex():
    from scipy.optimize import minimize

    from runner.losses.sparsemax import sparsemax

    torch.manual_seed(0)
    z = torch.randn(5, 6, dtype=torch.float64)
    p = sparsemax(z)
    assert torch.allclose(p.sum(1), torch.ones(5, dtype=torch.float64)) and (p >= 0).all()
    for row, proj in zip(z.numpy(), p.numpy()):  # the nearest point of the simplex, by a generic solver
        res = minimize(lambda q: ((q - row) ** 2).sum(), np.full(6, 1 / 6), method="SLSQP", bounds=[(0, 1)] * 6,
                       constraints=[{"type": "eq", "fun": lambda q: q.sum() - 1}], options={"ftol": 1e-12})
        assert proj == pytest.approx(res.x, abs=1e-5)
