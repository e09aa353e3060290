"""Label-free pretraining: the representation setting of structured learning."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, ClassVar, Iterable, Mapping

import torch
from torch import nn

from nsl_lab.batch import Batch
from nsl_lab.context import GraphData, TrainingStep
from nsl_lab.errors import ConfigError
from nsl_lab.modules.learner import OptimizerFactory, StructuredLearner

if TYPE_CHECKING:
    from nsl_lab.regularizers.base import Regularizer


def without_labels(batch: Batch) -> Batch:
    """``batch`` with every label, its packed neighbours' included, replaced by ``-1``."""
    neighbors = None if batch.neighbors is None else without_labels(batch.neighbors)
    return replace(batch, y=torch.full_like(batch.y, -1), neighbors=neighbors)


class RepresentationLearner(StructuredLearner):
    r"""Trains a backbone's embedding from structure alone; no label is read.

    .. math:: \mathcal{L} = \sum_r \mathcal{R}_r

    The regularizers alone make the loss: graph neighbours pulled together (the
    neighbour-contrastive term, NGM smoothness with ``seeds: all``), virtual adversarial
    neighbours kept close (VAT). Every training batch and the fit's
    :class:`~nsl_lab.context.GraphData` reach them with labels ``-1``, so a dataset with
    its labels and the same dataset with none train bit-identical weights. Labels come
    later, through probes on the frozen embedding (:mod:`nsl_lab.probes`), or through
    supervised fine-tuning from the saved encoder (``init_from=<run dir>``).

    A fit does not validate (there is no label to score); train for a fixed number of epochs
    chosen on the probes' validation accuracy.

    Args:
        backbone: the encoder (any :class:`~nsl_lab.modules.Backbone`; its ``hidden`` output
            is the embedding the probes read).
        regularizers: label-free terms only (each with ``reads_labels`` false); at least one.
        num_classes: kept for fine-tuning from these weights (the classifier layer is not
            trained here).
        optimizer: a factory ``params -> Optimizer`` (default Adam, lr 1e-3).
    """

    validates: ClassVar[bool] = False

    def __init__(
        self,
        backbone: nn.Module,
        regularizers: "Mapping[str, Regularizer] | Iterable[Regularizer]" = (),
        num_classes: int | None = None,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__(backbone, regularizers, num_classes, optimizer, restore_best=False)
        self.check_regularizers(self.regularizers)

    @classmethod
    def check_regularizers(cls, regularizers: "Mapping[str, Regularizer]") -> None:
        if not regularizers:
            raise ConfigError("learner=representation trains from regularizers alone and none is set; choose "
                              "label-free terms, e.g. regularizer=contrastive or regularizer='[contrastive,vat]'",
                              "regularizer")
        for name, regularizer in regularizers.items():
            if regularizer.reads_labels:
                raise ConfigError(f"regularizer.{name} ({type(regularizer).__name__}) reads labels, and "
                                  "learner=representation pretrains without any; drop it or make it label-free "
                                  "(graph terms: seeds=all with equal pair weights; balance: prior=uniform)",
                                  f"regularizer.{name}")

    def graph_data(self) -> GraphData | None:
        data = super().graph_data()
        if data is None:
            return None
        batch_rows = data.batch_rows
        return replace(data, train_labels=torch.full_like(data.train_labels, -1),
                       batch_rows=None if batch_rows is None else (lambda rows: without_labels(batch_rows(rows))))

    def training_batch(self, batch: Batch) -> Batch:
        return without_labels(batch)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        batch = self.training_batch(batch)
        output, embedding = self.clean_forward(batch)  # VAT perturbs the embedding: a leaf
        step = TrainingStep(batch, output, self.backbone, int(self.current_epoch), int(self.num_classes or 0),
                            embedding)
        # A zero that still reaches the parameters: a step where no term applies backpropagates 0.
        zero = output.logits.sum() * 0.0
        return self.add_terms(step, zero, {}, batch_size=len(batch))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Nothing to score without labels (the run skips validation altogether)."""

    def on_validation_epoch_end(self) -> None:
        """Nothing was scored."""

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        raise ConfigError("a representation learner has no trained classifier to test: probe its embedding "
                          "(nsl_lab.probes.probe_encoder) or fine-tune it (init_from=<run dir>)", "learner")
