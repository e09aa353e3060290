"""Graph regularization: a sample's output should stay close to its graph neighbours'."""
from __future__ import annotations

from typing import Literal

import torch

from nsl_lab.batch import Batch, trim_padding
from nsl_lab.context import GraphData, Requirement, TrainingStep
from nsl_lab.errors import ConfigError, check_choice, check_flag, check_integer, check_range
from nsl_lab.graphs.neighbors import NeighborGraph, Sampling
from nsl_lab.regularizers.base import Regularizer
from nsl_lab.regularizers.distances import (
    Distance, Reduction, SumOverAxis, Transform, check_distance, check_sum_over_axis, feature_scale, pairwise_distance,
    pairwise_distance_rows, reduce_weighted,
)

Seeds = Literal["labeled", "all"]
#: what a regularizer compares of the backbone's output
Compare = Literal["logits", "hidden"]


def batch_positions(batch: Batch, graph: NeighborGraph) -> torch.Tensor:
    """``position[node] = row of node in the batch``, ``-1`` for nodes outside it."""
    position = torch.full((graph.num_nodes,), -1, dtype=torch.long, device=batch.index.device)
    position[batch.index] = torch.arange(len(batch), device=batch.index.device)
    return position


def select_rows(batch: Batch, keep: torch.Tensor) -> Batch:
    """The rows of ``batch`` where ``keep`` is true (inputs, labels, ids, lengths)."""
    lengths = None if batch.lengths is None else batch.lengths[keep]
    return Batch(x=trim_padding(batch.x[keep], lengths), y=batch.y[keep], index=batch.index[keep], lengths=lengths)


class GraphRegularizer(Regularizer):
    r"""Neural Structured Learning's graph regularization, plus Neural Graph Machines' seeds.

    .. math::
        \mathcal{L} = \mathcal{L}_\text{sup}
        + \lambda \,\operatorname{reduce}_{(i,j)} \big(\alpha_{c(i,j)}\, w_{ij}\,
          d(t(f(x_i)), t(f(x_j)))\big)

    over pairs of a seed :math:`i` and up to ``max_neighbors`` neighbours :math:`j`
    (top-k by edge weight or sampled uniformly each step), or over every edge of the graph
    (``full_graph=True``). :math:`f` is the backbone's logits or penultimate embedding
    (``compare``), :math:`t` the ``transform``, :math:`d` the ``distance`` and ``reduce``
    one of NSL's reductions (default: weighted sum over the number of non-zero-weight
    pairs, so padded neighbours of weight 0 count for nothing). Seeds are the labeled
    samples (NSL) or all samples (``seeds="all"``, Neural Graph Machines), and
    :math:`\alpha_{c(i,j)}` weighs the pair by whether both, one or neither end is
    labeled (``labeled_labeled``, ``labeled_unlabeled``, ``unlabeled_unlabeled``).

    Neighbour outputs come from the same forward pass when the batch holds the neighbours
    (a full-graph batch does; neighbours outside the batch are dropped, weight 0). With
    full-graph data the pairs are found once, at :meth:`setup` (uniform sampling draws anew
    each step). When
    the datamodule packs neighbours into the batch (``batch.neighbors`` with
    ``batch.neighbor_weight [B, k]``, NSL's mini-batch scheme), the backbone runs once more
    on the neighbours that carry weight and the first ``max_neighbors`` columns are compared
    with the same distance and reduction; which neighbours are packed (top-k or sampled)
    is then the datamodule's choice.

    Args:
        multiplier: :math:`\lambda`.
        distance: ``l1``, ``l2`` (squared), ``cosine``, ``kl``, ``jensen_shannon``.
        transform: ``none``, ``softmax`` or ``sigmoid``, applied to both outputs.
        reduction: ``sum_by_nonzero_weights`` (NSL), ``mean_by_weight``, ``sum``, ``mean``.
        sum_over_axis: NSL's: ``-1`` sums ``l1`` / ``l2`` over the output's features (default);
            ``None`` (NSL's default) averages them over the features with an averaging reduction.
        max_neighbors: neighbours per seed (ignored by ``full_graph``).
        neighbor_sampling: ``top_k`` (by weight, NSL) or ``uniform`` (resampled each step).
        full_graph: use every edge each step instead of sampled neighbours.
        seeds: ``labeled`` or ``all``.
        compare: ``logits`` or ``hidden``.
        labeled_labeled, labeled_unlabeled, unlabeled_unlabeled: :math:`\alpha` per pair type.
        warmup_epochs: ramp :math:`\lambda` up linearly over these first epochs.
    """

    name = "graph"

    def __init__(
        self,
        multiplier: float = 0.1,
        distance: Distance = "l2",
        transform: Transform = "none",
        reduction: Reduction = "sum_by_nonzero_weights",
        sum_over_axis: SumOverAxis = -1,
        max_neighbors: int = 2,
        neighbor_sampling: Sampling = "top_k",
        full_graph: bool = False,
        seeds: Seeds = "labeled",
        compare: Compare = "logits",
        labeled_labeled: float = 1.0,
        labeled_unlabeled: float = 1.0,
        unlabeled_unlabeled: float = 1.0,
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(multiplier, warmup_epochs)
        check_distance(distance, transform)
        check_choice("reduction", reduction, Reduction)
        check_sum_over_axis(sum_over_axis, distance)
        check_choice("neighbor_sampling", neighbor_sampling, Sampling)
        check_choice("seeds", seeds, Seeds)
        check_choice("compare", compare, Compare)
        check_integer("max_neighbors", max_neighbors, 1)
        for pair_type, value in [
            ("labeled_labeled", labeled_labeled),
            ("labeled_unlabeled", labeled_unlabeled),
            ("unlabeled_unlabeled", unlabeled_unlabeled),
        ]:
            check_range(pair_type, value, 0.0)
        self.distance, self.transform, self.reduction = distance, transform, reduction
        self.sum_over_axis = sum_over_axis
        self.max_neighbors, self.neighbor_sampling = max_neighbors, neighbor_sampling
        self.full_graph, self.seeds, self.compare = check_flag("full_graph", full_graph), seeds, compare
        self.pair_weights = (float(unlabeled_unlabeled), float(labeled_unlabeled), float(labeled_labeled))
        self._full_batch_pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def requirements(self) -> frozenset[Requirement]:
        return frozenset({"batch_graph"} if self.full_graph else {"neighbors"})

    @property
    def reads_labels(self) -> bool:
        """Labeled seeds, or pair weights that tell labeled from unlabeled ends."""
        return self.seeds == "labeled" or len(set(self.pair_weights)) > 1

    def setup(self, data: GraphData) -> None:
        """With full-graph data every step's pairs are the same: every edge or the top-k
        neighbours of every node (as batch rows = node ids), found once here."""
        self._full_batch_pairs = None
        graph = data.graph
        if graph is None or not data.full_batch or (not self.full_graph and self.neighbor_sampling != "top_k"):
            return
        index = torch.arange(graph.num_nodes)
        whole = Batch(x=index, y=data.train_labels, index=index, graph=graph)
        self._full_batch_pairs = self._find_pairs(whole, graph)

    def pairs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rows_i, rows_j, weights)``: batch rows of each seed-neighbour pair and its weight."""
        graph = batch.graph
        if graph is None:
            raise ConfigError(
                "the graph regularizer needs a datamodule that provides a graph (batch.graph is None)"
            )
        found = self._full_batch_pairs
        if found is not None and len(batch) == graph.num_nodes:
            if found[0].device != batch.index.device:
                found = self._full_batch_pairs = tuple(t.to(batch.index.device) for t in found)
            return found
        return self._find_pairs(batch, graph)

    def _find_pairs(self, batch: Batch, graph: NeighborGraph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        position = batch_positions(batch, graph)
        labeled = batch.labeled
        if self.full_graph:
            source, target, weight = graph.edges()
            rows_i, rows_j = position[source], position[target]
            keep = (rows_i >= 0) & (rows_j >= 0)
            rows_i, rows_j, weight = rows_i[keep], rows_j[keep], weight[keep]
            if self.seeds == "labeled":
                weight = weight * labeled[rows_i]
        else:
            seed_rows = torch.arange(len(batch), device=labeled.device)
            if self.seeds == "labeled":
                seed_rows = seed_rows[labeled]
            ids, weight = graph.neighbors(batch.index[seed_rows], self.max_neighbors, self.neighbor_sampling)
            rows_j = torch.where(ids >= 0, position[ids.clamp_min(0)], -1)
            weight = torch.where(rows_j >= 0, weight, torch.zeros_like(weight))
            rows_i = seed_rows[:, None].expand_as(rows_j)
            rows_j = rows_j.clamp_min(0)
        return rows_i, rows_j, weight * self.pair_alpha(labeled[rows_i], labeled[rows_j])

    def pair_alpha(self, seed_labeled: torch.Tensor, neighbor_labeled: torch.Tensor) -> torch.Tensor:
        """α of each pair from whether its ends are labeled."""
        pair_type = seed_labeled.long() + neighbor_labeled.long()  # 0 = UU, 1 = LU, 2 = LL
        return torch.tensor(self.pair_weights, device=pair_type.device)[pair_type]

    def neighbor_loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The unscaled, reduced distance term."""
        rows_i, rows_j, weight = self.pairs(batch)
        distance = pairwise_distance_rows(outputs, rows_i, rows_j, self.distance, self.transform)
        return reduce_weighted(self.per_features(distance, outputs), weight, self.reduction)

    def per_features(self, distance: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
        """``distance`` as ``sum_over_axis`` asks (unchanged for ``-1``)."""
        scale = feature_scale(self.sum_over_axis, self.reduction, outputs.shape[-1])
        return distance if scale == 1.0 else distance * scale

    def packed_pairs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weights [B, k'], needed [B * k])`` for packed neighbours, ``k' = min(k, max_neighbors)``.

        ``weights`` holds α·w (0 for padding and, with ``seeds='labeled'``, for
        unlabeled seeds); ``needed`` marks the packed rows (of all ``k`` columns) that carry weight.
        """
        weight = batch.neighbor_weight
        rows, k = weight.shape
        neighbor_labeled = batch.neighbors.labeled.reshape(rows, k)
        used = min(k, self.max_neighbors)
        seed_labeled = batch.labeled[:, None]
        weight = weight[:, :used]
        if self.seeds == "labeled":
            weight = weight * seed_labeled
        weight = weight * self.pair_alpha(seed_labeled, neighbor_labeled[:, :used])
        needed = torch.zeros(rows, k, dtype=torch.bool, device=weight.device)
        needed[:, :used] = weight != 0
        return weight, needed.reshape(-1)

    def packed_neighbor_loss(
        self, outputs: torch.Tensor, neighbor_outputs: torch.Tensor, batch: Batch, needed: torch.Tensor,
        weight: torch.Tensor,
    ) -> torch.Tensor:
        """The unscaled term for packed neighbours; ``neighbor_outputs`` are the ``needed`` rows' outputs."""
        rows, k = batch.neighbor_weight.shape
        seed_rows = torch.arange(rows, device=outputs.device).repeat_interleave(k)[needed]
        distance = outputs.new_zeros(rows * k)
        distance[needed] = pairwise_distance(outputs[seed_rows], neighbor_outputs, self.distance, self.transform)
        distance = self.per_features(distance, outputs)
        return reduce_weighted(distance.reshape(rows, k)[:, : weight.shape[1]], weight, self.reduction)

    def loss(self, step: TrainingStep) -> torch.Tensor | None:
        output, batch = step.output, step.batch
        outputs = output.logits if self.compare == "logits" else output.hidden
        if batch.neighbors is not None and batch.neighbor_weight is not None:
            weight, needed = self.packed_pairs(batch)
            if not bool(needed.any()):  # no labeled seed with a neighbour in this batch
                return None
            neighbor_output = step.forward(select_rows(batch.neighbors, needed))
            neighbor_outputs = neighbor_output.logits if self.compare == "logits" else neighbor_output.hidden
            return self.packed_neighbor_loss(outputs, neighbor_outputs, batch, needed, weight)
        return self.neighbor_loss(outputs, batch)

    def extra_repr(self) -> str:
        mode = "full_graph" if self.full_graph else f"max_neighbors={self.max_neighbors}, {self.neighbor_sampling}"
        return (f"{super().extra_repr()}, distance={self.distance!r}, transform={self.transform!r}, "
                f"reduction={self.reduction!r}, "
                + ("" if self.sum_over_axis == -1 else "sum_over_axis=None, ")
                + f"{mode}, seeds={self.seeds!r}, compare={self.compare!r}")
