from __future__ import annotations

from typing import NamedTuple

import torch


class Output(NamedTuple):
    """What every backbone's ``head`` returns.

    ``logits`` feed the supervised loss; ``hidden`` is the penultimate embedding a
    regularizer may compare instead of the logits.
    """

    logits: torch.Tensor
    hidden: torch.Tensor
