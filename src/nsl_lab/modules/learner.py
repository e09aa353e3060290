"""The LightningModule that joins a backbone with a set of regularizers."""
from __future__ import annotations

import copy
from typing import Callable, Iterable, Mapping

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from nsl_lab.batch import Batch
from nsl_lab.modules.output import Output
from nsl_lab.regularizers.base import Regularizer

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def as_output(result: Output | torch.Tensor) -> Output:
    """Lets a plain module that returns logits serve as a backbone (its logits double as embedding)."""
    if isinstance(result, Output):
        return result
    if isinstance(result, torch.Tensor):
        return Output(result, result)
    raise TypeError(f"a backbone must return logits or nsl_lab.Output, got {type(result).__name__}")


def embed(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The backbone's continuous input embedding (the identity for a plain module)."""
    return backbone.embed(x) if hasattr(backbone, "embed") else x


def head(backbone: nn.Module, z: torch.Tensor, **extra: object) -> Output:
    """The backbone's output from an input embedding (a plain module takes ``z`` as input)."""
    return as_output(backbone.head(z, **extra) if hasattr(backbone, "head") else backbone(z, **extra))


class PrecomputedGradient(torch.autograd.Function):
    """``value`` in the forward pass; in the backward pass hands ``grads`` (already computed
    for ``params``) to the parameters, scaled by the incoming gradient. Lets one backward pass
    through the clean loss serve both an input gradient and the parameters' gradients."""

    @staticmethod
    def forward(ctx, value: torch.Tensor, grads: tuple, *params: torch.Tensor) -> torch.Tensor:
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return (None, None, *[None if g is None else g * grad_output for g in ctx.grads])


def supervised_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labeled samples (``y >= 0``); 0 when none is labeled."""
    labeled = y >= 0
    if not bool(labeled.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[labeled], y[labeled])


class StructuredLearner(pl.LightningModule):
    r"""Trains a backbone with structured signals.

    .. math::
        \mathcal{L} = \mathrm{CE}(f(x_L), y_L) + \sum_r \mathcal{R}_r

    where each regularizer :math:`\mathcal{R}_r` returns its own scaled term. Logs
    ``train/supervised_loss``, ``train/<name>_loss`` per regularizer (its scaled term, under
    its config name), ``train/loss``, ``val/acc`` and ``test/acc``.

    Args:
        backbone: any module following the backbone contract (``embed``, ``head``,
            ``forward(x) -> Output``); see :class:`nsl_lab.modules.FFN`.
        regularizers: regularizers by name (a list works too); empty = plain supervised.
        num_classes: number of classes, for the accuracy metrics (default: the backbone's or
            the datamodule's ``num_classes``).
        optimizer: a factory ``params -> Optimizer`` (default Adam, lr 1e-3).
        restore_best: keep the weights of the best validation epoch and test those.
    """

    def __init__(
        self,
        backbone: nn.Module,
        regularizers: Mapping[str, Regularizer] | Iterable[Regularizer] = (),
        num_classes: int | None = None,
        optimizer: OptimizerFactory | None = None,
        restore_best: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        if not isinstance(regularizers, Mapping):
            named: dict[str, Regularizer] = {}
            for regularizer in regularizers:  # graph, adversarial, graph_2, ...
                name = regularizer.name if regularizer.name not in named else f"{regularizer.name}_{len(named) + 1}"
                named[name] = regularizer
            regularizers = named
        self.regularizers = nn.ModuleDict(dict(regularizers))
        # Perturbing regularizers differentiate the clean loss w.r.t. the input embedding.
        self.keep_embedding = any(getattr(r, "needs_embedding", False) for r in self.regularizers.values())
        self.num_classes = num_classes or getattr(backbone, "num_classes", None)
        self.optimizer_factory = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
        self.restore_best = restore_best
        if self.num_classes is not None:
            self._make_metrics()
        self.best_val_acc: float | None = None
        self._best_state: dict[str, torch.Tensor] | None = None

    def _make_metrics(self) -> None:
        self.num_classes = int(self.num_classes)
        self.val_accuracy = MulticlassAccuracy(self.num_classes, average="micro", ignore_index=-1)
        self.test_accuracy = MulticlassAccuracy(self.num_classes, average="micro", ignore_index=-1)

    def setup(self, stage: str) -> None:
        if self.num_classes is None:  # a plain user module: ask the datamodule
            self.num_classes = getattr(self.trainer.datamodule, "num_classes", None)
            if self.num_classes is None:
                raise ValueError("pass num_classes to StructuredLearner (neither backbone nor datamodule has it)")
            self._make_metrics()

    def forward(self, batch: Batch) -> Output:
        extra = {} if batch.lengths is None else {"lengths": batch.lengths}
        return as_output(self.backbone(batch.x, **extra))

    def forward_with_embedding(self, batch: Batch) -> Output:
        """``forward`` through ``embed`` then ``head``, keeping :math:`z` on the output with
        ``requires_grad`` so a regularizer can take the clean loss's gradient w.r.t. it
        (raw features and pixels become a leaf; a learned embedding stays in the graph)."""
        extra = {} if batch.lengths is None else {"lengths": batch.lengths}
        z = embed(self.backbone, batch.x)
        if not z.requires_grad and z.is_floating_point() and not z.is_sparse:
            z = z.detach().requires_grad_(True)
        return head(self.backbone, z, **extra)._replace(embedding=z)

    def clean_backward(self, loss: torch.Tensor, output: Output) -> tuple[torch.Tensor, Output]:
        """One backward pass of the clean loss for the embedding *and* the parameters.

        Returns a stand-in for ``loss`` that hands the parameters' gradients on in the
        final backward, and ``output`` with ``embedding_grad`` set: an adversarial step
        (FGSM) then costs one extra forward and backward, not two."""
        params = [p for p in self.parameters() if p.requires_grad]
        # Keep the clean graph when something else still backpropagates through it.
        retain = output.embedding.grad_fn is not None or any(
            not getattr(r, "needs_embedding", False) for r in self.regularizers.values())
        grads = torch.autograd.grad(loss, [output.embedding, *params], retain_graph=retain, allow_unused=True)
        return PrecomputedGradient.apply(loss.detach(), grads[1:], *params), output._replace(embedding_grad=grads[0])

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        output = self.forward_with_embedding(batch) if self.keep_embedding else self(batch)
        loss = supervised_loss(output.logits, batch.y)
        if output.embedding is not None and output.embedding.requires_grad:
            loss, output = self.clean_backward(loss, output)
        terms = {"train/supervised_loss": loss.detach()}
        for name, regularizer in self.regularizers.items():
            term, logs = regularizer(self, batch, output)
            loss = loss + term
            terms[f"train/{name}_loss"] = term.detach()
            terms.update({f"train/{name}/{key}": value for key, value in logs.items()})
        if self.logger_writes_this_step():
            size = max(int(batch.labeled.sum()), 1)
            for key, value in terms.items():
                self.log(key, value, batch_size=size)
            self.log("train/loss", loss.detach(), prog_bar=True, batch_size=size)
        return loss

    def logger_writes_this_step(self) -> bool:
        """Whether this training step's logs are written: every ``log_every_n_steps``
        optimizer steps (Lightning's rule) and the last step of the fit, so that
        ``trainer.logged_metrics`` ends with every term. Each ``self.log`` costs about 1 ms
        of Lightning bookkeeping (a fifth of a Cora full-batch step with six terms), so the
        other steps skip it; their values are then missing from the progress bar."""
        trainer = self._trainer
        if trainer is None:
            return True
        step, every = trainer.global_step + 1, trainer.log_every_n_steps
        if trainer.should_stop or (every > 0 and step % every == 0):
            return True
        if trainer.max_steps is not None and trainer.max_steps > 0 and step >= trainer.max_steps:
            return True
        max_epochs = trainer.max_epochs
        return bool(trainer.is_last_batch and max_epochs is not None and 0 <= max_epochs <= trainer.current_epoch + 1)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.val_accuracy.update(self(batch).logits, batch.y)

    def on_validation_epoch_end(self) -> None:
        # compute() synchronises across processes under DDP.
        accuracy = float(self.val_accuracy.compute())
        self.val_accuracy.reset()
        if self.trainer.sanity_checking:
            return
        if self.best_val_acc is None or accuracy > self.best_val_acc:
            self.best_val_acc = accuracy
            if self.restore_best:
                self._best_state = copy.deepcopy(self.backbone.state_dict())
        self.log("val/acc", accuracy, prog_bar=True)
        self.log("val/best_acc", self.best_val_acc)

    def get_extra_state(self) -> dict:
        # Part of state_dict, so a checkpoint (resume) and ddp_spawn's hand-back of the weights
        # keep the best-validation weights; tensors and floats only, loadable with weights_only=True.
        return {"best_val_acc": self.best_val_acc, "best_state": self._best_state}

    def set_extra_state(self, state: dict) -> None:
        self.best_val_acc = state.get("best_val_acc")
        self._best_state = state.get("best_state")

    def on_test_start(self) -> None:
        if self.restore_best and self._best_state is not None:
            self.backbone.load_state_dict(self._best_state)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.test_accuracy.update(self(batch).logits, batch.y)

    def on_test_epoch_end(self) -> None:
        self.log("test/acc", float(self.test_accuracy.compute()))
        self.test_accuracy.reset()

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self(batch).logits.argmax(-1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())
