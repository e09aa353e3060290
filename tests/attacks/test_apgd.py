"""Auto-PGD against closed forms (linear models), hand-computed schedules and losses, and as
property tests (ball, box, unlabeled rows, modes, seeds)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nsl_lab.attacks import APGD, PGD
from nsl_lab.attacks.apgd import checkpoints, dlr_loss, logit_margin
from nsl_lab.errors import ConfigError
from toy_problems import accuracy, assert_in_ball, linear_model, margins, modes_under_attack, trained_mlp, two_class_problem, worst_case

# -- schedules and losses by hand -------------------------------------------------------------

def test_checkpoints_by_hand():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06):
    # p_2 = 0.22 + max(0.22 - 0.00 - 0.03, 0.06) = 0.22 + 0.19 = 0.41
    # p_3 = 0.41 + max(0.19 - 0.03, 0.06) = 0.57;  p_4 = 0.57 + max(0.16 - 0.03, 0.06) = 0.70
    # p_5 = 0.70 + max(0.13 - 0.03, 0.06) = 0.80;  p_6 = 0.80 + max(0.10 - 0.03, 0.06) = 0.87
    # p_7 = 0.87 + max(0.07 - 0.03, 0.06) = 0.93;  p_8 = 0.93 + 0.06 = 0.99;  p_9 = 1.05 > 1 stops.
    # w_j = ceil(100 p_j):
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    # ceil(10 p_j) = 3, 5, 6, 7, 8, 9, 10, 10: those < 10, once each.
    assert checkpoints(10) == [3, 5, 6, 7, 8, 9]
    assert checkpoints(1) == []


def test_logit_margin_and_dlr_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.5], [3.0, 1.0, 2.0, 0.5]])
    y = torch.tensor([0, 1])
    # Row 0: 3 - max(1, 2, 0.5) = 1; row 1: 1 - max(3, 2, 0.5) = -2.
    assert torch.allclose(logit_margin(logits, y), torch.tensor([1.0, -2.0]))
    # Sorted logits 3, 2, 1, 0.5: z_pi1 - z_pi3 = 3 - 1 = 2, so DLR = -margin / 2.
    assert torch.allclose(dlr_loss(logits, y), torch.tensor([-0.5, 1.0]))
    # Targeted, target 3 for row 0, 0 for row 1: denominator 3 - (1 + 0.5) / 2 = 2.25.
    # Row 0: -(3 - 0.5) / 2.25 = -10/9; row 1: -(1 - 3) / 2.25 = 8/9.
    target = torch.tensor([3, 0])
    assert torch.allclose(dlr_loss(logits, y, target), torch.tensor([-10 / 9, 8 / 9]))
    # Shift and scale invariant.
    assert torch.allclose(dlr_loss(5 * logits - 7, y), dlr_loss(logits, y))


# -- closed forms on a linear model -------------------------------------------------------------

def test_linf_optimum_of_a_linear_model():
    model, x, y, direction = two_class_problem()
    optimum, point = worst_case(x, y, direction, 0.1, "linf")
    assert (optimum > 0).all()  # all rows stay correct there
    result = APGD(0.1, "linf", steps=100, generator=torch.Generator().manual_seed(0)).perturb(model, x, y)
    assert not result.fooled.any()
    assert torch.allclose(margins(model, result.x_adv, y), optimum, atol=1e-4)
    assert torch.allclose(result.x_adv, point, atol=1e-6)


def test_l2_optimum_of_a_linear_model():
    model, x, y, direction = two_class_problem()
    optimum, point = worst_case(x, y, direction, 0.2, "l2")
    assert (optimum > 0).all()
    result = APGD(0.2, "l2", steps=100, generator=torch.Generator().manual_seed(0)).perturb(model, x, y)
    assert torch.allclose(margins(model, result.x_adv, y), optimum, atol=1e-4)
    assert torch.allclose(result.x_adv, point, atol=1e-4)


def test_rows_that_can_be_fooled_are_and_fooled_matches_the_model():
    model, x, y, direction = two_class_problem()
    eps = 0.3  # 0.3 * 8.3 = 2.49 > the margins 2.3, 1.6 and 2.1 of rows 0, 2, 4
    result = APGD(eps, "linf", steps=50, generator=torch.Generator().manual_seed(0)).perturb(model, x, y)
    assert torch.equal(result.fooled, worst_case(x, y, direction, eps, "linf")[0] < 0)
    with torch.no_grad():
        assert torch.equal(result.fooled, model(result.x_adv).argmax(dim=1) != y)


def test_rows_already_wrong_and_zero_eps_are_left_alone():
    model, x, y, _ = two_class_problem()
    wrong = y.clone()
    wrong[0] = 1 - y[0]
    result = APGD(0.1, generator=torch.Generator().manual_seed(0)).perturb(model, x, wrong)
    assert result.fooled[0] and torch.equal(result.x_adv[0], x[0])
    zero = APGD(0.0).perturb(model, x, y)
    assert torch.equal(zero.x_adv, x) and not zero.fooled.any()


# -- against PGD on a trained model -------------------------------------------------------------

def test_apgd_is_at_least_as_strong_as_pgd_on_a_trained_mlp():
    model, x, y = trained_mlp()
    for eps in (0.1, 0.2):
        pgd = accuracy(model, PGD(eps, "linf", steps=20, generator=torch.Generator().manual_seed(0))(model, x, y), y)
        apgd = APGD(eps, "linf", steps=100, generator=torch.Generator().manual_seed(0))
        robust = accuracy(model, apgd(model, x, y), y)
        assert robust <= pgd
        assert robust < accuracy(model, x, y)
    targeted = APGD(0.2, loss="dlr", targeted=True, n_target_classes=3, steps=30,
                    generator=torch.Generator().manual_seed(0))
    assert accuracy(model, targeted(model, x, y), y) < accuracy(model, x, y)
    assert all(p.grad is None for p in model.parameters())


# -- properties ---------------------------------------------------------------------------------

def flat_linear(shape, classes=4, seed=0):
    torch.manual_seed(seed)
    numel = 1
    for size in shape:
        numel *= size
    return nn.Sequential(nn.Flatten(), nn.Linear(numel, classes))


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 4), shape=st.sampled_from([(3,), (6,), (2, 3, 3), (1, 4, 5)]),
       eps=st.floats(0.0, 2.0), norm=st.sampled_from(["linf", "l2"]), clip=st.booleans(),
       loss=st.sampled_from(["ce", "dlr"]), targeted=st.booleans(), unlabeled=st.integers(0, 15),
       seed=st.integers(0, 2 ** 16))
def test_stays_in_ball_and_box_and_leaves_unlabeled_rows(rows, shape, eps, norm, clip, loss, targeted, unlabeled,
                                                         seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, *shape, generator=g) * (1.0 if clip else 4.0) - (0.0 if clip else 2.0)
    y = torch.randint(0, 4, (rows,), generator=g)
    mask = torch.tensor([(unlabeled >> i) & 1 == 1 for i in range(rows)])
    y[mask] = -1
    model = flat_linear(shape, seed=seed)
    attack = APGD(eps, norm, steps=4, loss=loss, targeted=targeted, n_target_classes=2,
                  clip_min=0.0 if clip else None, clip_max=1.0 if clip else None, generator=g)
    result = attack.perturb(model, x, y)
    x_adv = result.x_adv
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert_in_ball(x_adv, x, eps, norm, clip, unchanged=mask)
    assert not result.fooled[mask].any()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("training", [True, False])
def test_model_mode_is_restored_and_attacked_in_eval(training):
    model, seen = modes_under_attack(APGD(0.3, steps=5, generator=torch.Generator().manual_seed(0)), training)
    assert seen and not any(seen)
    assert all(m.training == training for m in model.modules())


def test_mode_is_restored_when_the_model_fails():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        APGD(0.1)(model, torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    assert model.training


def test_a_seeded_generator_reproduces_the_attack():
    model, x, y = trained_mlp(n=64)
    first = APGD(0.2, steps=10, generator=torch.Generator().manual_seed(5))(model, x, y)
    second = APGD(0.2, steps=10, generator=torch.Generator().manual_seed(5))(model, x, y)
    other = APGD(0.2, steps=10, generator=torch.Generator().manual_seed(6))(model, x, y)
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


# -- errors ---------------------------------------------------------------------------------------

def test_bad_settings_fail_in_one_line():
    with pytest.raises(ConfigError, match=r"eps=-0.1 is out of range; allowed: 0.0 <= eps"):
        APGD(-0.1)
    with pytest.raises(ConfigError, match=r"norm='l1' is not supported; allowed: 'linf', 'l2'"):
        APGD(0.1, norm="l1")
    with pytest.raises(ConfigError, match=r"steps=0 is not allowed; it must be an integer >= 1"):
        APGD(0.1, steps=0)
    with pytest.raises(ConfigError, match=r"loss='hinge' is not supported"):
        APGD(0.1, loss="hinge")
    with pytest.raises(ConfigError, match=r"clip_min=1.0 must be <= clip_max=0.0"):
        APGD(0.1, clip_min=1.0, clip_max=0.0)


def test_dlr_needs_enough_classes():
    model, x, y, _ = two_class_problem()
    with pytest.raises(ConfigError, match=r"loss='dlr' \(untargeted\) needs at least 3 classes; the model gives 2"):
        APGD(0.1, loss="dlr")(model, x, y)
    three = linear_model([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ConfigError, match=r"loss='dlr' \(targeted\) needs at least 4 classes; the model gives 3"):
        APGD(0.1, loss="dlr", targeted=True)(three, torch.randn(3, 2), torch.tensor([0, 1, 2]))


def test_repr():
    assert repr(APGD(0.1, "l2", steps=7, loss="dlr", targeted=True, n_target_classes=3, clip_min=0, clip_max=1)) == (
        "APGD(eps=0.1, norm='l2', steps=7, loss='dlr', targeted=True, n_target_classes=3, clip=[0, 1])")
