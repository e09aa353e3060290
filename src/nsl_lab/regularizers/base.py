"""The regularizer contract: subclasses write the unscaled loss, the base class does the rest."""
from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import nn

from nsl_lab.batch import Batch
from nsl_lab.context import GraphData, Requirement, TrainingStep
from nsl_lab.errors import check_integer, check_range
from nsl_lab.modules.backbone import Output


class Regularizer(nn.Module):
    r"""A term added to the supervised loss.

    .. math:: \mathcal{R} = \lambda_e\, \ell(\text{step}),\qquad
        \lambda_e = \lambda \min\!\big(1, \tfrac{e + 1}{\text{warmup\_epochs}}\big)

    A subclass writes :meth:`loss` (the unscaled :math:`\ell`, or ``None`` when there is
    nothing to regularise in this step) and, when it needs graph-level data, :meth:`setup`.
    The base class scales by ``multiplier``, ramps it over ``warmup_epochs`` and returns an
    exact zero term for ``None``. The learner logs the term as ``train/<config name>_loss``.

    Class attributes a subclass may set:
        name: default config name (log name when regularizers come as a list).
        needs_embedding: the step must carry the input embedding and its clean gradient.
        input_kinds: the datamodule input kinds (``features``, ``images``, ``tokens``) the term
            works on, checked before any data is loaded (``None``: any).

    Args:
        multiplier: :math:`\lambda`, weight of the term in the total loss.
        warmup_epochs: ramp the multiplier linearly from ``multiplier / warmup_epochs`` up
            to ``multiplier`` over the first epochs (0: full weight from the start), so a
            smoothness term cannot settle on a constant prediction before the labels speak.
    """

    name: ClassVar[str] = "regularizer"
    needs_embedding: ClassVar[bool] = False
    input_kinds: ClassVar[frozenset[str] | None] = None

    def __init__(self, multiplier: float = 1.0, warmup_epochs: int = 0) -> None:
        super().__init__()
        self.multiplier = float(check_range("multiplier", multiplier, 0.0))
        self.warmup_epochs = check_integer("warmup_epochs", warmup_epochs, 0)

    @property
    def requirements(self) -> frozenset[Requirement]:
        """What this regularizer needs of the data (checked before any data is loaded)."""
        return frozenset()

    @property
    def reads_labels(self) -> bool:
        """Whether the term depends on which rows are labeled or on their classes. Label-free
        pretraining (``learner=representation``) accepts only terms that do not."""
        return False

    def weight(self, epoch: int) -> float:
        """The multiplier at ``epoch`` (0-based)."""
        if not self.warmup_epochs:
            return self.multiplier
        return self.multiplier * min(1.0, (epoch + 1) / self.warmup_epochs)

    def setup(self, data: GraphData) -> None:
        """Called once at fit start with the datamodule's graph-level data."""

    def refresh_at(self, epoch: int) -> bool:
        """Whether :meth:`refresh` runs at the start of ``epoch``."""
        return False

    def refresh(self, data: GraphData, backbone: Callable[[Batch], Output]) -> None:
        """Called at the start of every epoch where :meth:`refresh_at` says so, with the
        backbone in eval mode (no gradients)."""

    def loss(self, step: TrainingStep) -> torch.Tensor | None:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, step: TrainingStep) -> torch.Tensor:
        loss = self.loss(step)
        if loss is None:
            return step.output.logits.new_zeros(())
        return self.weight(step.epoch) * loss

    def reset_parameters(self) -> None:
        """Regularizers without parameters have nothing to reset."""

    def extra_repr(self) -> str:
        return f"multiplier={self.multiplier}" + (f", warmup_epochs={self.warmup_epochs}" if self.warmup_epochs else "")

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.extra_repr()})"
