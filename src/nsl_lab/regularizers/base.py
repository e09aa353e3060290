"""The regularizer contract."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from nsl_lab.batch import Batch
from nsl_lab.errors import check_integer, check_range
from nsl_lab.modules.output import Output

if TYPE_CHECKING:
    from nsl_lab.modules.learner import StructuredLearner


class Regularizer(nn.Module):
    """A term added to the supervised loss.

    ``forward(learner, batch, output) -> (scaled_loss, logs)`` where ``output`` is the
    backbone's output on ``batch.x``. A regularizer may call ``learner.backbone`` again
    (neighbours' inputs, perturbed embeddings) but holds no optimizer and no data. The
    learner logs the scaled term as ``train/<config name>_loss``; ``logs`` holds any extra
    diagnostics (detached scalars), logged as ``train/<config name>/<key>``.

    Args:
        multiplier: weight of the term in the total loss.
        warmup_epochs: ramp the multiplier linearly from ``multiplier / warmup_epochs`` up
            to ``multiplier`` over the first epochs (0: full weight from the start), so a
            smoothness term cannot settle on a constant prediction before the labels speak.
    """

    #: default config name (used in messages, and as log name when regularizers come as a list)
    name: str = "regularizer"

    def __init__(self, multiplier: float = 1.0, warmup_epochs: int = 0) -> None:
        super().__init__()
        self.multiplier = float(check_range(f"{self.name}.multiplier", multiplier, 0.0))
        self.warmup_epochs = check_integer(f"{self.name}.warmup_epochs", warmup_epochs, 0)

    def current_multiplier(self, learner: "StructuredLearner | None") -> float:
        """The multiplier at the learner's current epoch (full weight without a learner)."""
        if not self.warmup_epochs or learner is None or learner._trainer is None:
            return self.multiplier
        return self.multiplier * min(1.0, (learner.current_epoch + 1) / self.warmup_epochs)

    def reset_parameters(self) -> None:
        """Regularizers without parameters have nothing to reset."""

    def forward(  # pragma: no cover - interface
        self, learner: "StructuredLearner", batch: Batch, output: Output
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError
