"""Neighbour-contrastive regularization on embeddings (Graph-MLP, Hu et al. 2021)."""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from nsl_lab.batch import Batch
from nsl_lab.errors import ConfigError, check_choice, check_range
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.modules.output import Output
from nsl_lab.regularizers.base import Regularizer
from nsl_lab.regularizers.graph import COMPARE

if TYPE_CHECKING:
    from nsl_lab.modules.learner import StructuredLearner


NORMALIZATIONS = ("row", "symmetric")


def normalized_adjacency_power(graph: NeighborGraph, hops: int, normalization: str = "row") -> NeighborGraph:
    r""":math:`\hat A^{r}` as a sparse graph, with :math:`\hat A = D^{-1}(A + I)` (``row``,
    Graph-MLP) or :math:`D^{-1/2}(A + I)D^{-1/2}` (``symmetric``)."""
    check_choice("contrastive.normalization", normalization, NORMALIZATIONS)
    n = graph.num_nodes
    source, target, weight = graph.edges()
    loops = torch.arange(n, device=graph.device)
    index = torch.stack([torch.cat([source, loops]), torch.cat([target, loops])])
    values = torch.cat([weight, torch.ones(n, device=graph.device)])
    adjacency = torch.sparse_coo_tensor(index, values, (n, n), check_invariants=False).coalesce()
    degree = torch.sparse.sum(adjacency, dim=1).to_dense()
    index, values = adjacency.indices(), adjacency.values()
    if normalization == "row":
        values = values / degree.clamp_min(1e-12)[index[0]]
    else:
        scale = degree.clamp_min(1e-12).rsqrt()
        values = scale[index[0]] * values * scale[index[1]]
    adjacency = torch.sparse_coo_tensor(index, values, (n, n), check_invariants=False).coalesce()
    power = adjacency
    with warnings.catch_warnings():  # "sparse CSR support is in beta" is noise here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(hops - 1):
            power = torch.sparse.mm(power, adjacency).coalesce()
    return NeighborGraph(power.indices(), n, power.values())


class NeighborContrastiveRegularizer(Regularizer):
    r"""Pulls graph neighbours' embeddings together and pushes other samples apart.

    For a random subset :math:`S` of the batch (``sample_size`` rows each step) with
    normalised embeddings :math:`z` and the :math:`r`-hop normalised adjacency
    :math:`\gamma = \hat A^{r}` (self-pairs excluded):

    .. math::
        \mathcal{R} = \lambda \frac{1}{|S^+|} \sum_{i \in S^+} -\log
        \frac{\sum_{j \in S, j \neq i} \gamma_{ij} \exp(\cos(z_i, z_j) / \tau)}
             {\sum_{k \in S, k \neq i} \exp(\cos(z_i, z_k) / \tau)}

    where :math:`S^+` are the rows with at least one neighbour in :math:`S`. Labels are
    not used, so every sample teaches the embedding — this is what keeps the loss
    useful when labels are scarce.

    Args:
        multiplier: :math:`\lambda`.
        temperature: :math:`\tau`.
        hops: :math:`r`, the power of the adjacency that counts as "neighbour".
        sample_size: rows compared per step (the cost is quadratic in it).
        compare: ``hidden`` (penultimate embedding) or ``logits``.
        normalization: ``row`` (:math:`D^{-1}(A+I)`, Graph-MLP) or ``symmetric``.
        warmup_epochs: ramp :math:`\lambda` up linearly over these first epochs.
    """

    name = "contrastive"

    def __init__(
        self,
        multiplier: float = 1.0,
        temperature: float = 0.5,
        hops: int = 2,
        sample_size: int = 2048,
        compare: str = "hidden",
        normalization: str = "row",
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(multiplier, warmup_epochs)
        check_range("contrastive.temperature", temperature, 0.0, low_inclusive=False)
        for key, value in [("hops", hops), ("sample_size", sample_size)]:
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "hops" else 2):
                raise ConfigError(
                    f"contrastive.{key}={value!r} is not allowed; it must be an integer >= {1 if key == 'hops' else 2}"
                )
        check_choice("contrastive.compare", compare, COMPARE)
        check_choice("contrastive.normalization", normalization, NORMALIZATIONS)
        self.normalization = normalization
        self.temperature, self.hops, self.sample_size, self.compare = float(temperature), hops, sample_size, compare
        self._cache: tuple[int, NeighborGraph] | None = None

    def positive_weights(self, graph: NeighborGraph) -> NeighborGraph:
        if self._cache is None or self._cache[0] != id(graph):
            self._cache = (id(graph), normalized_adjacency_power(graph, self.hops, self.normalization))
        return self._cache[1]

    def contrastive_loss(self, embeddings: torch.Tensor, rows: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The unscaled loss over the batch rows ``rows``."""
        graph = batch.graph
        if graph is None:
            raise ConfigError("the contrastive regularizer needs a datamodule that provides a graph")
        positive = self.positive_weights(graph)
        # Which rows of the subset each node of the graph is, -1 when not sampled.
        position = torch.full((graph.num_nodes,), -1, dtype=torch.long, device=rows.device)
        position[batch.index[rows]] = torch.arange(rows.numel(), device=rows.device)
        source, target, weight = positive.edges()
        keep = (position[source] >= 0) & (position[target] >= 0) & (source != target)
        gamma = torch.zeros(rows.numel(), rows.numel(), device=embeddings.device)
        gamma[position[source[keep]], position[target[keep]]] = weight[keep].to(embeddings.dtype)

        z = F.normalize(embeddings[rows], dim=-1)
        logits = (z @ z.t()) / self.temperature
        self_mask = torch.eye(rows.numel(), dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        has_positive = (gamma > 0).any(dim=1)
        if not bool(has_positive.any()):
            return embeddings.sum() * 0.0
        # Only rows with a positive: an all -inf row would put NaN into the gradient.
        logits, gamma = logits[has_positive], gamma[has_positive]
        log_gamma = torch.where(gamma > 0, gamma.log(), torch.full_like(gamma, float("-inf")))
        log_numerator = torch.logsumexp(logits + log_gamma, dim=1)
        return (torch.logsumexp(logits, dim=1) - log_numerator).mean()

    def forward(
        self, learner: "StructuredLearner", batch: Batch, output: Output
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        embeddings = output.hidden if self.compare == "hidden" else output.logits
        n = len(batch)
        if n > self.sample_size:
            rows = torch.randperm(n, device=embeddings.device)[: self.sample_size]
        else:
            rows = torch.arange(n, device=embeddings.device)
        loss = self.current_multiplier(learner) * self.contrastive_loss(embeddings, rows, batch)
        return loss, {}

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(multiplier={self.multiplier}, temperature={self.temperature}, "
            f"hops={self.hops}, sample_size={self.sample_size}, compare={self.compare!r}, "
            f"normalization={self.normalization!r})"
        )
