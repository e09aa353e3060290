"""AdversarialRegularizer: NSL's loss by hand, gradient reuse, stop-gradient, batch norm, embeddings."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nsl_lab import AdversarialRegularizer, Backbone, Batch, Output, StructuredLearner
from nsl_lab.errors import ConfigError, config_scope
from nsl_lab.modules import CNN, ResNet
from nsl_lab.regularizers import Regularizer, TrainingStep


class CountingLinear(Backbone):
    """Logits = W x; counts forward passes through ``head`` (``embed`` is the identity)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
        self.in_features, self.num_classes, self.calls = weight.shape[1], weight.shape[0], 0

    def head(self, z, **_):
        self.calls += 1
        logits = self.linear(z)
        return Output(logits, logits)


class TokenBag(Backbone):
    """Token ids -> mean of learned embeddings -> linear: the perturbation applies to the embeddings."""

    accepts = ("tokens",)
    in_features, num_classes = 10, 2

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(10, 4)
        self.classifier = nn.Linear(4, 2)

    def embed(self, x):
        return self.embedding(x)

    def head(self, z, **_):
        logits = self.classifier(z.mean(1))
        return Output(logits, logits)


def batch_of(x, y):
    return Batch(x=x, y=y, index=torch.arange(len(y)))


WEIGHT = torch.tensor([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0], [0.3, 0.3, 0.3]])
X = torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.9, 0.3], [0.7, 0.2, 0.4]])
Y = torch.tensor([0, 1, -1])  # the third sample is unlabeled


def hand_loss(weight, x, y, multiplier, step, norm):
    labeled = y >= 0
    xl, yl = x[labeled], y[labeled]
    point = xl.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(point @ weight.detach().T, yl), point)
    direction = g.sign() if norm == "linf" else g / g.norm(dim=1, keepdim=True)
    # The perturbation is a constant: gradients reach the weights only through the two losses.
    return F.cross_entropy(xl @ weight.T, yl) + multiplier * F.cross_entropy((xl + step * direction) @ weight.T, yl)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_total_loss_is_nsl_formula_and_fgsm_costs_one_extra_pass(norm):
    backbone = CountingLinear(WEIGHT)
    regularizer = AdversarialRegularizer(multiplier=0.5, adv_step_size=0.1, adv_grad_norm=norm)
    learner = StructuredLearner(backbone, {"adversarial": regularizer})
    learner.log = lambda *args, **kwargs: None
    loss = learner.training_step(batch_of(X, Y), 0)
    assert backbone.calls == 2  # the clean pass and the adversarial pass: the first gradient is reused
    assert torch.allclose(loss, hand_loss(WEIGHT, X, Y, 0.5, 0.1, norm), atol=1e-6)


def test_pgd_iterations_cost_one_pass_each_after_the_first():
    backbone = CountingLinear(WEIGHT)
    learner = StructuredLearner(backbone, [AdversarialRegularizer(adv_step_size=0.05, pgd_iterations=4,
                                                                  pgd_epsilon=0.1, adv_grad_norm="linf")])
    learner.log = lambda *args, **kwargs: None
    learner.training_step(batch_of(X, Y), 0)
    assert backbone.calls == 1 + 3 + 1  # clean, 3 more ascent steps, final adversarial loss


def test_no_gradient_flows_through_the_perturbation():
    backbone = CountingLinear(WEIGHT)
    regularizer = AdversarialRegularizer(multiplier=1.0, adv_step_size=0.2, adv_grad_norm="l2")
    learner = StructuredLearner(backbone, [regularizer])
    learner.log = lambda *args, **kwargs: None
    learner.training_step(batch_of(X, Y), 0).backward()
    got = backbone.linear.weight.grad.clone()
    # The same loss with x_adv held fixed: the gradient w.r.t. W must match exactly.
    labeled = Y >= 0
    point = X[labeled].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(point @ WEIGHT.T, Y[labeled]), point)
    x_adv = X[labeled] + 0.2 * g / g.norm(dim=1, keepdim=True)
    w = WEIGHT.clone().requires_grad_(True)
    (F.cross_entropy(X[labeled] @ w.T, Y[labeled]) + F.cross_entropy(x_adv @ w.T, Y[labeled])).backward()
    assert torch.allclose(got, w.grad, atol=1e-6)


class LogitNorm(Regularizer):
    """A second regularizer that backpropagates through the clean logits."""

    name = "logit_norm"

    def loss(self, step):
        return step.output.logits.pow(2).mean()  # the base class scales it by the multiplier


def test_combined_with_a_regularizer_on_the_clean_logits_gives_the_summed_gradient():
    combined = CountingLinear(WEIGHT)
    learner = StructuredLearner(combined, [AdversarialRegularizer(multiplier=0.5, adv_step_size=0.1),
                                           LogitNorm(0.3)])
    learner.log = lambda *args, **kwargs: None
    learner.training_step(batch_of(X, Y), 0).backward()
    w = WEIGHT.clone().requires_grad_(True)
    expected = hand_loss(w, X, Y, 0.5, 0.1, "l2") + 0.3 * (X @ w.T).pow(2).mean()
    expected.backward()
    assert torch.allclose(combined.linear.weight.grad, w.grad, atol=1e-6)


def test_clipping_and_zero_mask():
    backbone = CountingLinear(WEIGHT)
    regularizer = AdversarialRegularizer(multiplier=1.0, adv_step_size=5.0, adv_grad_norm="linf",
                                         clip_value_min=0.0, clip_value_max=1.0)
    z = X.clone().requires_grad_(True)
    learner = StructuredLearner(backbone, [regularizer])
    step = TrainingStep(batch_of(X, Y), learner.backbone.head(z), learner.backbone, embedding=z)
    adversarial = regularizer.loss(step)
    # A huge step clipped to [0, 1] lands on a corner of the unit cube.
    labeled = Y >= 0
    (g,) = torch.autograd.grad(F.cross_entropy(z[labeled] @ WEIGHT.T, Y[labeled]), z)
    corner = (X + 5.0 * g.sign()).clamp(0, 1)
    assert torch.allclose(adversarial, F.cross_entropy(corner[labeled] @ WEIGHT.T, Y[labeled]), atol=1e-6)
    masked = AdversarialRegularizer(multiplier=1.0, adv_step_size=5.0, feature_mask=[0.0, 0.0, 0.0])
    clean = F.cross_entropy(X[labeled] @ WEIGHT.T, Y[labeled])
    assert torch.allclose(masked.loss(step), clean, atol=1e-6)


def test_token_ids_are_perturbed_in_embedding_space_and_embeddings_train():
    torch.manual_seed(0)
    backbone = TokenBag()
    learner = StructuredLearner(backbone, [AdversarialRegularizer(multiplier=1.0, adv_step_size=0.5)])
    learner.log = lambda *args, **kwargs: None
    x, y = torch.randint(0, 10, (4, 5)), torch.tensor([0, 1, 1, 0])
    loss = learner.training_step(batch_of(x, y), 0)
    clean = F.cross_entropy(backbone(x).logits, y)
    assert loss > clean * 1.0001  # the adversarial term adds a positive loss
    loss.backward()
    assert backbone.embedding.weight.grad is not None and backbone.embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("make", [lambda: CNN(1, 10, channels=[4], hidden_size=0),
                                  lambda: ResNet(1, 10, widths=[4, 8])], ids=["cnn", "resnet"])
def test_batch_norm_running_statistics_see_only_the_clean_pass(make):
    torch.manual_seed(0)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    backbones = [make() for _ in range(2)]
    backbones[1].load_state_dict(backbones[0].state_dict())
    reference, regularized = backbones
    reference.train()(x)  # clean pass only
    learner = StructuredLearner(regularized, [AdversarialRegularizer(adv_step_size=0.3, pgd_iterations=3,
                                                                     pgd_epsilon=0.3, adv_grad_norm="linf")])
    learner.log = lambda *args, **kwargs: None
    learner.train()
    learner.training_step(batch_of(x, y), 0)
    for (name, expected), got in zip(reference.state_dict().items(), regularized.state_dict().values()):
        if "running" in name or "num_batches" in name:
            assert torch.equal(expected, got), name


def test_bad_settings():
    with pytest.raises(ConfigError, match=r"^adv_grad_norm='l3' is not supported"):
        AdversarialRegularizer(adv_grad_norm="l3")
    with pytest.raises(ConfigError, match=r"^pgd_iterations=0"):
        AdversarialRegularizer(pgd_iterations=0)
    # A run names the setting by its config path.
    with pytest.raises(ConfigError, match=r"^regularizer\.adversarial\.pgd_iterations=0"):
        with config_scope("regularizer.adversarial."):
            AdversarialRegularizer(pgd_iterations=0)
    with pytest.raises(ConfigError, match=r"^adv_step_size=-1"):
        AdversarialRegularizer(adv_step_size=-1)
    with pytest.raises(ConfigError, match=r"pgd_epsilon"):
        AdversarialRegularizer(adv_grad_norm="l1", pgd_epsilon=0.1)
