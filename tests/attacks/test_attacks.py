"""Steepest ascent, FGSM and PGD against hand-computed values and as property tests."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nsl_lab.attacks import FGSM, PGD, SteepestAscent, frozen_batch_norm_statistics, project, steepest_direction
from nsl_lab.errors import ConfigError, config_scope
from toy_problems import assert_in_ball, linear_model


def ce_input_gradient(model: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    probabilities = torch.softmax(x @ model.weight.T, dim=-1)
    return (probabilities - torch.nn.functional.one_hot(y, probabilities.shape[-1])) @ model.weight


def test_directions_by_hand():
    grad = torch.tensor([[3.0, -4.0, 0.0], [0.0, 0.0, 0.0], [1.0, -2.0, 2.0]])
    assert torch.equal(steepest_direction(grad, "linf"), torch.tensor([[1.0, -1.0, 0.0], [0, 0, 0], [1, -1, 1]]))
    l2 = steepest_direction(grad, "l2")
    assert torch.allclose(l2[0], torch.tensor([0.6, -0.8, 0.0]))
    assert torch.equal(l2[1], torch.zeros(3))  # a zero gradient gives no step, not NaN
    assert torch.allclose(l2[2], torch.tensor([1 / 3, -2 / 3, 2 / 3]))
    l1 = steepest_direction(grad, "l1")
    # The L1 vertex at the largest |g| coordinate; ties share the unit mass.
    assert torch.equal(l1[0], torch.tensor([0.0, -1.0, 0.0]))
    assert torch.equal(l1[1], torch.zeros(3))
    assert torch.equal(l1[2], torch.tensor([0.0, -0.5, 0.5]))


def test_nonfinite_gradients_count_as_zero_and_mask_applies():
    grad = torch.tensor([[float("nan"), 2.0, float("inf"), -1.0]])
    assert torch.equal(steepest_direction(grad, "linf"), torch.tensor([[0.0, 1.0, 0.0, -1.0]]))
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
    assert torch.equal(steepest_direction(grad, "l1", mask), torch.tensor([[0.0, 0.0, 0.0, -1.0]]))


def test_directions_are_per_example_for_images():
    grad = torch.zeros(2, 1, 2, 2)
    grad[0, 0, 0, 0], grad[1, 0, 1, 1] = 3.0, -100.0
    l2 = steepest_direction(grad, "l2")
    assert l2[0, 0, 0, 0] == 1.0 and l2[1, 0, 1, 1] == -1.0


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_fgsm_on_linear_model_matches_hand_computation(norm):
    model = linear_model([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]])
    x = torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.9, 0.3]])
    y = torch.tensor([0, 1])
    g = ce_input_gradient(model, x, y)
    eps = 0.1
    if norm == "linf":
        expected = x + eps * g.sign()
    elif norm == "l2":
        expected = x + eps * g / g.norm(dim=1, keepdim=True)
    else:
        top = g.abs().argmax(dim=1)
        expected = x.clone()
        expected[torch.arange(2), top] += eps * g.sign()[torch.arange(2), top]
    x_adv = FGSM(eps, norm)(model, x, y)
    assert torch.allclose(x_adv, expected, atol=1e-6)
    # The step raises the loss (first order, small eps).
    loss = nn.functional.cross_entropy
    assert loss(model(x_adv), y) > loss(model(x), y)


def test_pgd_without_projection_binding_equals_repeated_fgsm():
    # Linear model, linf, no clipping: the gradient's sign is constant along the ascent path
    # here, so k steps of size a land at x + k a sign(g) as long as k a <= eps.
    model = linear_model([[2.0, -1.0], [-1.0, 2.0]])
    x, y = torch.tensor([[0.2, 0.3]]), torch.tensor([0])
    g = ce_input_gradient(model, x, y)
    x_adv = PGD(0.3, steps=3, step_size=0.1, random_start=False)(model, x, y)
    assert torch.allclose(x_adv, x + 0.3 * g.sign(), atol=1e-6)
    # With a smaller ball the projection binds: still x + eps sign(g).
    x_adv = PGD(0.15, steps=3, step_size=0.1, random_start=False)(model, x, y)
    assert torch.allclose(x_adv, x + 0.15 * g.sign(), atol=1e-6)


def test_pgd_l2_ends_on_the_ball_for_a_linear_model():
    model = linear_model([[1.0, 2.0, -1.0], [0.5, -1.0, 1.0]])
    x, y = torch.rand(4, 3), torch.tensor([0, 1, 0, 1])
    x_adv = PGD(0.5, norm="l2", steps=10, step_size=0.2, random_start=False)(model, x, y)
    assert torch.allclose((x_adv - x).norm(dim=1), torch.full((4,), 0.5), atol=1e-5)


def test_eps_zero_returns_the_inputs():
    model = linear_model([[1.0, 0.0], [0.0, 1.0]])
    x = torch.rand(3, 2)
    assert torch.equal(PGD(0.0)(model, x, torch.tensor([0, 1, 0])), x)


def test_attack_restores_mode_and_leaves_no_gradients():
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    x, y = torch.rand(5, 4), torch.randint(0, 3, (5,))
    PGD(0.1, steps=3)(model, x, y)
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    FGSM(0.1)(model, x, y)
    assert not model.training


def test_bad_settings_fail_with_names():
    with pytest.raises(ConfigError, match=r"^eps=-0.1 is out of range"):
        PGD(-0.1)
    with pytest.raises(ConfigError, match=r"^norm='l1' is not supported"):
        PGD(0.1, norm="l1")
    with pytest.raises(ConfigError, match=r"^steps=0"):
        PGD(0.1, steps=0)
    # A run names the setting by its config path.
    with pytest.raises(ConfigError, match=r"^eval\.eps=-0.1 is out of range"):
        with config_scope("eval."):
            PGD(-0.1)
    with pytest.raises(ConfigError, match=r"norm='l3' is not supported"):
        SteepestAscent(norm="l3")
    with pytest.raises(ConfigError, match=r"random_init=True needs"):
        SteepestAscent(random_init=True)
    with pytest.raises(ConfigError, match=r"feature_mask of shape \(3,\) does not broadcast against one input of shape \(4,\)"):
        SteepestAscent(feature_mask=[1.0, 0.0, 1.0]).perturbation(torch.zeros(2, 4), lambda p: p.sum())


EPS = st.floats(0.01, 1.0)


@settings(max_examples=40, deadline=None)
@given(norm=st.sampled_from(["linf", "l2"]), eps=EPS, scale=st.floats(0.0, 10.0), seed=st.integers(0, 2**16))
def test_projection_stays_in_the_ball(norm, eps, scale, seed):
    delta = torch.randn(6, 2, 3, 3, generator=torch.Generator().manual_seed(seed)) * scale
    projected = project(delta, norm, eps)
    size = projected.flatten(1).abs().amax(1) if norm == "linf" else projected.flatten(1).norm(dim=1)
    assert bool((size <= eps * (1 + 1e-5)).all())
    # Points inside the ball do not move.
    inside = project(projected, norm, eps)
    assert torch.allclose(inside, projected, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(norm=st.sampled_from(["linf", "l2"]), eps=EPS, steps=st.integers(1, 5), step=st.floats(0.01, 1.0),
       random_start=st.booleans(), seed=st.integers(0, 2**16))
def test_pgd_never_leaves_the_ball_or_the_value_range(norm, eps, steps, step, random_start, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.rand(5, 3, 2, 2), torch.randint(0, 3, (5,))
    x_adv = PGD(eps, norm, steps, step, random_start, clip_min=0.0, clip_max=1.0)(model, x, y)
    assert_in_ball(x_adv, x, eps, norm, clip=True)


@settings(max_examples=30, deadline=None)
@given(norm=st.sampled_from(["linf", "l2"]), eps=EPS, seed=st.integers(0, 2**16))
def test_random_init_stays_in_the_ball(norm, eps, seed):
    x = torch.rand(8, 1, 4, 4)
    ascent = SteepestAscent(norm=norm, step_size=0.1, epsilon=eps, random_init=True, clip_min=0.0, clip_max=1.0)
    delta = ascent.start(x, torch.Generator().manual_seed(seed))
    size = delta.flatten(1).abs().amax(1) if norm == "linf" else delta.flatten(1).norm(dim=1)
    assert bool((size <= eps * (1 + 1e-5)).all()) and bool((delta != 0).any())
    assert float((x + delta).min()) >= 0.0 and float((x + delta).max()) <= 1.0


@settings(max_examples=20, deadline=None)
@given(norm=st.sampled_from(["linf", "l2", "l1"]), seed=st.integers(0, 2**16))
def test_zero_feature_mask_leaves_inputs_unchanged(norm, seed):
    torch.manual_seed(seed)
    x, grad = torch.rand(4, 6), torch.randn(4, 6)
    epsilon = None if norm == "l1" else 0.3
    ascent = SteepestAscent(norm=norm, step_size=0.5, steps=3, epsilon=epsilon, random_init=epsilon is not None,
                            feature_mask=torch.zeros(6))
    delta = ascent.perturbation(x, lambda point: (point * grad).sum(), first_grad=grad)
    assert torch.equal(delta, torch.zeros_like(x))
    # A partial mask moves only the unmasked coordinates.
    mask = torch.tensor([1.0, 0, 1, 0, 0, 1])
    ascent = SteepestAscent(norm=norm, step_size=0.5, steps=2, epsilon=epsilon, feature_mask=mask)
    delta = ascent.perturbation(x, lambda point: (point * grad).sum())
    assert torch.equal(delta[:, mask == 0], torch.zeros(4, 3)) and bool((delta[:, mask == 1] != 0).any())


def test_batch_norm_statistics_unchanged_by_perturbation_and_attack_passes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 3))
    model.train()
    x, y = torch.rand(6, 1, 4, 4), torch.randint(0, 3, (6,))
    model(x)  # one normal pass moves the statistics away from their initial values
    norm = model[1]
    before = {k: v.clone() for k, v in norm.state_dict().items()}
    with frozen_batch_norm_statistics(model):
        out = model(x + 0.5)
    after = norm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Inside, batch statistics normalised the batch (training behaviour), not running ones.
    model.eval()
    assert not torch.allclose(out, model(x + 0.5))
    model.train()
    assert norm.track_running_stats
    PGD(0.1, steps=3)(model, x, y)
    assert all(torch.equal(before[k], norm.state_dict()[k]) for k in before) and model.training
