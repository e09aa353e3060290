from __future__ import annotations

from typing import NamedTuple

import torch


class Output(NamedTuple):
    """What every backbone's ``head`` returns.

    ``logits`` feed the supervised loss; ``hidden`` is the penultimate embedding a
    regularizer may compare instead of the logits. ``embedding`` is the input embedding
    :math:`z` = ``embed(x)`` the logits were computed from, set by the learner (with
    ``requires_grad``) when a regularizer perturbs it, e.g. the adversarial regularizer;
    ``embedding_grad`` is the clean supervised loss's gradient w.r.t. it, which the learner
    computes in the same backward pass as the parameters' gradients.
    """

    logits: torch.Tensor
    hidden: torch.Tensor
    embedding: torch.Tensor | None = None
    embedding_grad: torch.Tensor | None = None
