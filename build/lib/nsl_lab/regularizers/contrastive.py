"""Neighbour-contrastive regularization on embeddings (Graph-MLP, Hu et al. 2021)."""
from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.nn.functional as F

from nsl_lab.context import GraphData, Requirement, TrainingStep
from nsl_lab.errors import ConfigError, check_choice, check_integer, check_range
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.regularizers.base import Regularizer
from nsl_lab.regularizers.graph import Compare

Normalization = Literal["row", "symmetric"]


def normalized_adjacency_power(graph: NeighborGraph, hops: int, normalization: Normalization = "row") -> NeighborGraph:
    r""":math:`\hat A^{r}` as a sparse graph, with :math:`\hat A = D^{-1}(A + I)` (``row``,
    Graph-MLP) or :math:`D^{-1/2}(A + I)D^{-1/2}` (``symmetric``)."""
    check_choice("normalization", normalization, Normalization)
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


class PositivePairs:
    """:math:`\\gamma = \\hat A^{r}` without self-pairs, ready to cut the block of sampled nodes.

    Args:
        positive: the normalised adjacency power (:func:`normalized_adjacency_power`).
    """

    def __init__(self, positive: NeighborGraph) -> None:
        source, target, weight = positive.edges()
        off_diagonal = source != target
        counts = torch.bincount(source[off_diagonal], minlength=positive.num_nodes)
        self.num_nodes = positive.num_nodes
        self.indptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self.target, self.weight = target[off_diagonal], weight[off_diagonal]

    def to(self, device: torch.device) -> "PositivePairs":
        """These pairs on ``device`` (``self`` when already there)."""
        if self.target.device == torch.device(device):
            return self
        moved = PositivePairs.__new__(PositivePairs)
        moved.num_nodes = self.num_nodes
        moved.indptr, moved.target, moved.weight = (t.to(device) for t in (self.indptr, self.target, self.weight))
        return moved

    def submatrix(self, nodes: torch.Tensor) -> torch.Tensor:
        """``[len(nodes), len(nodes)]``: :math:`\\gamma` between the nodes, 0 where no edge."""
        # Only the sampled nodes' rows (CSR): ~sample_size / N of the edges, not all of them.
        start, count = self.indptr[nodes], self.indptr[nodes + 1] - self.indptr[nodes]
        row = torch.repeat_interleave(torch.arange(nodes.numel(), device=nodes.device), count)
        first = torch.cumsum(count, 0) - count  # where each row's edges begin in the gathered list
        edge = torch.arange(row.numel(), device=nodes.device) + (start - first)[row]
        # Which row of the subset each node of the graph is, -1 when not sampled.
        position = torch.full((self.num_nodes,), -1, dtype=torch.long, device=nodes.device)
        position[nodes] = torch.arange(nodes.numel(), device=nodes.device)
        column = position[self.target[edge]]
        keep = column >= 0
        gamma = torch.zeros(nodes.numel(), nodes.numel(), device=nodes.device)
        gamma[row[keep], column[keep]] = self.weight[edge[keep]]
        return gamma


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
    useful when labels are scarce. :math:`\gamma` is built once, at :meth:`setup`, from the
    fit's graph; the batch's ``index`` says which graph nodes its rows are.

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
        compare: Compare = "hidden",
        normalization: Normalization = "row",
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(multiplier, warmup_epochs)
        check_range("temperature", temperature, 0.0, low_inclusive=False)
        check_integer("hops", hops, 1)
        check_integer("sample_size", sample_size, 2)
        check_choice("compare", compare, Compare)
        check_choice("normalization", normalization, Normalization)
        self.normalization = normalization
        self.temperature, self.hops, self.sample_size, self.compare = float(temperature), hops, sample_size, compare
        self._pairs: PositivePairs | None = None
        self._self_mask: torch.Tensor | None = None

    @property
    def requirements(self) -> frozenset[Requirement]:
        return frozenset({"graph"})

    def setup(self, data: GraphData) -> None:
        if data.graph is None:
            raise ConfigError("the contrastive regularizer needs a graph; this data has none (set data.graph)")
        self._pairs = PositivePairs(normalized_adjacency_power(data.graph, self.hops, self.normalization))

    def positive_pairs(self, device: torch.device) -> PositivePairs:
        """The off-diagonal :math:`\\gamma` of the fit's graph, on ``device``."""
        if self._pairs is None:
            raise ConfigError("the contrastive regularizer has no graph: call setup(graph_data) first "
                              "(the learner does at fit start)")
        self._pairs = self._pairs.to(device)
        return self._pairs

    def self_mask(self, size: int, device: torch.device) -> torch.Tensor:
        """The boolean identity of ``size``, kept: every step asks for the same one."""
        mask = self._self_mask
        if mask is None or mask.shape[0] != size or mask.device != torch.device(device):
            mask = self._self_mask = torch.eye(size, dtype=torch.bool, device=device)
        return mask

    def contrastive_loss(self, embeddings: torch.Tensor, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor | None:
        """The unscaled loss over the batch rows ``rows`` (graph nodes ``index[rows]``);
        ``None`` when no row has a neighbour among them."""
        gamma = self.positive_pairs(embeddings.device).submatrix(index[rows])

        z = F.normalize(embeddings[rows], dim=-1)
        logits = z @ z.t()
        if self.temperature != 1.0:  # x / 1 is x exactly, forward and backward: skip two passes
            logits = logits / self.temperature
        logits = logits.masked_fill(self.self_mask(rows.numel(), z.device), float("-inf"))
        positive = gamma > 0
        has_positive = positive.any(dim=1)
        if not bool(has_positive.any()):
            return None
        # Only rows with a positive: an all -inf row would put NaN into the gradient.
        logits, gamma, positive = logits[has_positive], gamma[has_positive], positive[has_positive]
        # log(0) is -inf either way, but the CPU log is ~6x slower on zeros than on positive
        # numbers: take the log of 1 there and mask. The positive entries go through the same
        # kernel at the same positions, so their logs (and the loss) are bit-identical.
        log_gamma = gamma.masked_fill(~positive, 1.0).log().masked_fill_(~positive, float("-inf"))
        log_numerator = torch.logsumexp(logits + log_gamma, dim=1)
        return (torch.logsumexp(logits, dim=1) - log_numerator).mean()

    def loss(self, step: TrainingStep) -> torch.Tensor | None:
        output, batch = step.output, step.batch
        embeddings = output.hidden if self.compare == "hidden" else output.logits
        n = len(batch)
        if n > self.sample_size:
            rows = torch.randperm(n, device=embeddings.device)[: self.sample_size]
        else:
            rows = torch.arange(n, device=embeddings.device)
        return self.contrastive_loss(embeddings, rows, batch.index)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, temperature={self.temperature}, hops={self.hops}, "
                f"sample_size={self.sample_size}, compare={self.compare!r}, normalization={self.normalization!r}")
