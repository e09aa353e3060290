"""White-box gradient attacks for evaluation: FGSM and PGD, ``attack(model, x, y) -> x_adv``."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from nsl_lab.attacks.steepest_ascent import BallNorm, Norm, SteepestAscent, _per_example, eval_mode
from nsl_lab.errors import check_choice, check_integer, check_range
from nsl_lab.losses import summed_supervised_loss
from nsl_lab.modules.backbone import as_output

AttackName = Literal["fgsm", "pgd"]


def attack_loss(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the labeled rows (``y >= 0``): each example's gradient is its own."""
    return summed_supervised_loss(as_output(model(x_adv)).logits, y)


class GradientAttack:
    """Shared ``__call__`` of FGSM and PGD: runs :class:`SteepestAscent` on the model's
    cross-entropy with the model in eval mode (dropout off, batch norm on its running
    statistics), then restores the model's mode. Accumulates no parameter gradients and
    keeps no state between calls; ``generator`` seeds the random start. Unlabeled rows
    (``y < 0``) come back unchanged."""

    def __init__(self, ascent: SteepestAscent, epsilon: float, generator: torch.Generator | None = None) -> None:
        self.ascent, self.epsilon, self.generator = ascent, float(epsilon), generator

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.epsilon == 0.0:
            return x.detach().clone()
        with eval_mode(model):
            delta = self.ascent.perturbation(x, lambda point: attack_loss(model, point, y), generator=self.generator)
        # Unlabeled rows have no loss to raise: only the random start would move them.
        delta = delta * _per_example((y >= 0).to(delta.dtype), delta)
        return (x.detach() + delta).detach()

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(epsilon={self.epsilon}, {self.ascent.describe()})"


class FGSM(GradientAttack):
    r"""Fast gradient (sign) method: one step of size :math:`\epsilon` along the steepest
    ascent direction of the loss for ``norm``.

    .. math:: x_\text{adv} = \operatorname{clip}\big(x + \epsilon\, d(\nabla_x \mathrm{CE}(f(x), y))\big)

    ``norm="linf"`` is Goodfellow et al.'s sign step; ``l2`` the normalised gradient; ``l1``
    a step onto the vertex of the L1 ball at the largest gradient coordinate.

    Args:
        eps: :math:`\epsilon`.
        norm: ``linf``, ``l2`` or ``l1``.
        clip_min, clip_max: value range of the inputs (e.g. 0 and 1 for pixels).
    """

    def __init__(self, eps: float, norm: Norm = "linf", clip_min: float | None = None,
                 clip_max: float | None = None) -> None:
        check_range("eps", eps, 0.0)
        ascent = SteepestAscent(norm=norm, step_size=eps, steps=1, clip_min=clip_min, clip_max=clip_max,
                                names={"step_size": "eps"})
        super().__init__(ascent, eps)


class PGD(GradientAttack):
    r"""Projected gradient descent (Madry et al.): ``steps`` steepest-ascent steps of size
    ``step_size`` (default :math:`2.5\,\epsilon / \text{steps}`), each projected onto the
    ``norm`` ball of radius :math:`\epsilon` around :math:`x` and clipped to the value range,
    from a random start in the ball when ``random_start``.

    Args:
        eps: :math:`\epsilon`.
        norm: ``linf`` or ``l2``.
        steps: number of steps.
        step_size: step length (``None``: :math:`2.5\,\epsilon/\text{steps}`).
        random_start: start uniformly in the ball instead of at :math:`x`.
        clip_min, clip_max: value range of the inputs.
        generator: CPU generator for the random start (``None``: torch's global one).
    """

    def __init__(self, eps: float, norm: BallNorm = "linf", steps: int = 20, step_size: float | None = None,
                 random_start: bool = True, clip_min: float | None = None, clip_max: float | None = None,
                 generator: torch.Generator | None = None) -> None:
        check_range("eps", eps, 0.0)
        check_choice("norm", norm, BallNorm)
        check_integer("steps", steps, 1)
        step_size = 2.5 * eps / steps if step_size is None else step_size
        ascent = SteepestAscent(norm=norm, step_size=step_size, steps=steps, epsilon=eps,
                                random_init=random_start, clip_min=clip_min, clip_max=clip_max,
                                names={"epsilon": "eps", "random_init": "random_start"})
        super().__init__(ascent, eps, generator)


def make_attack(name: AttackName, eps: float, norm: Norm = "linf", steps: int = 20, step_size: float | None = None,
                random_start: bool = True, clip_min: float | None = None,
                clip_max: float | None = None) -> GradientAttack:
    """A gradient attack by name (``fgsm`` or ``pgd``), from its settings."""
    check_choice("name", name, AttackName)
    if name == "fgsm":
        return FGSM(eps, norm, clip_min, clip_max)
    return PGD(eps, norm, steps, step_size, random_start, clip_min, clip_max)
