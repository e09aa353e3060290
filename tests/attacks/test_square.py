"""Square Attack: the schedule by hand, the closed-form optimum of a linear model reached without
gradients, early stopping, and property tests (ball, box, unlabeled rows, modes, seeds)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nsl_lab.attacks import Square
from nsl_lab.attacks.square import layout, p_schedule, window_size
from nsl_lab.errors import ConfigError
from toy_problems import accuracy, assert_in_ball, margins, modes_under_attack, trained_mlp, two_class_problem, worst_case

class NoGradients(nn.Module):
    """Wraps a model, fails if it is ever run with gradients enabled, and counts its calls."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls, self.rows = model, 0, 0

    def forward(self, x):
        assert not torch.is_grad_enabled(), "Square must not take gradients"
        assert not x.requires_grad
        self.calls += 1
        self.rows += x.shape[0]
        return self.model(x)


def ungraded_problem():
    """:func:`toy_problems.two_class_problem` behind :class:`NoGradients`."""
    model, x, y, direction = two_class_problem()
    return NoGradients(model), x, y, direction


def small_cnn(seed=0, classes=5):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, classes))


# -- schedule and windows by hand ------------------------------------------------------------------

def test_p_schedule_by_hand():
    # 10 000 queries: p halves after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000.
    expected = {0: 0.8, 10: 0.8, 11: 0.4, 50: 0.4, 51: 0.2, 201: 0.1, 501: 0.05, 1001: 0.025, 2001: 0.0125,
                4001: 0.00625, 6001: 0.003125, 8001: 0.0015625, 9999: 0.0015625}
    for iteration, p in expected.items():
        assert p_schedule(0.8, iteration, 10000) == pytest.approx(p)
    # 1000 queries: iteration i counts as 10 i, so p halves after iterations 1, 5, 20, 50, ...
    assert [p_schedule(1.0, i, 1000) for i in (0, 1, 2, 5, 6, 20, 21)] == [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125]


def test_window_sizes_and_layouts_by_hand():
    # Images: side round(sqrt(p H W)) in [1, min(H, W) - 1].
    assert window_size(0.8, 32, 32) == (29, 29)  # sqrt(819.2) = 28.6
    assert window_size(1.0, 32, 32) == (31, 31)
    assert window_size(0.05, 8, 8) == (2, 2)  # sqrt(3.2) = 1.79
    assert window_size(1e-4, 8, 8) == (1, 1)
    # Strips (flat inputs): round(p d) adjacent coordinates in [1, d - 1].
    assert window_size(0.8, 1, 4) == (1, 3)
    assert window_size(0.3, 1, 4) == (1, 1)
    assert window_size(1.0, 1, 1) == (1, 1)
    assert layout((7, 10)) == (1, 1, 10)
    assert layout((7, 5, 6)) == (1, 5, 6)
    assert layout((7, 3, 8, 9)) == (3, 8, 9)
    assert layout((7, 2, 3, 4, 5)) == (2, 3, 20)


# -- closed forms on a linear model, without gradients ------------------------------------------

def test_linf_reaches_the_optimum_of_a_linear_model_without_gradients():
    model, x, y, direction = ungraded_problem()
    optimum, point = worst_case(x, y, direction, 0.1, "linf")
    assert (optimum > 0).all()
    result = Square(0.1, "linf", n_queries=500, generator=torch.Generator().manual_seed(0)).perturb(model, x, y)
    assert not result.fooled.any()
    assert torch.allclose(margins(model, result.x_adv, y), optimum, atol=1e-3)
    assert torch.allclose(result.x_adv, point, atol=1e-6)
    # Every row is queried once clean, then n_queries times (the initial point included).
    assert (result.queries == 500).all()


def test_l2_approaches_the_optimum_of_a_linear_model():
    model, x, y, direction = ungraded_problem()
    eps = 0.2
    optimum, _ = worst_case(x, y, direction, eps, "l2")
    result = Square(eps, "l2", n_queries=600, generator=torch.Generator().manual_seed(0)).perturb(model, x, y)
    found = margins(model, result.x_adv, y)
    assert (found >= optimum - 1e-5).all()  # nothing beats the closed form
    assert torch.allclose(found, optimum, atol=2e-3)
    assert torch.allclose((result.x_adv - x).norm(dim=1), torch.full((5,), eps), atol=1e-5)


def test_fooled_rows_stop_being_queried_and_the_attack_stops_early():
    model, x, y, direction = ungraded_problem()
    eps = 0.3  # 0.3 * 8.3 = 2.49 > the margins 2.3, 1.6 and 2.1 of rows 0, 2, 4
    result = Square(eps, "linf", n_queries=400, generator=torch.Generator().manual_seed(0)).perturb(model, x, y)
    can_be_fooled = worst_case(x, y, direction, eps, "linf")[0] < 0
    assert torch.equal(result.fooled, can_be_fooled)
    assert torch.equal(result.fooled, margins(model, result.x_adv, y) < 0)
    assert (result.queries[result.fooled] < 400).all() and (result.queries[~result.fooled] == 400).all()
    # All fooled: the loop stops once the last row is.
    model.calls = 0
    big = Square(5.0, "linf", n_queries=1000, generator=torch.Generator().manual_seed(0)).perturb(model, x, y)
    assert big.fooled.all() and big.queries.max() < 50 and model.calls == big.queries.max() + 1


def test_rows_wrong_unlabeled_or_zero_eps_are_not_queried():
    model, x, y, _ = ungraded_problem()
    labels = y.clone()
    labels[0], labels[1] = 1 - y[0], -1
    model.rows = 0
    result = Square(0.1, n_queries=30, generator=torch.Generator().manual_seed(0)).perturb(model, x, labels)
    assert result.fooled[0] and not result.fooled[1]
    assert torch.equal(result.x_adv[:2], x[:2])
    assert result.queries[:2].tolist() == [0, 0] and (result.queries[2:] == 30).all()
    assert model.rows == 5 + 3 * 30  # the clean pass, then only the three attacked rows
    zero = Square(0.0).perturb(model, x, y)
    assert torch.equal(zero.x_adv, x) and (zero.queries == 0).all()


# -- images ------------------------------------------------------------------------------------------

def test_linf_on_images_stays_on_the_cube_vertices_and_lowers_the_margin():
    model = small_cnn()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    eps = 0.05
    result = Square(eps, "linf", n_queries=100, clip_min=0.0, clip_max=1.0,
                    generator=torch.Generator().manual_seed(0)).perturb(model, x, y)
    assert torch.allclose((result.x_adv - x).abs(), torch.full_like(x, eps), atol=1e-6)  # x +- eps everywhere
    assert (margins(model, result.x_adv, y)[~result.fooled] < margins(model, x, y)[~result.fooled]).all()
    l2 = Square(0.5, "l2", n_queries=100, clip_min=0.0, clip_max=1.0,
                generator=torch.Generator().manual_seed(0)).perturb(model, x, y)
    assert (margins(model, l2.x_adv, y) < margins(model, x, y)).all()


def test_square_lowers_the_accuracy_of_a_trained_mlp():
    model, x, y = trained_mlp(n=200, steps=200)
    result = Square(0.2, n_queries=300, generator=torch.Generator().manual_seed(0)).perturb(model, x, y)
    robust = accuracy(model, result.x_adv, y)
    assert robust < accuracy(model, x, y) - 0.1
    # fooled counts the rows wrong on the clean input too: robust accuracy is its complement.
    assert robust == pytest.approx(1 - result.fooled.float().mean().item())
    assert all(p.grad is None for p in model.parameters())


# -- properties ------------------------------------------------------------------------------------

@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 4), shape=st.sampled_from([(1,), (5,), (4, 4), (2, 3, 5), (3, 4, 4)]),
       eps=st.floats(0.0, 2.0), norm=st.sampled_from(["linf", "l2"]), clip=st.booleans(),
       p_init=st.floats(0.01, 1.0), unlabeled=st.integers(0, 15), seed=st.integers(0, 2 ** 16))
def test_stays_in_ball_and_box_and_leaves_unlabeled_rows(rows, shape, eps, norm, clip, p_init, unlabeled, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, *shape, generator=g) * (1.0 if clip else 4.0) - (0.0 if clip else 2.0)
    y = torch.randint(0, 3, (rows,), generator=g)
    mask = torch.tensor([(unlabeled >> i) & 1 == 1 for i in range(rows)])
    y[mask] = -1
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 3))
    attack = Square(eps, norm, n_queries=15, p_init=p_init, clip_min=0.0 if clip else None,
                    clip_max=1.0 if clip else None, generator=g)
    result = attack.perturb(model, x, y)
    x_adv = result.x_adv
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert_in_ball(x_adv, x, eps, norm, clip, unchanged=mask)
    assert not result.fooled[mask].any() and (result.queries[mask] == 0).all()
    assert (result.queries <= 15).all()


@pytest.mark.parametrize("training", [True, False])
def test_model_mode_is_restored_and_attacked_in_eval(training):
    model, seen = modes_under_attack(Square(0.3, n_queries=10, generator=torch.Generator().manual_seed(0)), training)
    assert seen and not any(seen)
    assert all(m.training == training for m in model.modules())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_seeded_generator_reproduces_the_attack(norm):
    model = small_cnn()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    runs = [Square(0.1, norm, n_queries=40, generator=torch.Generator().manual_seed(seed))(model, x, y)
            for seed in (3, 3, 4)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


# -- errors ----------------------------------------------------------------------------------------

def test_bad_settings_fail_in_one_line():
    with pytest.raises(ConfigError, match=r"eps=-1 is out of range; allowed: 0.0 <= eps"):
        Square(-1)
    with pytest.raises(ConfigError, match=r"norm='l1' is not supported; allowed: 'linf', 'l2'"):
        Square(0.1, norm="l1")
    with pytest.raises(ConfigError, match=r"n_queries=0 is not allowed; it must be an integer >= 1"):
        Square(0.1, n_queries=0)
    with pytest.raises(ConfigError, match=r"p_init=0.0 is out of range; allowed: 0.0 < p_init <= 1.0"):
        Square(0.1, p_init=0.0)
    with pytest.raises(ConfigError, match=r"p_init=1.5 is out of range"):
        Square(0.1, p_init=1.5)
    with pytest.raises(ConfigError, match=r"clip_min=1 must be <= clip_max=0"):
        Square(0.1, clip_min=1, clip_max=0)


def test_repr():
    assert repr(Square(0.1)) == "Square(eps=0.1, norm='linf', n_queries=5000, p_init=0.8)"
    assert repr(Square(0.5, "l2", n_queries=10, p_init=0.3, clip_min=0, clip_max=1)) == (
        "Square(eps=0.5, norm='l2', n_queries=10, p_init=0.3, clip=[0, 1])")
