"""Neighbour-contrastive regularization on embeddings (Graph-MLP, Hu et al. 2021)."""
from __future__ import annotations

import copy
import warnings
from typing import Literal, NamedTuple, TypeVar

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F

from nsl_lab.context import GraphData, Requirement, TrainingStep
from nsl_lab.errors import ConfigError, check_choice, check_integer, check_range
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.regularizers.base import Regularizer
from nsl_lab.regularizers.graph import Compare

Normalization = Literal["row", "symmetric"]
#: how the block of gamma between the sampled nodes is found: cut from the power built once
#: (``precomputed``), walked from the CSR of the normalised adjacency each step (``on_the_fly``),
#: or the first while the power is small (``auto``)
Positives = Literal["auto", "precomputed", "on_the_fly"]

#: ``auto`` walks on the fly when :math:`\hat A^{r}` may have more nonzeros than this, bounded by
#: the fewer of :math:`N^2` and the walks of length :math:`r` in :math:`A + I` (:func:`walk_count`).
#: Building the power peaks at ~65 bytes a walk (8.6 GB for 1.3e8 walks: a million nodes of degree
#: 10 at 2 hops), ~0.5 GB at this bound; Cora has 1.4e5 walks at 2 hops, 7.3e6 = :math:`N^2` from 4 on.
ON_THE_FLY_NONZEROS = 2**23


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


def normalized_adjacency_matrix(graph: NeighborGraph, normalization: Normalization = "symmetric") -> torch.Tensor:
    r""":math:`\hat A` (:func:`normalized_adjacency_power`, one hop) as a coalesced sparse COO
    ``[N, N]`` matrix on the graph's device, for sparse products with node features."""
    source, target, weight = normalized_adjacency_power(graph, 1, normalization).edges()
    return torch.sparse_coo_tensor(torch.stack([source, target]), weight, (graph.num_nodes,) * 2,
                                   check_invariants=False).coalesce()


def walk_count(graph: NeighborGraph, hops: int, limit: int) -> int:
    r"""The number of walks of length ``hops`` in :math:`A + I`, each stored edge one way whatever its
    weight (a repeated edge, or a self-loop beside :math:`I`'s, twice): :math:`\mathbf 1^T (A + I)^{r}
    \mathbf 1` by ``hops`` products with a vector, O(edges) memory. Stops at the first hop whose count
    is past ``limit`` (long walks would overflow int64)."""
    graph = graph.to("cpu")
    walks = torch.ones(graph.num_nodes, dtype=torch.long)
    for _ in range(hops):
        ends = torch.cat([walks.new_zeros(1), walks[graph.indices].cumsum(0)])
        walks = walks + ends[graph.indptr[1:]] - ends[graph.indptr[:-1]]
        if int(walks.sum()) > limit:
            break
    return int(walks.sum())


def gather_rows(indptr: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every stored entry of the CSR rows ``rows`` (repeats allowed) as ``(owner, entry)``: the
    CSR's entry ``entry[e]`` lies in row ``rows[owner[e]]``; rows in order, each row's in order."""
    start, count = indptr[rows], indptr[rows + 1] - indptr[rows]
    owner = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), count)
    first = torch.cumsum(count, 0) - count  # where each row's entries begin in the gathered list
    return owner, torch.arange(owner.numel(), device=rows.device) + (start - first)[owner]


_M = TypeVar("_M", bound="_Movable")


class _Movable:
    """Holds tensors (the attributes named in ``_moved``, each with ``.to``; ``None`` stays)
    that move to a device together, the first one telling where they are."""

    _moved: tuple[str, ...] = ()

    def to(self: _M, device: torch.device) -> _M:
        """A copy on ``device`` (``self`` when already there)."""
        if getattr(self, self._moved[0]).device == torch.device(device):
            return self
        moved = copy.copy(self)
        for name in self._moved:
            if getattr(self, name) is not None:
                setattr(moved, name, getattr(self, name).to(device))
        return moved


class PositivePairs(_Movable):
    """:math:`\\gamma = \\hat A^{r}` without self-pairs, ready to cut the block of sampled nodes.

    Args:
        positive: the normalised adjacency power (:func:`normalized_adjacency_power`).
    """

    _moved = ("target", "indptr", "weight")

    def __init__(self, positive: NeighborGraph) -> None:
        source, target, weight = positive.edges()
        off_diagonal = source != target
        counts = torch.bincount(source[off_diagonal], minlength=positive.num_nodes)
        self.num_nodes = positive.num_nodes
        self.indptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        self.target, self.weight = target[off_diagonal], weight[off_diagonal]

    def submatrix(self, nodes: torch.Tensor) -> torch.Tensor:
        """``[len(nodes), len(nodes)]``: :math:`\\gamma` between the nodes, 0 where no edge."""
        # Only the sampled nodes' rows (CSR): ~sample_size / N of the edges, not all of them.
        row, edge = gather_rows(self.indptr, nodes)
        # Which row of the subset each node of the graph is, -1 when not sampled.
        position = torch.full((self.num_nodes,), -1, dtype=torch.long, device=nodes.device)
        position[nodes] = torch.arange(nodes.numel(), device=nodes.device)
        column = position[self.target[edge]]
        keep = column >= 0
        gamma = torch.zeros(nodes.numel(), nodes.numel(), device=nodes.device)
        gamma[row[keep], column[keep]] = self.weight[edge[keep]]
        return gamma


class Csr(NamedTuple):
    """A square sparse matrix: row ``i`` holds ``values[indptr[i]:indptr[i + 1]]`` in the columns
    ``indices[indptr[i]:indptr[i + 1]]`` (a column may repeat: its values add up)."""

    indptr: torch.Tensor
    indices: torch.Tensor
    values: torch.Tensor

    @classmethod
    def of(cls, matrix: scipy.sparse.csr_matrix) -> "Csr":
        """A scipy CSR matrix as int64 indices and float32 values."""
        return cls(torch.from_numpy(matrix.indptr.astype(np.int64)), torch.from_numpy(matrix.indices.astype(np.int64)),
                   torch.from_numpy(matrix.data.astype(np.float32)))

    @property
    def device(self) -> torch.device:
        return self.indices.device

    @property
    def num_nodes(self) -> int:
        return self.indptr.numel() - 1

    def to(self, device: torch.device) -> "Csr":
        return Csr(*(t.to(device) for t in self))


#: sparse entries ``(row, column, value)``
Entries = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def walk(edges: Csr, left: torch.Tensor, right: torch.Tensor, hops: int, start: Entries) -> Entries:
    r"""The entries of :math:`X M^{hops}`, :math:`M = \mathrm{diag}(left)\,(E + I)\,\mathrm{diag}(right)`
    with :math:`E` the CSR ``edges``, from the entries ``start`` of :math:`X` (``len(start[0])``
    rows): a sparse frontier, each hop a gather of the rows of :math:`E` it stands on."""
    row, column, value = start
    size = (start[0].numel(), edges.num_nodes)
    for _ in range(hops):
        owner, entry = gather_rows(edges.indptr, column)
        value = value * left[column]
        # The edges out of the frontier, and the frontier itself (the identity's self-loops).
        row = torch.cat([row[owner], row])
        column = torch.cat([edges.indices[entry], column])
        value = torch.cat([value[owner] * edges.values[entry], value]) * right[column]
        summed = torch.sparse_coo_tensor(torch.stack([row, column]), value, size, check_invariants=False).coalesce()
        (row, column), value = summed.indices(), summed.values()
    return row, column, value


def meet(out: Entries, back: Entries, nodes: torch.Tensor) -> torch.Tensor:
    r"""``[len(nodes), len(nodes)]``: :math:`\sum_k X_{sk} Y_{tk}` of the entries ``out`` of
    :math:`X` and ``back`` of :math:`Y`, 0 where the nodes ``nodes[s]``, ``nodes[t]`` are the same."""
    (row, middle, value), (column, back_middle, back_value) = out, back
    # The walks back as a CSR over the middle nodes they reach, for each walk out to look up.
    order = torch.argsort(back_middle)
    keys, counts = torch.unique_consecutive(back_middle[order], return_counts=True)
    slot = torch.searchsorted(keys, middle).clamp_(max=keys.numel() - 1)
    met = keys[slot] == middle
    owner, entry = gather_rows(torch.cat([counts.new_zeros(1), counts.cumsum(0)]), slot[met])
    entry = order[entry]
    source, target = row[met][owner], column[entry]
    weight = value[met][owner] * back_value[entry]
    keep = nodes[source] != nodes[target]  # self-pairs never count, as in PositivePairs
    gamma = torch.zeros(nodes.numel(), nodes.numel(), dtype=value.dtype, device=nodes.device)
    return gamma.index_put_((source[keep], target[keep]), weight[keep], accumulate=True)


class AdjacencyPowerBlocks(_Movable):
    r""":math:`\gamma = \hat A^{r}` between sampled nodes :math:`S`, without self-pairs, found
    each time from the graph's own CSR: rows :math:`S` of :math:`\hat A^{\lceil r/2 \rceil}`
    (walks out of :math:`S`) times columns :math:`S` of :math:`\hat A^{\lfloor r/2 \rfloor}`
    (walks back along :math:`\hat A^T`), met at the middle node, with
    :math:`\hat A = L (A + I) R` (``row``: :math:`L = D^{-1}, R = I`; ``symmetric``:
    :math:`L = R = D^{-1/2}`) and :math:`\hat A^T = R (A^T + I) L`. Kept: the degree scales and,
    for a directed graph, the CSR of :math:`A^T` (O(edges)), never the power; a block costs the
    walks from :math:`S`.

    Args:
        graph: the sample graph :math:`A` (weighted, directed or not).
        hops: :math:`r \ge 1`.
        normalization: ``row`` or ``symmetric``, as in :func:`normalized_adjacency_power`.
    """

    _moved = ("edges", "left", "right", "transpose")

    def __init__(self, graph: NeighborGraph, hops: int, normalization: Normalization = "row") -> None:
        check_integer("hops", hops, 1)
        check_choice("normalization", normalization, Normalization)
        graph = graph.to("cpu")
        n = graph.num_nodes
        # A copy: sum_duplicates sorts the column indices in place, and these are the graph's arrays.
        adjacency = scipy.sparse.csr_matrix(
            (graph.weights.numpy(), graph.indices.numpy(), graph.indptr.numpy()), shape=(n, n), copy=True
        )
        adjacency.sum_duplicates()
        degree = torch.from_numpy(np.asarray(adjacency.sum(axis=1, dtype=np.float64)).ravel() + 1.0)
        scale = 1.0 / degree if normalization == "row" else degree.rsqrt()
        self.left = scale.float()
        self.right = torch.ones(n) if normalization == "row" else self.left
        self.hops, self.edges = hops, Csr(graph.indptr, graph.indices, graph.weights)
        #: the CSR of A^T; None where no walk goes back (one hop) or A is symmetric
        self.transpose: Csr | None = None
        if hops > 1:
            transpose = adjacency.T.tocsr()
            if (transpose != adjacency).nnz:
                self.transpose = Csr.of(transpose)

    def submatrix(self, nodes: torch.Tensor) -> torch.Tensor:
        """``[len(nodes), len(nodes)]``: :math:`\\gamma` between the nodes, 0 where no walk."""
        size = nodes.numel()
        start = (torch.arange(size, device=nodes.device), nodes, torch.ones(size, device=nodes.device))
        out = walk(self.edges, self.left, self.right, (self.hops + 1) // 2, start)
        transpose = self.edges if self.transpose is None else self.transpose
        return meet(out, walk(transpose, self.right, self.left, self.hops // 2, start), nodes)


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
    useful when labels are scarce. :math:`\gamma` comes from the fit's graph, prepared once at
    :meth:`setup`; the batch's ``index`` says which graph nodes its rows are. Its block of
    :math:`S` is cut from :math:`\hat A^{r}` built once (:class:`PositivePairs`), or walked each
    step from the graph's CSR (:class:`AdjacencyPowerBlocks`: rows :math:`S` of
    :math:`\hat A^{\lceil r/2 \rceil}` times columns :math:`S` of :math:`\hat A^{\lfloor r/2
    \rfloor}`, memory O(edges)): the same values up to float32 rounding.

    Args:
        multiplier: :math:`\lambda`.
        temperature: :math:`\tau`.
        hops: :math:`r`, the power of the adjacency that counts as "neighbour".
        sample_size: rows compared per step (the cost is quadratic in it).
        compare: ``hidden`` (penultimate embedding) or ``logits``.
        normalization: ``row`` (:math:`D^{-1}(A+I)`, Graph-MLP) or ``symmetric``.
        warmup_epochs: ramp :math:`\lambda` up linearly over these first epochs.
        positives: ``precomputed`` (:math:`\hat A^{r}` materialised: a million nodes of degree
            10 at 2 hops peak at 8.6 GB), ``on_the_fly`` (the graph's CSR, its degrees and, when
            directed, its transpose: O(edges)), or ``auto`` (default): on the fly when
            :math:`\hat A^{r}` may have more than :data:`ON_THE_FLY_NONZEROS` (:math:`2^{23}`)
            nonzeros, fewer than :math:`N^2` and than the walks of length :math:`r` in :math:`A + I`.
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
        positives: Positives = "auto",
    ) -> None:
        super().__init__(multiplier, warmup_epochs)
        check_range("temperature", temperature, 0.0, low_inclusive=False)
        check_integer("hops", hops, 1)
        check_integer("sample_size", sample_size, 2)
        check_choice("compare", compare, Compare)
        check_choice("normalization", normalization, Normalization)
        check_choice("positives", positives, Positives)
        self.normalization, self.positives = normalization, positives
        self.temperature, self.hops, self.sample_size, self.compare = float(temperature), hops, sample_size, compare
        self._pairs: PositivePairs | AdjacencyPowerBlocks | None = None
        self._self_mask: torch.Tensor | None = None

    @property
    def requirements(self) -> frozenset[Requirement]:
        return frozenset({"graph"})

    def setup(self, data: GraphData) -> None:
        if data.graph is None:
            raise ConfigError("the contrastive regularizer needs a graph; this data has none (set data.graph)")
        self._pairs = None  # the last fit's pairs go before this fit's are built
        positives = self.positives
        if positives == "auto":
            nonzeros = min(walk_count(data.graph, self.hops, ON_THE_FLY_NONZEROS), data.graph.num_nodes ** 2)
            positives = "on_the_fly" if nonzeros > ON_THE_FLY_NONZEROS else "precomputed"
        if positives == "on_the_fly":
            self._pairs = AdjacencyPowerBlocks(data.graph, self.hops, self.normalization)
        else:
            self._pairs = PositivePairs(normalized_adjacency_power(data.graph, self.hops, self.normalization))

    def positive_pairs(self, device: torch.device) -> PositivePairs | AdjacencyPowerBlocks:
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
                f"sample_size={self.sample_size}, compare={self.compare!r}, normalization={self.normalization!r}, "
                f"positives={self.positives!r}")
