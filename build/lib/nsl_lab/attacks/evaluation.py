"""White-box robust accuracy in the test stage, as a Lightning callback."""
from __future__ import annotations

from typing import Any, Sequence

import pytorch_lightning as pl
import torch

from nsl_lab.attacks.gradient import GradientAttack, make_attack
from nsl_lab.batch import Batch
from nsl_lab.errors import ConfigError, check_range


def robust_key(eps: float) -> str:
    return f"test/robust_acc/eps={eps:g}"


class RobustAccuracy(pl.Callback):
    r"""Accuracy of the tested model on adversarial test inputs, one attack per epsilon.

    After each test batch, every attack perturbs the batch's inputs against the backbone
    (white-box, eval mode) and counts correct predictions over the labeled rows; the epoch
    end logs ``test/robust_acc/eps=<e>``, which then lands in ``metrics.json``. At
    :math:`\epsilon = 0` the inputs are unchanged, so the value equals ``test/acc``.

    Lightning tests under ``torch.inference_mode``; the attacks leave it locally (on
    clones of the batch) to take input gradients.

    Args:
        attacks: attacks keyed by their epsilon.
    """

    def __init__(self, attacks: dict[float, GradientAttack]) -> None:
        self.attacks = dict(attacks)
        self.correct = {eps: 0 for eps in self.attacks}
        self.total = 0

    @classmethod
    def from_config(cls, name: str = "pgd", eps: Sequence[float] = (), **settings: Any) -> "RobustAccuracy | None":
        """From the ``eval.attack`` block; ``None`` when ``eps`` is empty."""
        if isinstance(eps, (int, float)):
            eps = [eps]
        epsilons = [float(check_range("eps", e, 0.0)) for e in eps]
        if len(set(epsilons)) != len(epsilons):
            raise ConfigError(f"eps={list(eps)!r} holds a value twice", "eps")
        if not epsilons:
            return None
        return cls({e: make_attack(name, e, **settings) for e in epsilons})

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.correct = {eps: 0 for eps in self.attacks}
        self.total = 0

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                          batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        model = pl_module.backbone
        with torch.inference_mode(False), torch.enable_grad():
            x, y = batch.x.clone(), batch.y.clone()
            if x.is_sparse:
                x = x.to_dense()
            labeled = y >= 0
            self.total += int(labeled.sum())
            for eps, attack in self.attacks.items():
                x_adv = attack(model, x, y)
                with torch.no_grad():
                    logits = pl_module(Batch(x_adv, y, batch.index, batch.lengths, batch.graph)).logits
                self.correct[eps] += int((logits.argmax(-1) == y)[labeled].sum())

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for eps in self.attacks:
            pl_module.log(robust_key(eps), self.correct[eps] / max(self.total, 1))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({list(self.attacks.values())!r})"
