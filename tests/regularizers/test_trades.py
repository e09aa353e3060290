"""TRADESRegularizer: the loss by hand at the returned adversarial point, the closed-form
maximiser of a two-class linear model, ball and box, gradients, modes, settings, configs."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from nsl_lab import Backbone, Batch, Output, StructuredLearner
from nsl_lab.compose import compose_config
from nsl_lab.errors import ConfigError, config_scope
from nsl_lab.regularizers import TRADESRegularizer
from nsl_lab.run import build_regularizers
from toy_problems import LinearBackbone, hand_kl, step_of


class Net(Backbone):
    """Batch norm, dropout and a linear layer, to check modes and running statistics."""

    in_features, num_classes = 4, 3

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.dropout = nn.Dropout(0.5)
        self.linear = nn.Linear(4, 3)

    def head(self, z, **_):
        logits = self.linear(self.dropout(self.norm(z)))
        return Output(logits, logits)


W = torch.tensor([[2.0, -1.0, 0.5, 1.0], [-1.0, 1.5, 0.0, -0.5], [0.3, 0.2, -2.0, 0.4]], dtype=torch.float64)
X = torch.tensor([[0.2, 0.5, 0.7, 0.1], [0.9, 0.4, 0.3, 0.6], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_loss_is_the_batchmean_kl_at_the_returned_point(norm):
    regularizer = TRADESRegularizer(epsilon=0.2, steps=5, norm=norm)
    backbone = LinearBackbone(W)
    step = step_of(backbone, X, torch.tensor([0, -1, -1]))
    torch.manual_seed(3)
    x_adv = regularizer.adversarial_point(backbone, X)
    torch.manual_seed(3)
    loss = regularizer.loss(step)
    expected = hand_kl(X @ W.T, x_adv @ W.T).mean()  # every row, labeled or not
    assert torch.allclose(loss, expected, atol=1e-12)
    assert loss > 0


def test_two_class_linear_model_ends_on_the_vertex_along_the_weight_difference():
    # KL(Bern(p) || Bern(q)) grows with |logit change| = |(w1 - w2) . delta|: over the Linf ball its
    # maximiser is +-eps sign(w1 - w2), and sign ascent from a tiny start walks straight there.
    weight = W[:2]
    regularizer = TRADESRegularizer(epsilon=0.1, steps=10)  # step 0.025: the vertex after 4 steps
    backbone = LinearBackbone(weight)
    x_adv = regularizer.adversarial_point(backbone, X)
    vertex = 0.1 * (weight[0] - weight[1]).sign()
    delta = x_adv - X
    assert all(torch.allclose(row, vertex) or torch.allclose(row, -vertex) for row in delta), delta


def test_adversarial_point_stays_in_the_ball_and_the_box():
    torch.manual_seed(0)
    x = torch.rand(16, 4, dtype=torch.float64)
    for norm, size in (("linf", lambda d: d.abs().amax(1)), ("l2", lambda d: d.norm(dim=1))):
        regularizer = TRADESRegularizer(epsilon=0.3, step_size=0.2, steps=7, norm=norm,
                                        clip_value_min=0.0, clip_value_max=1.0)
        x_adv = regularizer.adversarial_point(LinearBackbone(W), x)
        assert (size(x_adv - x) <= 0.3 + 1e-9).all()
        assert (x_adv >= 0).all() and (x_adv <= 1).all()


def test_ascent_increases_the_kl_over_the_random_start():
    regularizer = TRADESRegularizer(epsilon=0.3, steps=10)
    backbone = LinearBackbone(W)
    torch.manual_seed(0)
    start = X + 0.001 * torch.randn(X.shape, dtype=X.dtype)
    torch.manual_seed(0)
    x_adv = regularizer.adversarial_point(backbone, X)
    assert (hand_kl(X @ W.T, x_adv @ W.T) > 10 * hand_kl(X @ W.T, start @ W.T)).all()


def test_gradient_flows_through_both_the_clean_and_the_adversarial_prediction():
    backbone = LinearBackbone(W.clone())
    learner = StructuredLearner(backbone, [TRADESRegularizer(multiplier=6.0, epsilon=0.2, steps=3)])
    learner.log = lambda *args, **kwargs: None
    y = torch.tensor([0, 2, -1])
    copy = LinearBackbone(W)  # built before seeding: nn.Linear's initialisation draws from the global generator
    torch.manual_seed(4)
    x_adv = TRADESRegularizer(epsilon=0.2, steps=3).adversarial_point(copy, X)
    torch.manual_seed(4)
    learner.training_step(Batch(x=X, y=y, index=torch.arange(3)), 0).backward()
    w = W.clone().requires_grad_(True)
    labeled = y >= 0
    ce = nn.functional.cross_entropy(X[labeled] @ w.T, y[labeled])
    (ce + 6.0 * hand_kl(X @ w.T, x_adv @ w.T).mean()).backward()
    assert torch.allclose(backbone.linear.weight.grad, w.grad, atol=1e-10)


def test_unlabeled_rows_alone_give_a_loss():
    backbone = LinearBackbone(W.float())
    learner = StructuredLearner(backbone, [TRADESRegularizer(epsilon=0.2)])
    learner.log = lambda *args, **kwargs: None
    loss = learner.training_step(Batch(x=X.float(), y=torch.full((3,), -1), index=torch.arange(3)), 0)
    assert loss > 0
    loss.backward()
    assert backbone.linear.weight.grad.abs().sum() > 0


def test_attack_runs_in_eval_mode_and_every_mode_is_restored():
    torch.manual_seed(0)
    backbone = Net().train()
    backbone.dropout.eval()  # a sub-module the user keeps in eval mode stays there
    x = torch.randn(8, 4)
    step = step_of(backbone, x, torch.tensor([0, 1, 2, -1, -1, -1, 0, 1]))
    mean, var = backbone.norm.running_mean.clone(), backbone.norm.running_var.clone()
    count = int(backbone.norm.num_batches_tracked)
    modes = []
    hook = backbone.norm.register_forward_hook(lambda module, *_: modes.append(module.training))
    loss = TRADESRegularizer(epsilon=0.3, steps=4).loss(step)
    hook.remove()
    assert modes == [False] * 5 + [True]  # the clean target and 4 ascent steps in eval mode, then the loss pass
    assert backbone.training and backbone.norm.training and not backbone.dropout.training
    assert torch.equal(backbone.norm.running_mean, mean) and torch.equal(backbone.norm.running_var, var)
    assert int(backbone.norm.num_batches_tracked) == count and backbone.norm.track_running_stats
    assert torch.isfinite(loss)


def test_attack_in_train_mode_targets_the_clean_training_output():
    backbone = LinearBackbone(W)
    regularizer = TRADESRegularizer(epsilon=0.2, steps=2, attack_in_eval_mode=False)
    step = step_of(backbone, X, torch.tensor([0, 1, 2]))
    backbone.modes.clear()
    regularizer.loss(step)
    assert backbone.modes == [True] * 3  # 2 ascent steps and the loss pass; the clean pass is reused


@pytest.mark.parametrize("settings_, setting", [
    ({"steps": 0}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"norm": "l1"}, "norm"),
    ({"norm": "inf"}, "norm"),
    ({"epsilon": -0.1}, "epsilon"),
    ({"step_size": -1.0}, "step_size"),
    ({"clip_value_min": 1.0, "clip_value_max": 0.0}, "clip_value_min"),
    ({"multiplier": -6.0}, "multiplier"),
])
def test_bad_settings_raise_one_line_config_errors(settings_, setting):
    with pytest.raises(ConfigError, match=setting) as error:
        TRADESRegularizer(**settings_)
    assert "\n" not in str(error.value)


def test_config_errors_name_the_config_path():
    with pytest.raises(ConfigError, match=r"regularizer\.trades\.steps=0 is not allowed"):
        with config_scope("regularizer.trades."):
            TRADESRegularizer(steps=0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 1.0), steps=st.integers(1, 5),
       norm=st.sampled_from(["linf", "l2"]), clip=st.booleans())
def test_kl_is_nonnegative_and_the_point_stays_within_epsilon(seed, eps, steps, norm, clip):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(3, 5, generator=generator, dtype=torch.float64) * 3
    x = torch.rand(4, 5, generator=generator, dtype=torch.float64)
    backbone = LinearBackbone(weight)
    regularizer = TRADESRegularizer(epsilon=eps, steps=steps, norm=norm, generator=generator,
                                    clip_value_min=0.0 if clip else None, clip_value_max=1.0 if clip else None)
    x_adv = regularizer.adversarial_point(backbone, x)
    size = (x_adv - x).norm(dim=1) if norm == "l2" else (x_adv - x).abs().amax(dim=1)
    assert (size <= eps + 1e-9).all()
    if clip:
        assert (x_adv >= 0).all() and (x_adv <= 1).all()
    assert regularizer.loss(step_of(backbone, x, torch.full((4,), -1))) >= 0


def test_trades_config_composes_and_instantiates(tmp_path):
    cfg = compose_config(["regularizer=trades", "data=digits", "backbone=cnn"], tmp_path)
    (regularizer,) = build_regularizers(cfg.regularizer).values()
    assert isinstance(regularizer, TRADESRegularizer) and regularizer.multiplier == 6.0
    assert regularizer.epsilon == 0.3 and regularizer.ascent.step_size == pytest.approx(0.075)
    assert regularizer.ascent.steps == 10 and regularizer.ascent.norm == "linf"
    assert (regularizer.ascent.clip_min, regularizer.ascent.clip_max) == (0.0, 1.0)
