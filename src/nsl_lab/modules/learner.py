"""The LightningModule that joins a backbone with a set of regularizers."""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable, ClassVar, Iterable, Mapping

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from nsl_lab.batch import Batch
from nsl_lab.context import GraphData, GraphDataSource, TrainingStep, run_backbone
from nsl_lab.errors import ConfigError, check_flag
from nsl_lab.losses import supervised_loss
from nsl_lab.modules.backbone import Backbone, Output, as_backbone

if TYPE_CHECKING:  # the learner runs any module with this interface; it never imports the package
    from nsl_lab.regularizers.base import Regularizer

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def has_lazy_parameters(module: nn.Module) -> bool:
    """Whether ``module`` holds a parameter not yet sized (a lazy layer before its first call)."""
    return any(isinstance(p, nn.parameter.UninitializedParameter) for p in module.parameters())


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


class StructuredLearner(pl.LightningModule):
    r"""Trains a backbone with structured signals.

    .. math::
        \mathcal{L} = \mathrm{CE}(f(x_L), y_L) + \sum_r \mathcal{R}_r

    where each regularizer :math:`\mathcal{R}_r` returns its own scaled term. Logs
    ``train/supervised_loss``, ``train/<name>_loss`` per regularizer (its scaled term, under
    its config name), ``train/loss``, ``val/acc`` and ``test/acc``.

    Args:
        backbone: a :class:`~nsl_lab.modules.Backbone`, or any ``nn.Module`` returning
            logits (wrapped once, see :func:`~nsl_lab.modules.as_backbone`).
        regularizers: regularizers by name (a list works too); empty = plain supervised.
        num_classes: number of classes, for the accuracy metrics (default: the backbone's or
            the datamodule's ``num_classes``).
        optimizer: a factory ``params -> Optimizer`` (default Adam, lr 1e-3).
        restore_best: keep the weights of the best validation epoch and test those.

    At fit start every regularizer's ``setup`` receives the datamodule's
    :class:`~nsl_lab.context.GraphData` (when it provides one); each training step hands them
    one :class:`~nsl_lab.context.TrainingStep`.
    """

    #: whether a fit validates (a label-free learner has nothing to validate)
    validates: ClassVar[bool] = True

    @classmethod
    def check_regularizers(cls, regularizers: "Mapping[str, Regularizer]") -> None:
        """Raises one :class:`ConfigError` line when this learner cannot train with these
        regularizers (the run calls it before any data is loaded); any set works here."""

    def __init__(
        self,
        backbone: nn.Module,
        regularizers: "Mapping[str, Regularizer] | Iterable[Regularizer]" = (),
        num_classes: int | None = None,
        optimizer: OptimizerFactory | None = None,
        restore_best: bool = True,
    ) -> None:
        super().__init__()
        self.backbone: Backbone = as_backbone(backbone)
        if not isinstance(regularizers, Mapping):
            named: dict[str, "Regularizer"] = {}
            for regularizer in regularizers:  # graph, adversarial, graph_2, ...
                name = regularizer.name if regularizer.name not in named else f"{regularizer.name}_{len(named) + 1}"
                named[name] = regularizer
            regularizers = named
        self.regularizers = nn.ModuleDict(dict(regularizers))
        # Perturbing regularizers differentiate the clean loss w.r.t. the input embedding.
        self.needs_embedding = any(r.needs_embedding for r in self.regularizers.values())
        self.num_classes = num_classes or self.backbone.num_classes
        self.optimizer_factory = optimizer or (lambda params: torch.optim.Adam(params, lr=1e-3))
        self.restore_best = check_flag("learner.restore_best", restore_best)
        if self.num_classes is not None:
            self._make_metrics()
        self.best_val_acc: float | None = None
        self._best_state: dict[str, torch.Tensor] | None = None
        #: accuracy of the last validation and the optimizer step it ran after
        self.last_val_acc: float | None = None
        self.last_val_step: int | None = None

    def reset_parameters(self) -> None:
        """Re-initialises the backbone and every regularizer's own parameters (e.g. the
        neighbourhood term's W) in place: a fresh start with the same modules. The best-epoch
        weights kept for the test are dropped."""
        self.backbone.reset_parameters()
        for regularizer in self.regularizers.values():
            regularizer.reset_parameters()
        self.best_val_acc, self._best_state = None, None

    def _make_metrics(self) -> None:
        self.num_classes = int(self.num_classes)
        self.val_accuracy = MulticlassAccuracy(self.num_classes, average="micro", ignore_index=-1)
        self.test_accuracy = MulticlassAccuracy(self.num_classes, average="micro", ignore_index=-1)

    def setup(self, stage: str) -> None:
        if self.num_classes is None:  # a plain user module: ask the datamodule
            self.num_classes = getattr(self.trainer.datamodule, "num_classes", None)
            if self.num_classes is None:
                raise ConfigError("pass num_classes to StructuredLearner (neither backbone nor datamodule has it)")
            self._make_metrics()
        if stage == "fit" and self.trainer.world_size > 1 and has_lazy_parameters(self):
            self.materialize_lazy_parameters()

    def materialize_lazy_parameters(self) -> None:
        """Sizes parameters that a regularizer sizes at its first step (a lazy layer), by one
        forward pass of those terms on the first training batch as a step sees it
        (:meth:`training_batch`), without gradients and under a forked RNG. DDP wraps the model
        only after this hook and cannot wrap unsized parameters; a single process sizes them at
        its first step instead, drawing their initial values from the RNG stream there."""
        data = self.graph_data()
        if data is not None:
            for regularizer in self.regularizers.values():
                regularizer.setup(data)
        with torch.random.fork_rng(), torch.no_grad():  # the loader's shuffle draws too
            batch = self.training_batch(next(iter(self.trainer.datamodule.train_dataloader())))
            output, embedding = self.clean_forward(batch)
            step = TrainingStep(batch, output, self.backbone, 0, int(self.num_classes or 0), embedding)
            for regularizer in self.regularizers.values():
                if has_lazy_parameters(regularizer):
                    regularizer(step)

    def forward(self, batch: Batch) -> Output:
        return run_backbone(self.backbone, batch)

    def graph_data(self) -> GraphData | None:
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        return datamodule.graph_data() if isinstance(datamodule, GraphDataSource) else None

    def on_fit_start(self) -> None:
        data = self.graph_data()
        if data is not None:
            for regularizer in self.regularizers.values():
                regularizer.setup(data)

    def on_train_epoch_start(self) -> None:
        due = [r for r in self.regularizers.values() if r.refresh_at(self.current_epoch)]
        data = self.graph_data() if due else None
        if data is None:
            return
        was_training = self.training
        self.eval()
        with torch.no_grad():
            for regularizer in due:
                regularizer.refresh(data, lambda batch: self(batch.to(self.device)))
        self.train(was_training)

    def embedding_leaf(self, batch: Batch) -> torch.Tensor:
        """:math:`z` = ``embed(x)`` with ``requires_grad``, so a regularizer can take the clean
        loss's gradient w.r.t. it (raw features and pixels become a leaf; a learned
        embedding stays in the graph; sparse inputs stay as they are)."""
        z = self.backbone.embed(batch.x)
        if not z.requires_grad and z.is_floating_point() and not z.is_sparse:
            z = z.detach().requires_grad_(True)
        return z

    def clean_backward(self, loss: torch.Tensor, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One backward pass of the clean loss for the embedding *and* the parameters.

        Returns a stand-in for ``loss`` that hands the parameters' gradients on in the
        final backward, and the embedding's gradient: an adversarial step (FGSM) then costs
        one extra forward and backward, not two."""
        params = [p for p in self.parameters() if p.requires_grad]
        # Keep the clean graph when something else still backpropagates through it.
        retain = embedding.grad_fn is not None or any(not r.needs_embedding for r in self.regularizers.values())
        grads = torch.autograd.grad(loss, [embedding, *params], retain_graph=retain, allow_unused=True)
        return PrecomputedGradient.apply(loss.detach(), grads[1:], *params), grads[0]

    def clean_forward(self, batch: Batch) -> tuple[Output, torch.Tensor | None]:
        """The backbone's output on ``batch`` and, when a regularizer perturbs the input
        embedding, that embedding (:meth:`embedding_leaf`), which the output was computed from."""
        if not self.needs_embedding:
            return self(batch), None
        embedding = self.embedding_leaf(batch)
        extra = {} if batch.lengths is None else {"lengths": batch.lengths}
        return self.backbone.head(embedding, **extra), embedding

    def training_batch(self, batch: Batch) -> Batch:
        """What a training step sees of a loader's batch (all of it; a label-free learner
        strips the labels)."""
        return batch

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        output, embedding = self.clean_forward(batch)
        embedding_grad = None
        loss = supervised_loss(output.logits, batch.y)
        if embedding is not None and embedding.requires_grad:
            loss, embedding_grad = self.clean_backward(loss, embedding)
        step = TrainingStep(batch, output, self.backbone, int(self.current_epoch), int(self.num_classes),
                            embedding, embedding_grad)
        return self.add_terms(step, loss, {"train/supervised_loss": loss.detach()},
                              batch_size=max(int(batch.labeled.sum()), 1))

    def add_terms(self, step: TrainingStep, loss: torch.Tensor, terms: dict[str, torch.Tensor],
                  batch_size: int) -> torch.Tensor:
        """``loss`` plus every regularizer's term on ``step``; logs each term and the total
        (on the steps the logger writes)."""
        for name, regularizer in self.regularizers.items():
            term = regularizer(step)
            loss = loss + term
            terms[f"train/{name}_loss"] = term.detach()
        if self.logger_writes_this_step():
            for key, value in terms.items():
                self.log(key, value, batch_size=batch_size)
            self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
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
        self.last_val_acc, self.last_val_step = accuracy, int(self.trainer.global_step)
        if self.best_val_acc is None or accuracy > self.best_val_acc:
            self.best_val_acc = accuracy
            if self.restore_best:
                self._best_state = copy.deepcopy(self.backbone.state_dict())
        self.log("val/acc", accuracy, prog_bar=True)
        self.log("val/best_acc", self.best_val_acc)

    def get_extra_state(self) -> dict:
        # Part of state_dict, so a checkpoint (resume) and ddp_spawn's hand-back of the weights
        # keep the best-validation weights; tensors and floats only, loadable with weights_only=True.
        return {"best_val_acc": self.best_val_acc, "best_state": self._best_state,
                "last_val_acc": self.last_val_acc, "last_val_step": self.last_val_step}

    def set_extra_state(self, state: dict) -> None:
        self.best_val_acc = state.get("best_val_acc")
        self._best_state = state.get("best_state")
        self.last_val_acc, self.last_val_step = state.get("last_val_acc"), state.get("last_val_step")

    def tested_state(self) -> dict[str, torch.Tensor]:
        """The backbone weights the test stage uses: the best validation epoch's with
        ``restore_best`` (when one was validated), else the current ones."""
        if self.restore_best and self._best_state is not None:
            return self._best_state
        return self.backbone.state_dict()

    def tested_val_acc(self) -> float | None:
        """Validation accuracy of :meth:`tested_state`, ``None`` when those weights were never
        validated (then validate them)."""
        if self.restore_best and self._best_state is not None:
            return self.best_val_acc
        if self.last_val_step is not None and self._trainer is not None and self.last_val_step == self.trainer.global_step:
            return self.last_val_acc
        return None

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
