"""AutoAttack (APGD-CE, APGD-T, Square in sequence) and make_robust_attack."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import nsl_lab.attacks as attacks_package
from nsl_lab.attacks import APGD, FGSM, PGD, AutoAttack, Square, make_robust_attack
from nsl_lab.attacks.ensemble import AutoAttackResult
from nsl_lab.errors import ConfigError
from toy_problems import accuracy, assert_in_ball, modes_under_attack, trained_mlp


@pytest.fixture(scope="module")
def problem():
    model, x, y = trained_mlp(n=200, steps=200)
    y = y.clone()
    y[:10] = -1  # unlabeled rows: never attacked, never counted
    return model, x, y


@pytest.fixture(scope="module")
def fast_result(problem):
    model, x, y = problem
    return AutoAttack(0.2, "linf", version="fast", seed=0).run(model, x, y)


def test_run_reports_non_increasing_cumulative_accuracies(problem, fast_result):
    model, x, y = problem
    result = fast_result
    assert isinstance(result, AutoAttackResult)
    assert list(result.per_attack) == ["apgd-ce", "apgd-t", "square"]
    values = [result.clean, *result.per_attack.values()]
    assert all(later <= earlier for earlier, later in zip(values, values[1:]))
    assert result.robust <= result.clean
    assert result.robust < result.clean  # eps = 0.2 fools a fair share of this model's rows
    assert result.robust == result.per_attack["square"]
    assert result.clean == pytest.approx(accuracy(model, x, y))
    # The final figure is the model's accuracy on the returned inputs.
    assert result.robust == pytest.approx(accuracy(model, result.x_adv, y))
    assert torch.equal(result.correct, (y >= 0) & (model(result.x_adv).argmax(dim=1) == y))


def test_returned_inputs_stay_in_the_ball_and_unlabeled_rows_unchanged(problem, fast_result):
    model, x, y = problem
    assert fast_result.x_adv.shape == x.shape and not fast_result.x_adv.requires_grad
    assert (fast_result.x_adv - x).abs().max() <= 0.2 + 1e-6
    assert torch.equal(fast_result.x_adv[:10], x[:10])
    # Robust rows keep their clean input; the others hold a misclassified point.
    kept = fast_result.correct
    assert torch.equal(fast_result.x_adv[kept], x[kept])
    assert all(p.grad is None for p in model.parameters())


def test_autoattack_is_no_weaker_than_its_parts_or_pgd(problem, fast_result):
    model, x, y = problem
    pgd = accuracy(model, PGD(0.2, steps=20, generator=torch.Generator().manual_seed(0))(model, x, y), y)
    assert fast_result.robust <= pgd
    assert fast_result.robust <= fast_result.per_attack["apgd-ce"]


def test_each_attack_sees_only_the_rows_still_correct(problem):
    model, x, y = problem
    seen = []

    def recording(inner):
        def attack(model_, x_, y_):
            seen.append(x_.shape[0])
            assert (y_ >= 0).all()
            with torch.no_grad():
                assert (model_(x_).argmax(dim=1) == y_).all()  # only rows still classified correctly
            return inner(model_, x_, y_)
        return attack

    custom = {"pgd": recording(PGD(0.2, steps=10, generator=torch.Generator().manual_seed(0))),
              "apgd": recording(APGD(0.2, steps=20, generator=torch.Generator().manual_seed(0)))}
    result = AutoAttack(0.2, attacks=custom).run(model, x, y)
    labeled = int((y >= 0).sum())
    assert seen[0] == round(result.clean * labeled)
    assert seen[1] == round(result.per_attack["pgd"] * labeled)
    assert list(result.per_attack) == ["pgd", "apgd"]
    assert result.robust == pytest.approx(accuracy(model, result.x_adv, y))


def test_runs_are_reproducible_from_the_seed(problem):
    model, x, y = problem
    model_x, model_y = x[:40], y[:40]
    attack = AutoAttack(0.15, version="fast", seed=3, attacks=["apgd-ce", "square"])
    first, second = attack.run(model, model_x, model_y), attack.run(model, model_x, model_y)
    assert torch.equal(first.x_adv, second.x_adv) and first.per_attack == second.per_attack
    again = AutoAttack(0.15, version="fast", seed=3, attacks=["apgd-ce", "square"])(model, model_x, model_y)
    assert torch.equal(first.x_adv, again)
    # Each attack has its own generator, derived from the seed.
    generators = attack.generators()
    states = [g.get_state() for g in generators]
    assert not torch.equal(states[0], states[1])
    assert all(torch.equal(a.get_state(), b) for a, b in zip(attack.generators(), states))
    assert not torch.equal(AutoAttack(0.15, seed=4).generators()[0].get_state(), states[0])


def test_budgets_of_the_versions():
    standard = AutoAttack(0.1).build(num_classes=10)
    assert list(standard) == ["apgd-ce", "apgd-t", "square"]
    ce, targeted, square = standard.values()
    assert isinstance(ce, APGD) and ce.steps == 100 and ce.loss == "ce" and not ce.targeted
    assert targeted.targeted and targeted.loss == "dlr" and targeted.steps == 100 and targeted.n_target_classes == 9
    assert isinstance(square, Square) and square.n_queries == 5000 and square.p_init == 0.8
    fast = AutoAttack(0.1, "l2", version="fast", clip_min=0, clip_max=1).build(num_classes=10)
    assert [fast["apgd-ce"].steps, fast["apgd-t"].n_target_classes, fast["square"].n_queries] == [20, 3, 500]
    assert all(a.norm == "l2" and a.clip_min == 0 and a.clip_max == 1 for a in fast.values())
    # Below 4 classes the targeted DLR loss is undefined: APGD-T falls back to the targeted CE.
    assert AutoAttack(0.1).build(num_classes=3)["apgd-t"].loss == "ce"
    assert "FAB-T" in AutoAttack.__doc__


def test_two_class_model_and_l2_run():
    model = nn.Linear(3, 2)
    torch.manual_seed(0)
    x = torch.randn(12, 3)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    result = AutoAttack(0.5, "l2", version="fast", seed=1).run(model, x, y)
    assert result.clean == 1.0 and result.robust <= result.clean
    assert ((result.x_adv - x).norm(dim=1) <= 0.5 * (1 + 1e-5)).all()


def test_no_labeled_rows_gives_nan_and_unchanged_inputs(problem):
    model, x, _ = problem
    y = torch.full((5,), -1)
    result = AutoAttack(0.2, version="fast").run(model, x[:5], y)
    assert math.isnan(result.clean) and math.isnan(result.robust)
    assert torch.equal(result.x_adv, x[:5])


@settings(max_examples=8, deadline=None)
@given(rows=st.integers(1, 3), eps=st.floats(0.0, 1.0), norm=st.sampled_from(["linf", "l2"]), clip=st.booleans(),
       unlabeled=st.integers(0, 7), seed=st.integers(0, 2 ** 16))
def test_property_ball_box_unlabeled(rows, eps, norm, clip, unlabeled, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, 2, 3, generator=g)
    y = torch.randint(0, 4, (rows,), generator=g)
    mask = torch.tensor([(unlabeled >> i) & 1 == 1 for i in range(rows)])
    y[mask] = -1
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4))
    attack = AutoAttack(eps, norm, version="fast", clip_min=0.0 if clip else None, clip_max=1.0 if clip else None,
                        seed=seed, attacks=["apgd-t", "square"] if seed % 2 else None)
    result = attack.run(model, x, y)
    assert_in_ball(result.x_adv, x, eps, norm, clip, unchanged=mask)
    assert not result.correct[mask].any()
    values = [result.clean, *result.per_attack.values()]
    if not mask.all():
        assert all(later <= earlier for earlier, later in zip(values, values[1:]))
        assert result.robust == pytest.approx(accuracy(model, result.x_adv, y))


@pytest.mark.parametrize("training", [True, False])
def test_model_mode_is_restored_and_attacked_in_eval(training):
    model, seen = modes_under_attack(lambda *args: AutoAttack(0.3, version="fast", attacks=["apgd-ce", "square"])(*args), training, classes=4)
    assert seen and not any(seen)
    assert all(m.training == training for m in model.modules())


# -- make_robust_attack ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, settings, kind", [
    ("fgsm", {}, FGSM),
    ("pgd", {"steps": 5, "generator": torch.Generator().manual_seed(0)}, PGD),
    ("apgd-ce", {"steps": 5, "generator": torch.Generator().manual_seed(0)}, APGD),
    ("apgd-t", {"steps": 5, "n_target_classes": 2, "generator": torch.Generator().manual_seed(0)}, APGD),
    ("square", {"n_queries": 20, "generator": torch.Generator().manual_seed(0)}, Square),
    ("autoattack", {"version": "fast", "attacks": ["apgd-ce"]}, AutoAttack),
])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_make_robust_attack_builds_each_attack(problem, name, settings, kind, norm):
    model, x, y = problem
    attack = make_robust_attack(name, 0.2, norm, clip_min=-10.0, clip_max=10.0, **settings)
    assert isinstance(attack, kind)
    if name == "apgd-ce":
        assert attack.loss == "ce" and not attack.targeted and attack.steps == 5
    if name == "apgd-t":
        assert attack.loss == "dlr" and attack.targeted and attack.n_target_classes == 2
    x_adv = attack(model, x[:20], y[:20])
    assert_in_ball(x_adv, x[:20], 0.2, norm, unchanged=y[:20] < 0)  # unlabeled rows stay
    assert accuracy(model, x_adv, y[:20]) <= accuracy(model, x[:20], y[:20])


def test_make_robust_attack_errors():
    with pytest.raises(ConfigError, match=r"name='cw' is not supported; allowed: 'fgsm', 'pgd', 'apgd-ce'"):
        make_robust_attack("cw", 0.1)
    with pytest.raises(ConfigError, match=r"eps=-0.5 is out of range"):
        make_robust_attack("square", -0.5)
    with pytest.raises(ConfigError, match=r"n_queries=10 is not a setting of attack 'apgd-ce'; allowed: .*steps"):
        make_robust_attack("apgd-ce", 0.1, n_queries=10)
    with pytest.raises(ConfigError, match=r"targeted=False is not a setting of attack 'apgd-t'"):
        make_robust_attack("apgd-t", 0.1, targeted=False)
    with pytest.raises(ConfigError, match=r"generator is not a setting of attack 'fgsm'"):
        make_robust_attack("fgsm", 0.1, generator=torch.Generator())
    with pytest.raises(ConfigError, match=r"steps=0 is not allowed"):
        make_robust_attack("pgd", 0.1, steps=0)


def test_autoattack_errors_and_repr():
    with pytest.raises(ConfigError, match=r"eps=-0.1 is out of range; allowed: 0.0 <= eps"):
        AutoAttack(-0.1)
    with pytest.raises(ConfigError, match=r"norm='l1' is not supported; allowed: 'linf', 'l2'"):
        AutoAttack(0.1, norm="l1")
    with pytest.raises(ConfigError, match=r"version='plus' is not supported; allowed: 'standard', 'fast'"):
        AutoAttack(0.1, version="plus")
    with pytest.raises(ConfigError, match=r"attacks='fab-t' is not supported; allowed: 'apgd-ce', 'apgd-t', 'square'"):
        AutoAttack(0.1, attacks=["fab-t"])
    with pytest.raises(ConfigError, match=r"names an attack twice"):
        AutoAttack(0.1, attacks=["square", "square"])
    with pytest.raises(ConfigError, match=r"attacks=\[\] is empty"):
        AutoAttack(0.1, attacks=[])
    with pytest.raises(ConfigError, match=r"seed=-1 is not allowed"):
        AutoAttack(0.1, seed=-1)
    assert repr(AutoAttack(0.1, version="fast", attacks=["square"], clip_min=0, clip_max=1)) == (
        "AutoAttack(eps=0.1, norm='linf', version='fast', attacks=['square'], clip=[0, 1], seed=0)")


def test_exports_and_one_way_imports():
    for name in ("APGD", "Square", "AutoAttack", "make_robust_attack"):
        assert name in attacks_package.__all__
    import inspect

    from nsl_lab.attacks import apgd, gradient, square
    for module in (apgd, square, gradient):
        assert "nsl_lab.attacks.ensemble" not in inspect.getsource(module)
