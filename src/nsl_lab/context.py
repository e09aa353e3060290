"""What a regularizer may see: one training step, and the graph-level data of a fit.

The learner builds a :class:`TrainingStep` for every step; a datamodule provides one
:class:`GraphData` per fit (``graph_data()``), which the learner hands to every regularizer's
``setup`` at fit start. A regularizer never sees the trainer or the datamodule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Mapping, Protocol, runtime_checkable

import torch

from nsl_lab.batch import Batch
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.modules.backbone import Backbone, Output

#: what a regularizer may need from the data, declared by both sides and checked before
#: any data is loaded:
#: ``graph`` a sample graph (GraphData.graph); ``batch_graph`` the whole graph in every
#: training batch (full-graph training); ``neighbors`` each batch's graph neighbours (the
#: whole graph in the batch, or packed neighbours); ``unlabeled_in_batch`` unlabeled rows in
#: the training batches.
Requirement = Literal["graph", "batch_graph", "neighbors", "unlabeled_in_batch"]


@dataclass
class TrainingStep:
    """One training step as a regularizer sees it.

    Attributes:
        batch: the training batch.
        output: the backbone's output on ``batch.x`` (``logits``, ``hidden``).
        backbone: the backbone (callable; ``embed`` and ``head`` for perturbations).
        epoch: the current epoch (0-based).
        num_classes: number of classes.
        embedding: the input embedding :math:`z` = ``backbone.embed(batch.x)`` with
            ``requires_grad``, when a regularizer declares ``needs_embedding``.
        embedding_grad: the clean supervised loss's gradient w.r.t. ``embedding``, computed
            in the same backward pass as the parameters' gradients.
    """

    batch: Batch
    output: Output
    backbone: Backbone
    epoch: int = 0
    num_classes: int = 0
    embedding: torch.Tensor | None = None
    embedding_grad: torch.Tensor | None = None

    def forward(self, batch: Batch) -> Output:
        """The backbone's output on another batch (neighbours, perturbed copies)."""
        return run_backbone(self.backbone, batch)


def run_backbone(backbone: Backbone, batch: Batch) -> Output:
    """``backbone(batch.x)``, passing the token lengths when the batch has them."""
    extra = {} if batch.lengths is None else {"lengths": batch.lengths}
    return backbone(batch.x, **extra)


@dataclass(frozen=True)
class GraphData:
    """Graph-level data of one fit, provided by the datamodule.

    Attributes:
        graph: the sample graph over every row (``None`` when the data has none).
        train_labels: ``[N]`` every row's training label, ``-1`` where none is kept.
        num_classes: number of classes.
        rows: row ids of each stage's batch (``train``: every training row, unlabeled ones
            included; ``val``, ``test``: the scored rows).
        batch_rows: builds the :class:`Batch` of the given rows' inputs (with training
            labels), for regularizers that embed the whole dataset; ``None`` when every
            training batch already holds every row.
        eval_batch_size: rows per batch for such passes.
        full_batch: every training batch is the whole graph (row ``i`` = node ``i``, labels
            = ``train_labels``), so whatever a regularizer derives from the batch's rows and
            labels can be found once.
        features: ``[N, d]`` every row's input features (dense or sparse), where the
            datamodule holds them as one tensor (full-graph data); ``None`` otherwise
            (``batch_rows`` builds any rows' inputs).
    """

    graph: NeighborGraph | None
    train_labels: torch.Tensor
    num_classes: int
    rows: Mapping[str, torch.Tensor] = field(default_factory=dict)
    batch_rows: Callable[[torch.Tensor], Batch] | None = None
    eval_batch_size: int = 512
    full_batch: bool = False
    features: torch.Tensor | None = None


@runtime_checkable
class GraphDataSource(Protocol):
    """A datamodule that provides :class:`GraphData`."""

    def graph_data(self) -> GraphData: ...


@dataclass(frozen=True)
class LabeledSplits:
    """Every row's label and the evaluation splits of a dataset, for probes trained on frozen
    embeddings after label-free pretraining (:mod:`nsl_lab.probes`). Pretraining never sees
    this object: the run asks for it only once the encoder is trained.

    Attributes:
        labels: ``[N]`` every row's class, ``-1`` where the dataset has none.
        pool: rows whose labels a probe may train on (every row outside validation and test
            that has a label); a label setting keeps a seeded share of them, drawn as the
            datamodule draws its own (:func:`~nsl_lab.datamodules.label_fraction.label_subset`),
            so a probe at ``(label_frac, seed)`` sees the labels a supervised run would.
        val: the validation rows (the probe's settings are chosen on them).
        test: the test rows.
        standard: the dataset's own training rows (Planetoid's public split), or ``None``.
        batches: every row's inputs as batches (``index`` = row ids), labels ``-1``.
        label_sampling: how the datamodule draws a label fraction (``stratified`` or ``uniform``).
    """

    labels: torch.Tensor
    pool: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    batches: Callable[[], Iterable[Batch]]
    standard: torch.Tensor | None = None
    label_sampling: str = "stratified"


@runtime_checkable
class LabeledSplitsSource(Protocol):
    """A datamodule that provides :class:`LabeledSplits` (what probes need)."""

    def labeled_splits(self) -> LabeledSplits: ...
