"""The regularizer contract."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from nsl_lab.batch import Batch
from nsl_lab.errors import check_range
from nsl_lab.modules.output import Output

if TYPE_CHECKING:
    from nsl_lab.modules.learner import StructuredLearner


class Regularizer(nn.Module):
    """A term added to the supervised loss.

    ``forward(learner, batch, output) -> (scaled_loss, logs)`` where ``output`` is the
    backbone's output on ``batch.x``. A regularizer may call ``learner.backbone`` again
    (neighbours' inputs, perturbed embeddings) but holds no optimizer and no data.
    ``logs`` maps short names to detached scalars; the learner prefixes them with the stage.

    Args:
        multiplier: weight of the term in the total loss.
    """

    #: the key under which the learner logs the scaled term, e.g. ``train/graph_loss``
    name: str = "regularizer"

    def __init__(self, multiplier: float = 1.0) -> None:
        super().__init__()
        self.multiplier = float(check_range(f"{self.name}.multiplier", multiplier, 0.0))

    def reset_parameters(self) -> None:
        """Regularizers without parameters have nothing to reset."""

    def forward(  # pragma: no cover - interface
        self, learner: "StructuredLearner", batch: Batch, output: Output
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError
