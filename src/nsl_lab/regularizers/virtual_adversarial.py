"""Virtual adversarial training: smoothness of the predicted distribution along its most
sensitive direction, labels not needed."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from nsl_lab.attacks.steepest_ascent import (
    TINY, BallNorm, check_clip, frozen_batch_norm_statistics, steepest_direction,
)
from nsl_lab.context import TrainingStep
from nsl_lab.errors import check_choice, check_integer, check_range
from nsl_lab.modules.backbone import Backbone
from nsl_lab.regularizers.base import Regularizer


def kl_from_logits(clean_logits: torch.Tensor, logits: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    r""":math:`\mathrm{KL}(p \,\Vert\, q)` between ``softmax(clean_logits)`` and ``softmax(logits)``
    (``[B, C]`` each), per row summed over classes; ``batchmean``: averaged over the rows,
    ``sum``: summed over them, ``none``: ``[B]``. A KL is never negative but its float
    round-off can be (nearly identical distributions): each row's value is clamped at 0 while
    its gradient stays the exact one (a plain clamp would zero the tiny gradients that VAT's
    finite difference relies on)."""
    log_p, log_q = F.log_softmax(clean_logits, dim=-1), F.log_softmax(logits, dim=-1)
    per_row = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    per_row = per_row + (per_row.clamp_min(0.0) - per_row).detach()
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    return per_row.mean() if per_row.numel() else per_row.sum()


def unit_l2(values: torch.Tensor) -> torch.Tensor:
    """Each example (first axis) divided by its L2 norm (a zero example stays zero)."""
    norms = values.flatten(1).norm(dim=1).clamp_min(TINY)
    return values / norms.reshape(-1, *([1] * (values.dim() - 1)))


def finite(values: torch.Tensor) -> torch.Tensor:
    """Non-finite entries replaced by 0."""
    return torch.where(torch.isfinite(values), values, torch.zeros_like(values))


def embedded_inputs(step: TrainingStep) -> tuple[torch.Tensor, dict]:
    """The batch's dense input embedding ``z`` (the learner's when it has one) and the extra
    arguments of ``backbone.head`` (token lengths)."""
    batch = step.batch
    extra = {} if batch.lengths is None else {"lengths": batch.lengths}
    z = step.embedding
    if z is None or z.is_sparse or not z.is_floating_point():
        z = step.backbone.embed(batch.x)
        z = z.to_dense() if z.is_sparse else z
    return z, extra


class VirtualAdversarialRegularizer(Regularizer):
    r"""Virtual adversarial training (Miyato, Maeda, Koyama and Ishii 2018, "Virtual
    Adversarial Training: A Regularization Method for Supervised and Semi-Supervised
    Learning", TPAMI), with the settings of Neural Structured Learning's
    ``nsl.lib.virtual_adv_regularizer``.

    .. math::
        \ell = \frac{1}{B}\sum_{i=1}^{B}
            \mathrm{KL}\big(\operatorname{sg}(p(\cdot\mid z_i)) \,\Vert\, p(\cdot\mid z_i + r_i)\big),
        \qquad r_i = \epsilon\, u\big(g_i\big)

    over **every** row of the batch (labeled or not: ``y < 0`` rows count, so unlabeled rows
    shape the model), where :math:`z` = ``backbone.embed(x)`` (the input itself for features
    and pixels, the looked-up word vectors for token ids), :math:`p(\cdot\mid z)` the softmax of
    ``backbone.head(z)`` and :math:`\operatorname{sg}` the stop-gradient. The virtual
    adversarial direction comes from ``num_approx`` power iterations on the Hessian
    :math:`H_i` of :math:`r \mapsto \mathrm{KL}(p(z_i) \Vert p(z_i + r))` at :math:`r = 0`
    (the KL's gradient vanishes there, so :math:`\nabla_r \mathrm{KL}(\xi d) \approx \xi H d`):

    .. math::
        d \sim \mathcal{N}(0, I),\qquad
        \text{repeat } K \text{ times: } g_i = \nabla_{r}\,
            \mathrm{KL}\big(p(z_i) \Vert p(z_i + r)\big)\big|_{r = \xi\, d_i / \lVert d_i\rVert_2},
            \quad d_i \leftarrow g_i

    and :math:`u` is the unit direction of ``adv_grad_norm``: ``l2``
    :math:`g/\lVert g\rVert_2` (the paper's :math:`r_\text{vadv}`, the top eigenvector of
    :math:`H_i` as :math:`K` grows), ``linf`` :math:`\operatorname{sign}(g)` (steepest ascent of
    the linearised KL in the :math:`L_\infty` ball). The iterations always normalise
    :math:`d` per example in :math:`L_2` (that is what a power iteration does); non-finite
    gradient entries count as 0, and a zero gradient (a constant model) gives :math:`r = 0`
    and :math:`\ell = 0`. With ``clip_value_min`` / ``clip_value_max`` the perturbed point is
    clipped into that range (:math:`\lVert r_i\rVert` can then shrink). ``num_approx = 0``
    perturbs along the random direction itself (the paper's random perturbation training).

    The clean distribution :math:`p(z)` is the learner's clean forward pass
    (``step.output``, detached). The power iterations run with batch norm's running
    statistics frozen and without gradients for the parameters; :math:`r` is a constant
    (detached), so the gradient of :math:`\ell` reaches the parameters only through
    :math:`p(z + r)`, and a learned embedding trains through :math:`z`.

    Args:
        multiplier: :math:`\alpha`, weight of the term (the paper's default 1.0).
        adv_step_size: :math:`\epsilon`, the perturbation radius (default 1.0). It is in
            the units of :math:`z`: pick it against the inputs' typical per-example norm
            (an 8x8 digit in [0, 1] has an L2 norm of about 4, a row-normalised Cora
            feature row about 0.25); the paper tunes it per dataset.
        adv_grad_norm: ``l2`` (default) or ``linf``: the norm :math:`\epsilon` is measured in.
        approx_difference: :math:`\xi`, the finite-difference length of the power
            iteration (default 1e-2, in the units of :math:`z`). NSL's and the paper's 1e-6
            is below float32 resolution for inputs of order 1: :math:`z + \xi d` rounds to
            :math:`z`, the KL's gradient is rounding noise and the direction is random
            (cosine 0.00 to the float64 power iteration on a digits CNN; 0.99 for
            :math:`\xi` in [1e-3, 1e-2]; ``tests/regularizers/test_virtual_adversarial.py``).
        num_approx: :math:`K`, power iterations (default 1, as the paper).
        clip_value_min, clip_value_max: value range of the perturbed input (``None``:
            unbounded).
        warmup_epochs: ramp :math:`\alpha` up linearly over these first epochs.
        generator: draws the random start :math:`d` (on the CPU, so a seed reproduces it
            on any device); ``None``: torch's global generator.

    NSL names: ``multiplier``, ``adv_step_size``, ``adv_grad_norm`` (NSL's ``'l2'`` /
    ``'infinity'`` are ``l2`` / ``linf`` here), ``approx_difference``, ``num_approx``,
    ``clip_value_min`` / ``clip_value_max``; NSL's ``embedding_fn`` is ``backbone.head``
    here and its ``embeddings`` are :math:`z` = ``backbone.embed(x)``.

    Shapes: ``batch.x`` ``[B, ...]`` (anything ``embed`` takes), :math:`z` and :math:`r`
    ``[B, ...]`` (norms per example over all trailing axes), logits ``[B, C]``; the loss
    is a scalar.
    """

    name = "vat"
    needs_embedding = True

    def __init__(
        self,
        multiplier: float = 1.0,
        adv_step_size: float = 1.0,
        adv_grad_norm: BallNorm = "l2",
        approx_difference: float = 1e-2,
        num_approx: int = 1,
        clip_value_min: float | None = None,
        clip_value_max: float | None = None,
        warmup_epochs: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(multiplier, warmup_epochs)
        self.adv_step_size = float(check_range("adv_step_size", adv_step_size, 0.0))
        self.adv_grad_norm = check_choice("adv_grad_norm", adv_grad_norm, BallNorm)
        self.approx_difference = float(check_range("approx_difference", approx_difference, 0.0, low_inclusive=False))
        self.num_approx = check_integer("num_approx", num_approx, 0)
        check_clip(clip_value_min, clip_value_max, ("clip_value_min", "clip_value_max"))
        self.clip_value_min, self.clip_value_max = clip_value_min, clip_value_max
        self.generator = generator

    def perturbation(
        self,
        backbone: Backbone,
        z: torch.Tensor,
        clean_logits: torch.Tensor,
        extra: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The detached virtual adversarial perturbation :math:`r` (``z.shape``) for the
        embeddings ``z`` (``[B, ...]``) whose clean logits are ``clean_logits`` (``[B, C]``)."""
        extra = extra or {}
        z = z.detach()
        target = clean_logits.detach()
        generator = generator if generator is not None else self.generator
        # Drawn in float32 whatever z's dtype, so a seed gives the same start in any precision.
        direction = torch.randn(z.shape, generator=generator).to(dtype=z.dtype, device=z.device)
        with frozen_batch_norm_statistics(backbone), torch.enable_grad():
            for _ in range(self.num_approx):
                r = (self.approx_difference * unit_l2(direction)).requires_grad_(True)
                # Summed over rows: each example's gradient is its own (the scale is normalised away).
                kl = kl_from_logits(target, backbone.head(z + r, **extra).logits, reduction="sum")
                (grad,) = torch.autograd.grad(kl, r)
                direction = finite(grad.detach())
        r_adv = self.adv_step_size * steepest_direction(direction, self.adv_grad_norm)
        if self.clip_value_min is not None or self.clip_value_max is not None:
            r_adv = (z + r_adv).clamp(self.clip_value_min, self.clip_value_max) - z
        return r_adv.detach()

    def loss(self, step: TrainingStep) -> torch.Tensor | None:
        """The unscaled KL between the clean and the virtually adversarial predictions,
        averaged over every row of the batch."""
        batch, backbone = step.batch, step.backbone
        if batch.x.shape[0] == 0:
            return None
        z, extra = embedded_inputs(step)
        clean_logits = step.output.logits.detach()
        r_adv = self.perturbation(backbone, z, clean_logits, extra)
        with frozen_batch_norm_statistics(backbone):
            # A learned embedding trains through z (it keeps its graph); raw inputs need no
            # gradient here, and r_adv never carries one.
            point = (z if z.grad_fn is not None else z.detach()) + r_adv
            return kl_from_logits(clean_logits, backbone.head(point, **extra).logits)

    def extra_repr(self) -> str:
        parts = [super().extra_repr(), f"adv_step_size={self.adv_step_size}", f"adv_grad_norm={self.adv_grad_norm!r}",
                 f"approx_difference={self.approx_difference}", f"num_approx={self.num_approx}"]
        if self.clip_value_min is not None or self.clip_value_max is not None:
            parts.append(f"clip=[{self.clip_value_min}, {self.clip_value_max}]")
        return ", ".join(parts)
