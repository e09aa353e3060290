"""TRADES: the robustness half of Zhang et al.'s trade-off, a KL between the clean and the
worst-case predictions in a norm ball."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from nsl_lab.attacks.steepest_ascent import (
    BallNorm, SteepestAscent, check_clip, frozen_batch_norm_statistics, project,
)
from nsl_lab.context import TrainingStep
from nsl_lab.errors import check_choice, check_flag, check_range
from nsl_lab.modules.backbone import Backbone
from nsl_lab.regularizers.base import Regularizer
from nsl_lab.regularizers.virtual_adversarial import embedded_inputs, kl_from_logits


@contextlib.contextmanager
def evaluation_mode(module: nn.Module, enabled: bool = True) -> Iterator[None]:
    """``module`` in eval mode inside the block; every sub-module's own mode restored after."""
    if not enabled:
        yield
        return
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class TRADESRegularizer(Regularizer):
    r"""TRADES (Zhang, Yu, Jiao, Xing, El Ghaoui and Jordan 2019, "Theoretically Principled
    Trade-off between Robustness and Accuracy", ICML): the boundary term of

    .. math::
        \mathcal{L} = \mathrm{CE}(f(x_L), y_L) + \beta\, \ell,\qquad
        \ell = \frac{1}{B}\sum_{i=1}^{B}
            \mathrm{KL}\big(p(\cdot\mid z_i) \,\Vert\, p(\cdot\mid \operatorname{sg}(z'_i))\big)

    over **every** row of the batch (labeled or not), where :math:`z` = ``backbone.embed(x)``
    (the input itself for features and pixels, the word vectors for token ids),
    :math:`p(\cdot\mid z)` the softmax of ``backbone.head(z)`` and :math:`z'` the
    approximate maximiser of the same KL inside the ``epsilon`` ball (the paper's
    Algorithm 1):

    .. math::
        z'_0 = \Pi\big(z + 0.001\,\mathcal{N}(0, I)\big),\qquad
        z'_{t+1} = \Pi\Big(z'_t + \alpha\, u\big(\nabla_{z'} \mathrm{KL}(\operatorname{sg} p(z) \Vert p(z'_t))\big)\Big)

    for ``steps`` steps, with :math:`u` the unit direction of ``norm`` (``linf``: sign,
    ``l2``: :math:`g/\lVert g\rVert_2`; non-finite entries count as 0) and :math:`\Pi` the
    projection onto the ``epsilon`` ball around :math:`z` followed by clipping into
    ``[clip_value_min, clip_value_max]``.

    As in the paper, the gradient of :math:`\ell` flows through both :math:`p(z)` (the
    learner's clean forward pass, ``step.output``, shared with the supervised loss) and
    :math:`p(z')`; :math:`z'` itself is a constant. The attack runs with the backbone in
    eval mode (``attack_in_eval_mode``, as the authors' reference code; dropout off, batch
    norm on its running statistics), every module's mode restored afterwards; the final pass
    on :math:`z'` runs in the caller's mode with batch norm's running statistics frozen.

    Args:
        multiplier: :math:`\beta = 1/\lambda`, the robustness weight (the paper's 6.0).
        epsilon: radius of the ball (default 0.031, the paper's CIFAR-10 setting for
            [0, 1] pixels; 0.3 for MNIST).
        step_size: :math:`\alpha` (``None``: ``epsilon / 4``; the paper: 0.007 for
            CIFAR-10, 0.01 for MNIST).
        steps: ascent steps (default 10, the paper's CIFAR-10 setting; MNIST 40).
        norm: ``linf`` (default, the paper) or ``l2``.
        clip_value_min, clip_value_max: value range of the perturbed input (``None``:
            unbounded; [0, 1] for pixels).
        attack_in_eval_mode: generate :math:`z'` with the backbone in eval mode.
        warmup_epochs: ramp :math:`\beta` up linearly over these first epochs.
        generator: draws the random start (on the CPU, so a seed reproduces it on any
            device); ``None``: torch's global generator.

    Shapes: ``batch.x`` ``[B, ...]``, :math:`z` and :math:`z'` ``[B, ...]`` (the ball per
    example over all trailing axes), logits ``[B, C]``; the loss is a scalar.
    """

    name = "trades"
    #: the clean term backpropagates through the learner's clean output, so the clean graph
    #: must be kept (the learner keeps it for regularizers that do not need the embedding)
    needs_embedding = False
    #: standard deviation of the Gaussian random start (the paper's 0.001)
    start_std = 0.001

    def __init__(
        self,
        multiplier: float = 6.0,
        epsilon: float = 0.031,
        step_size: float | None = None,
        steps: int = 10,
        norm: BallNorm = "linf",
        clip_value_min: float | None = None,
        clip_value_max: float | None = None,
        attack_in_eval_mode: bool = True,
        warmup_epochs: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(multiplier, warmup_epochs)
        check_choice("norm", norm, BallNorm)
        check_range("epsilon", epsilon, 0.0)
        check_clip(clip_value_min, clip_value_max, ("clip_value_min", "clip_value_max"))
        if step_size is None:
            step_size = epsilon / 4
        self.ascent = SteepestAscent(norm=norm, step_size=step_size, steps=steps, epsilon=float(epsilon),
                                     clip_min=clip_value_min, clip_max=clip_value_max)
        self.attack_in_eval_mode = check_flag("attack_in_eval_mode", attack_in_eval_mode)
        self.generator = generator

    @property
    def epsilon(self) -> float:
        return float(self.ascent.epsilon)

    def adversarial_point(
        self,
        backbone: Backbone,
        z: torch.Tensor,
        clean_logits: torch.Tensor | None = None,
        extra: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        r"""The detached :math:`z'` for embeddings ``z`` (``[B, ...]``). The attack's target
        :math:`p(z)` is ``clean_logits`` (``[B, C]``) when given, else a clean pass in the
        attack's mode."""
        extra = extra or {}
        z = z.detach()
        generator = generator if generator is not None else self.generator
        with evaluation_mode(backbone, self.attack_in_eval_mode), frozen_batch_norm_statistics(backbone):
            if clean_logits is None:
                with torch.no_grad():
                    clean_logits = backbone.head(z, **extra).logits
            target = clean_logits.detach()
            noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
            delta = self.ascent.clip(z, project(self.start_std * noise, self.ascent.norm, self.epsilon))
            for _ in range(self.ascent.steps):
                point = (z + delta).requires_grad_(True)
                with torch.enable_grad():
                    kl = kl_from_logits(target, backbone.head(point, **extra).logits, reduction="sum")
                    (grad,) = torch.autograd.grad(kl, point)
                delta = self.ascent.step(z, delta, grad).detach()
        return (z + delta).detach()

    def loss(self, step: TrainingStep) -> torch.Tensor | None:
        """The unscaled KL between the clean and the adversarial predictions, averaged over
        every row of the batch."""
        batch, backbone = step.batch, step.backbone
        if batch.x.shape[0] == 0:
            return None
        z, extra = embedded_inputs(step)
        # Train-mode clean logits as the target when the attack runs in train mode too.
        target = None if self.attack_in_eval_mode else step.output.logits
        point = self.adversarial_point(backbone, z, target, extra)
        if z.grad_fn is not None:  # a learned embedding trains through the adversarial term too
            point = z + (point - z.detach())
        with frozen_batch_norm_statistics(backbone):
            return kl_from_logits(step.output.logits, backbone.head(point, **extra).logits)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.ascent.describe()}" + \
            ("" if self.attack_in_eval_mode else ", attack_in_eval_mode=False")
