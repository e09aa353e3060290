"""Small models with known answers, shared by the attack and regularizer tests."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nsl_lab import Backbone, Batch, Output
from nsl_lab.attacks.apgd import logit_margin
from nsl_lab.regularizers import TrainingStep

# w_0 - w_1 = [0.8, -3, 1.5, 3]: L1 norm 8.3, L2 norm sqrt(20.89)
WEIGHT = [[1.0, -2.0, 0.5, 3.0], [0.2, 1.0, -1.0, 0.0]]
# (w_0 - w_1) x = 2.3, -3, 1.6, -3.05, 2.1: margins 2.3, 3, 1.6, 3.05, 2.1 (classes 0, 1, 0, 1, 0)
ROWS = [[1.0, 0.0, 0.0, 0.5], [0.0, 1.0, 0.0, 0.0], [0.5, 0.0, 0.4, 0.2], [-1.0, 0.5, -0.5, 0.0], [0.0, 0.0, 1.0, 0.2]]


# -- attacks: plain nn.Modules ------------------------------------------------------------------------

def linear_model(weight: list[list[float]] = WEIGHT) -> nn.Linear:
    """Logits = W x (no bias): the input gradient of CE is W^T (softmax(Wx) - onehot(y))."""
    model = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(weight))
    return model


def two_class_problem() -> tuple[nn.Linear, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(model, x, y, w_y - w_other per row)`` of :data:`WEIGHT` on :data:`ROWS`, each row
    labeled with its predicted class: the worst perturbation runs along ``-direction``."""
    model = linear_model()
    x = torch.tensor(ROWS)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, x, y, (model.weight[y] - model.weight[1 - y]).detach()


def worst_case(x: torch.Tensor, y: torch.Tensor, direction: torch.Tensor, eps: float, norm: str
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(margins, x')`` at the closed-form worst point of :func:`two_class_problem` in the ``norm``
    ball of radius ``eps``: the margin ``(w_y - w_o) . x'`` is least at ``x - eps sign(w_y - w_o)``
    in Linf (margin - eps * L1 norm = margin - 0.83 at eps 0.1) and at ``x - eps (w_y - w_o) /
    ||w_y - w_o||_2`` in L2 (margin - eps * L2 norm)."""
    model = linear_model()
    if norm == "linf":
        step, length = direction.sign(), direction.abs().sum(dim=1)
    else:
        step, length = direction / direction.norm(dim=1, keepdim=True), direction.norm(dim=1)
    return margins(model, x, y) - eps * length, x - eps * step


def margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return logit_margin(model(x), y)


def trained_mlp(seed: int = 0, n: int = 400, steps: int = 300) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A small MLP fit (``steps`` full-batch Adam steps) to four overlapping Gaussian blobs in 10-D."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 10, generator=g) * 0.8
    y = torch.randint(0, 4, (n,), generator=g)
    x = centers[y] + torch.randn(n, 10, generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return model, x, y


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy over the labeled rows (``y >= 0``)."""
    labeled = y >= 0
    with torch.no_grad():
        return int((model(x).argmax(dim=1) == y)[labeled].sum()) / int(labeled.sum())


def assert_in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str, clip: bool = False,
                   unchanged: torch.Tensor | None = None) -> None:
    """Every row of ``x_adv`` lies within ``eps`` of ``x`` in ``norm`` (to float32 rounding), in
    ``[0, 1]`` with ``clip``, and equals ``x`` on the ``unchanged`` rows."""
    delta = (x_adv - x).flatten(1)
    length = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    assert (length <= eps * (1 + 1e-5) + 1e-6).all(), length.max()
    if clip:
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    if unchanged is not None:
        assert torch.equal(x_adv[unchanged], x[unchanged])


class ModeRecorder(nn.Module):
    """Identity that records whether it ran in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(self.training)
        return x


def modes_under_attack(attack, training: bool, classes: int = 3) -> tuple[nn.Module, list[bool]]:
    """Runs ``attack(model, x, y)`` on a dropout MLP left in ``training`` mode: ``(model, the
    modes its forward passes ran in)``."""
    recorder = ModeRecorder()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), recorder, nn.Linear(8, classes))
    model.train(training)
    x, y = torch.randn(6, 4), torch.randint(0, classes, (6,))
    attack(model, x, y)
    return model, recorder.seen


# -- regularizers: backbones and training steps -------------------------------------------------------

class LinearBackbone(Backbone):
    """Logits = W z (no bias), ``embed`` the identity; records the mode of every forward pass."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False).to(weight.dtype)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
        self.in_features, self.num_classes, self.modes = weight.shape[1], weight.shape[0], []

    def head(self, z, **_):
        self.modes.append(self.training)
        logits = self.linear(z)
        return Output(logits, logits)


def step_of(backbone: Backbone, x: torch.Tensor, y: torch.Tensor) -> TrainingStep:
    """The training step a learner would hand a regularizer for this batch."""
    batch = Batch(x=x, y=y, index=torch.arange(len(y)))
    return TrainingStep(batch, backbone(x), backbone, num_classes=backbone.num_classes)


def hand_kl(clean_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per row, KL(softmax(clean_logits) || softmax(logits)) written out."""
    p, q = clean_logits.softmax(-1), logits.softmax(-1)
    return (p * (p.log() - q.log())).sum(-1)
