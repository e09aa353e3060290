"""The supervised loss every learner, regularizer and attack shares."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def supervised_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labeled samples (``y >= 0``); 0 when none is labeled."""
    labeled = y >= 0
    if not bool(labeled.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[labeled], y[labeled])


def summed_supervised_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the labeled rows: each example's input gradient is its own
    (attacks ascend it)."""
    labeled = y >= 0
    return F.cross_entropy(logits[labeled], y[labeled], reduction="sum")
