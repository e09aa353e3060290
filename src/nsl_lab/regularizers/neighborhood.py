"""Node-to-neighbourhood contrastive regularization (after N2N, Dong et al. 2022): label-free."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from nsl_lab.batch import Batch
from nsl_lab.context import GraphData, Requirement, TrainingStep
from nsl_lab.errors import ConfigError, check_choice, check_integer, check_range
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.regularizers.base import Regularizer
from nsl_lab.regularizers.contrastive import Normalization, normalized_adjacency_matrix, normalized_adjacency_power

Summary = Literal["inputs", "embeddings"]


def propagate_features(graph: NeighborGraph, x: torch.Tensor, hops: int,
                       normalization: Normalization = "symmetric") -> torch.Tensor:
    r""":math:`\hat A^{r} X` with :math:`\hat A` the normalised adjacency with self-loops
    (:func:`~nsl_lab.regularizers.contrastive.normalized_adjacency_power`), as SGC's features
    (Wu et al. 2019): each row the weighted mean of its ``hops``-hop neighbourhood's inputs.
    ``x`` dense or sparse COO, ``[N, d]`` -> dense ``[N, d]``."""
    check_integer("hops", hops, 1)
    matrix = normalized_adjacency_matrix(graph.to(x.device), normalization)
    out = x.to_dense() if x.is_sparse else x
    for _ in range(hops):
        out = torch.sparse.mm(matrix, out)
    return out


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Symmetric InfoNCE: row :math:`i` of ``anchors`` should pick row :math:`i` of
    ``positives`` among all of them by cosine similarity over :math:`\tau`, and the reverse.
    ``[B, d]`` each, ``B >= 2``."""
    logits = F.normalize(anchors, dim=-1) @ F.normalize(positives, dim=-1).t() / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class NeighborhoodContrastiveRegularizer(Regularizer):
    r"""Each sample's embedding should pick out its own graph neighbourhood among the batch's.

    With :math:`z_i` the backbone's hidden embedding of sample :math:`i` and :math:`s_i` a
    summary of its neighbourhood, over a random subset :math:`S` of the batch
    (``sample_size`` rows a step):

    .. math::
        \mathcal{R} = \tfrac12 \big[\mathrm{CE}(\cos(z_S, s_S) / \tau,\ I) +
                                    \mathrm{CE}(\cos(s_S, z_S) / \tau,\ I)\big]

    the symmetric InfoNCE whose positives are the matching rows (Node-to-Neighbourhood mutual
    information, Dong et al., CVPR 2022; CLIP's two-sided loss). No label is read: this is a
    pretraining objective for ``learner=representation`` and an unlabeled term beside the
    supervised loss. The summary :math:`s_i`:

    - ``inputs`` (full-graph data, feature inputs): :math:`s_i = W (\hat A^{r} X)_i`, a learned
      linear map :math:`W` of the neighbourhood's propagated input features
      (:func:`propagate_features`, found once). The encoder sees one node's features only, so
      it learns to predict what its neighbourhood looks like: an MLP that needs no graph at
      inference inherits the graph's smoothing (on Cora a linear probe on :math:`\hat A^4 X`
      reaches ~82%, on raw features ~58%).
    - ``embeddings`` (any data with neighbours in the batch): :math:`s_i = \sum_j w_{ij} z_j /
      \sum_j w_{ij}` over the batch graph's edges (full-graph data, :math:`\hat A^{r}` without
      self-pairs) or the packed neighbours (``data.neighbors=k``); rows without a neighbour
      sit out.

    Args:
        multiplier: :math:`\lambda`.
        summary: ``inputs`` or ``embeddings``.
        hops: :math:`r`, propagation steps of the ``inputs`` summary (and of :math:`\hat A`
            for ``embeddings`` on full-graph data).
        temperature: :math:`\tau`.
        sample_size: rows compared per step (cost quadratic in it).
        normalization: :math:`\hat A = D^{-1/2}(A+I)D^{-1/2}` (``symmetric``) or
            :math:`D^{-1}(A+I)` (``row``).
        warmup_epochs: ramp :math:`\lambda` up linearly over these first epochs.

    Shapes: hidden ``[B, d]``; ``inputs`` summaries ``[N, in_features]`` kept for the fit.
    """

    name = "neighborhood"

    def __init__(
        self,
        multiplier: float = 1.0,
        summary: Summary = "inputs",
        hops: int = 4,
        temperature: float = 0.5,
        sample_size: int = 1024,
        normalization: Normalization = "symmetric",
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(multiplier, warmup_epochs)
        check_choice("summary", summary, Summary)
        check_integer("hops", hops, 1)
        check_range("temperature", temperature, 0.0, low_inclusive=False)
        check_integer("sample_size", sample_size, 2)
        check_choice("normalization", normalization, Normalization)
        self.summary, self.hops, self.temperature = summary, int(hops), float(temperature)
        self.sample_size, self.normalization = int(sample_size), normalization
        # W maps the data's input width to the hidden width, both known at the first step: a
        # lazy layer, so the optimizer, built before the fit starts, already holds its parameters.
        self.projection = nn.LazyLinear(1) if summary == "inputs" else None
        self._graph: NeighborGraph | None = None
        self._full_batch = False
        self._propagated: torch.Tensor | None = None
        self._adjacency: torch.Tensor | None = None

    @property
    def requirements(self) -> frozenset[Requirement]:
        return frozenset({"graph", "batch_graph"} if self.summary == "inputs" else {"neighbors"})

    def setup(self, data: GraphData) -> None:
        if data.graph is None:
            raise ConfigError("the neighborhood regularizer needs a graph; this data has none (set data.graph)")
        self._graph, self._full_batch = data.graph, data.full_batch
        self._propagated = self._adjacency = None

    def reset_parameters(self) -> None:
        if self.projection is not None and not isinstance(self.projection.weight, nn.UninitializedParameter):
            self.projection.reset_parameters()

    def _sample(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.numel() > self.sample_size:
            rows = rows[torch.randperm(rows.numel(), device=rows.device)[: self.sample_size]]
        return rows

    def _input_summaries(self, batch: Batch, hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """:math:`W \\hat A^r X` of the batch's ``rows`` (the batch: the whole graph)."""
        if not self._full_batch:
            raise ConfigError("regularizer.neighborhood.summary=inputs needs full-graph data (every training "
                              "batch the whole graph, e.g. data=cora); use summary=embeddings with data.neighbors=k",
                              "regularizer.neighborhood.summary")
        if not batch.x.is_floating_point():
            raise ConfigError("regularizer.neighborhood.summary=inputs propagates feature inputs, and this data "
                              f"gives {batch.x.dtype} (tokens); use summary=embeddings", "regularizer.neighborhood.summary")
        if self._propagated is None or self._propagated.device != hidden.device:
            # Every training batch is the whole graph (row i = node i): propagate once per fit.
            self._propagated = F.normalize(propagate_features(self._graph, batch.x, self.hops, self.normalization),
                                           dim=-1).to(hidden.device)
        if isinstance(self.projection.weight, nn.UninitializedParameter):
            # The first call materialises W as [out_features, in_features]: set its width first.
            self.projection.out_features = hidden.shape[-1]
        return self.projection(self._propagated[batch.index[rows]])

    def _embedding_summaries(self, step: TrainingStep, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows with a neighbour, their summaries)`` from the batch graph or packed neighbours."""
        batch = step.batch
        if batch.neighbors is not None and batch.neighbor_weight is not None:
            weight = batch.neighbor_weight.to(hidden.dtype)
            neighbors = step.forward(batch.neighbors).hidden.reshape(*weight.shape, -1)
            total = weight.sum(1)
            rows = (total > 0).nonzero().flatten()
            summary = (weight[rows, :, None] * neighbors[rows]).sum(1) / total[rows, None]
            return rows, summary
        if self._graph is None or not self._full_batch:
            raise ConfigError("regularizer.neighborhood.summary=embeddings needs each batch's neighbours: full-graph "
                              "data, or data.neighbors=<k> packed into every batch", "regularizer.neighborhood")
        if self._adjacency is None or self._adjacency.device != hidden.device:
            power = normalized_adjacency_power(self._graph.to(hidden.device), self.hops, self.normalization)
            source, target, weight = power.edges()
            off = source != target
            self._adjacency = torch.sparse_coo_tensor(torch.stack([source[off], target[off]]), weight[off],
                                                      (self._graph.num_nodes,) * 2).coalesce()
        mass = torch.sparse.sum(self._adjacency, dim=1).to_dense()
        rows = (mass > 0).nonzero().flatten()
        summary = torch.sparse.mm(self._adjacency, hidden) / mass.clamp_min(1e-12)[:, None]
        return rows, summary[rows]

    def loss(self, step: TrainingStep) -> torch.Tensor | None:
        hidden = step.output.hidden
        if hidden is None:
            raise ConfigError(f"the neighborhood regularizer compares hidden embeddings, and "
                              f"{type(step.backbone).__name__} returns none", "regularizer.neighborhood")
        if self.summary == "inputs":
            rows = self._sample(torch.arange(hidden.shape[0], device=hidden.device))
            return info_nce(hidden[rows], self._input_summaries(step.batch, hidden, rows), self.temperature)
        rows, summaries = self._embedding_summaries(step, hidden)
        if rows.numel() < 2:
            return None
        keep = self._sample(torch.arange(rows.numel(), device=hidden.device))
        return info_nce(hidden[rows[keep]], summaries[keep], self.temperature)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, summary={self.summary!r}, hops={self.hops}, temperature={self.temperature}, "
                f"sample_size={self.sample_size}, normalization={self.normalization!r}")
