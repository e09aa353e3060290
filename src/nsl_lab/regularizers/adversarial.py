"""Adversarial regularization: the supervised loss again on a steepest-ascent neighbour."""
from __future__ import annotations

from typing import Sequence

import torch

from nsl_lab.attacks.steepest_ascent import Norm, SteepestAscent, frozen_batch_norm_statistics
from nsl_lab.context import TrainingStep
from nsl_lab.losses import supervised_loss
from nsl_lab.regularizers.base import Regularizer


class AdversarialRegularizer(Regularizer):
    r"""Neural Structured Learning's adversarial regularization.

    .. math::
        \mathcal{L} = \mathcal{L}_\text{sup}(x) + \lambda\, \mathcal{L}_\text{sup}(x_\text{adv}),
        \qquad x_\text{adv} = z + \operatorname{sg}(\delta)

    where :math:`z` = ``backbone.embed(x)`` (the input itself for features and pixels, the
    input embedding for token ids) and :math:`\delta` comes from ``pgd_iterations`` steps of
    steepest ascent of :math:`\mathcal{L}_\text{sup}`: step ``adv_step_size`` along
    ``adv_grad_norm``'s unit direction per example (``linf``: sign, ``l2``:
    :math:`g/\lVert g\rVert_2`, ``l1``: the largest-:math:`|g|` coordinates), projected onto
    the ``pgd_epsilon`` ball (none = no projection) and clipped to
    ``[clip_value_min, clip_value_max]``; ``feature_mask`` zeroes coordinates that must not
    move, non-finite gradient entries count as 0 and :math:`\operatorname{sg}` stops the
    gradient through :math:`\delta`. The first step reuses the gradient of the clean loss
    that the learner's backward pass computes together with the parameters' gradients
    (``TrainingStep.embedding_grad``), so one step (FGSM) costs one extra forward and backward. Perturbation passes use batch statistics but leave batch norm running
    statistics untouched.

    Args:
        multiplier: :math:`\lambda` (NSL default 0.2).
        adv_step_size: step length (NSL default 0.001 for raw features; ~0.2 for [0, 1] pixels).
        adv_grad_norm: ``linf``, ``l2`` or ``l1``.
        pgd_iterations: ascent steps (1 = FGSM).
        pgd_epsilon: radius of the projection ball (``linf`` or ``l2``), or ``None``.
        random_init: start uniformly in the ``pgd_epsilon`` ball.
        clip_value_min, clip_value_max: value range of the perturbed input.
        feature_mask: 1 where a coordinate of one example may move, 0 where it must not.
        warmup_epochs: ramp :math:`\lambda` up linearly over these first epochs.
    """

    name = "adversarial"
    needs_embedding = True

    def __init__(
        self,
        multiplier: float = 0.2,
        adv_step_size: float = 0.001,
        adv_grad_norm: Norm = "l2",
        pgd_iterations: int = 1,
        pgd_epsilon: float | None = None,
        random_init: bool = False,
        clip_value_min: float | None = None,
        clip_value_max: float | None = None,
        feature_mask: Sequence | torch.Tensor | None = None,
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(multiplier, warmup_epochs)
        self.ascent = SteepestAscent(
            norm=adv_grad_norm, step_size=adv_step_size, steps=pgd_iterations, epsilon=pgd_epsilon,
            random_init=random_init, clip_min=clip_value_min, clip_max=clip_value_max,
            feature_mask=None if feature_mask is None else torch.as_tensor(feature_mask, dtype=torch.float32),
            names={"norm": "adv_grad_norm", "step_size": "adv_step_size", "steps": "pgd_iterations",
                   "epsilon": "pgd_epsilon"},
        )

    @property
    def reads_labels(self) -> bool:
        return True  # the supervised loss at the perturbed input

    def loss(self, step: TrainingStep) -> torch.Tensor | None:
        """The unscaled supervised loss on the adversarial neighbours of the batch."""
        batch, backbone = step.batch, step.backbone
        if not bool(batch.labeled.any()):
            return None
        extra = {} if batch.lengths is None else {"lengths": batch.lengths}
        z, clean_grad, output = step.embedding, step.embedding_grad, step.output
        if z is None or z.is_sparse or not z.requires_grad:
            # No usable embedding from the learner (e.g. sparse features): one more clean pass.
            z = backbone.embed(batch.x)
            z = (z.to_dense() if z.is_sparse else z).detach().requires_grad_(True)
            clean_grad = None
            output = backbone.head(z, **extra)
        if clean_grad is None:  # called outside the learner's training step
            (clean_grad,) = torch.autograd.grad(supervised_loss(output.logits, batch.y), z, retain_graph=True)

        def loss_at(point: torch.Tensor) -> torch.Tensor:
            return supervised_loss(backbone.head(point, **extra).logits, batch.y)

        with frozen_batch_norm_statistics(backbone):
            delta = self.ascent.perturbation(z, loss_at, first_grad=clean_grad)
            # A learned embedding trains through both terms (z keeps its graph); raw inputs need
            # no gradient here, and delta never carries one.
            return loss_at((z if z.grad_fn is not None else z.detach()) + delta)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.ascent.describe()}"
