"""Class-balance regularization: the batch's mean prediction stays near a class prior."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from nsl_lab.context import TrainingStep
from nsl_lab.errors import check_choice, check_range
from nsl_lab.regularizers.base import Regularizer

Prior = Literal["labeled", "uniform"]


class ClassBalanceRegularizer(Regularizer):
    r"""Keeps the mean predicted class distribution of a batch close to a prior.

    With :math:`\bar p = \frac{1}{N}\sum_{i} \mathrm{softmax}(f(x_i))` over every row of the
    batch (unlabeled rows included) and the prior :math:`\pi`:

    .. math::
        \mathcal{R} = \lambda\, \mathrm{KL}(\pi \,\|\, \bar p)
        = \lambda \sum_c \pi_c \log \frac{\pi_c}{\bar p_c}

    or, with ``min_share`` :math:`\rho`, only the shortfall below :math:`\rho` times the prior:

    .. math::
        \mathcal{R} = \lambda \sum_c \pi_c \max\Big(0, \log \frac{\rho\, \pi_c}{\bar p_c}\Big)

    ``prior="labeled"`` takes :math:`\pi_c = (n_c + s) / (n_L + C s)` from the labeled rows'
    class counts :math:`n_c` (add-``s`` smoothing, ``smoothing``); ``"uniform"`` takes
    :math:`1 / C`. A smoothness term over many unlabeled nodes (Neural Graph Machines'
    unlabeled-unlabeled edges) can reach a near-zero loss by predicting one class everywhere
    when labels are very scarce; this term makes that collapse expensive while leaving any
    prediction with the prior's class proportions free. ``min_share`` suits priors that are
    only a rough guide (Planetoid's public split labels 20 nodes of every class, although the
    classes are far from balanced): any prediction that gives each class at least
    :math:`\rho` of its prior share costs nothing.

    Args:
        multiplier: :math:`\lambda`.
        prior: ``labeled`` or ``uniform``.
        smoothing: :math:`s`, pseudo-count added to each class of the labeled prior.
        min_share: :math:`\rho` in (0, 1]; ``None`` = the full KL divergence.
        warmup_epochs: see :class:`~nsl_lab.regularizers.base.Regularizer`.
    """

    name = "balance"

    def __init__(
        self,
        multiplier: float = 1.0,
        prior: Prior = "labeled",
        smoothing: float = 1.0,
        min_share: float | None = None,
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(multiplier, warmup_epochs)
        self.prior = check_choice("prior", prior, Prior)
        self.smoothing = float(check_range("smoothing", smoothing, 0.0))
        if min_share is not None:
            min_share = float(check_range("min_share", min_share, 0.0, 1.0, low_inclusive=False))
        self.min_share = min_share

    @property
    def reads_labels(self) -> bool:
        return self.prior == "labeled"

    def class_prior(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """:math:`\\pi` for labels ``y`` (``-1`` = unlabeled), on ``y``'s device.

        Counted with ``index_add_`` rather than boolean indexing: no device-to-host sync
        on each training step."""
        uniform = torch.full((num_classes,), 1.0 / num_classes, device=y.device)
        if self.prior == "uniform":
            return uniform
        labeled = (y >= 0).float()
        counts = torch.zeros(num_classes, device=y.device).index_add_(0, y.clamp_min(0), labeled) + self.smoothing
        total = counts.sum()
        # No label and no smoothing: nothing to match but uniform.
        return torch.where(total > 0, counts / total.clamp_min(1e-12), uniform)

    def balance_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The unscaled term: :math:`\\mathrm{KL}(\\pi \\| \\bar p)` or its ``min_share`` hinge."""
        prior = self.class_prior(y, logits.shape[-1]).to(logits)
        log_mean_prediction = F.softmax(logits, dim=-1).mean(0).clamp_min(1e-12).log()
        # Classes with prior 0 contribute 0 (0 log 0 = 0); the clamp only keeps their log finite.
        safe_prior = prior.clamp_min(1e-12)
        if self.min_share is None:
            gap = safe_prior.log() - log_mean_prediction
        else:
            gap = ((self.min_share * safe_prior).log() - log_mean_prediction).clamp_min(0.0)
        return torch.where(prior > 0, prior * gap, torch.zeros_like(prior)).sum()

    def loss(self, step: TrainingStep) -> torch.Tensor:
        return self.balance_loss(step.output.logits, step.batch.y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, prior={self.prior!r}, smoothing={self.smoothing}, min_share={self.min_share}"
