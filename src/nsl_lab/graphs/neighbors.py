"""Neighbour lookup over a weighted sample graph, vectorised on the device."""
from __future__ import annotations

from typing import Literal

import torch

from nsl_lab.errors import ConfigError, check_choice, check_integer

#: how neighbours are chosen: the heaviest edges, or drawn uniformly each time
Sampling = Literal["top_k", "uniform"]


class NeighborGraph:
    """A weighted directed graph over ``num_nodes`` samples, stored as CSR.

    Row ``i`` lists the neighbours ``j`` of ``i`` (edge ``i -> j``) sorted by decreasing
    weight, so the top-``k`` neighbours are a slice. Every query is a handful of tensor
    ops over the whole batch: no Python loop over nodes or neighbours.

    Args:
        edge_index: ``[2, E]`` long tensor of (source, target) pairs, torch-geometric style.
        num_nodes: number of nodes.
        edge_weight: ``[E]`` non-negative weights (default 1).
    """

    def __init__(
        self, edge_index: torch.Tensor, num_nodes: int, edge_weight: torch.Tensor | None = None
    ) -> None:
        edge_index = torch.as_tensor(edge_index, dtype=torch.long)
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ConfigError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
        if edge_weight is None:
            edge_weight = torch.ones(edge_index.shape[1])
        edge_weight = torch.as_tensor(edge_weight, dtype=torch.float32).reshape(-1)
        if edge_weight.numel() != edge_index.shape[1]:
            raise ConfigError(
                f"edge_weight has {edge_weight.numel()} entries for {edge_index.shape[1]} edges"
            )
        if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= num_nodes):
            raise ConfigError(
                f"edge_index holds node ids in [{int(edge_index.min())}, {int(edge_index.max())}], "
                f"allowed: 0 .. {num_nodes - 1}"
            )
        if not torch.isfinite(edge_weight).all() or (edge_weight < 0).any():
            raise ConfigError("edge weights must be finite and >= 0")
        source, target = edge_index
        # Sort by source, then by decreasing weight inside each row.
        order = torch.argsort(-edge_weight, stable=True)
        order = order[torch.argsort(source[order], stable=True)]
        self.num_nodes = int(num_nodes)
        self.indices = target[order].contiguous()
        self.weights = edge_weight[order].contiguous()
        counts = torch.bincount(source, minlength=self.num_nodes)
        self.indptr = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])

    @classmethod
    def _from_csr(cls, indptr: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> "NeighborGraph":
        graph = cls.__new__(cls)
        graph.num_nodes = int(indptr.numel() - 1)
        graph.indptr, graph.indices, graph.weights = indptr, indices, weights
        return graph

    @classmethod
    def from_csr(cls, indptr: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor | None = None) -> "NeighborGraph":
        """A graph from CSR arrays: row ``i``'s neighbours are ``indices[indptr[i]:indptr[i + 1]]``
        (``[N + 1]``, ``[E]``, ``[E]`` weights, default 1). Rows not sorted by decreasing weight
        are sorted (stable), as the constructor does."""
        indptr, indices = torch.as_tensor(indptr).long(), torch.as_tensor(indices).long()
        weights = torch.ones(indices.numel()) if weights is None else torch.as_tensor(weights).float()
        if indptr.dim() != 1 or indptr.numel() < 1 or int(indptr[0]) != 0 or int(indptr[-1]) != indices.numel() \
                or bool((indptr[1:] < indptr[:-1]).any()):
            raise ConfigError(f"indptr must rise from 0 to the {indices.numel()} edges, one entry per node and one more")
        if weights.shape != indices.shape:
            raise ConfigError(f"CSR weights have {weights.numel()} entries for {indices.numel()} edges")
        num_nodes = indptr.numel() - 1
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_nodes):
            raise ConfigError(f"CSR indices hold node ids in [{int(indices.min())}, {int(indices.max())}], "
                              f"allowed: 0 .. {num_nodes - 1}")
        if not torch.isfinite(weights).all() or (weights < 0).any():
            raise ConfigError("edge weights must be finite and >= 0")
        source = torch.repeat_interleave(torch.arange(num_nodes), indptr[1:] - indptr[:-1])
        rising = (weights[1:] > weights[:-1]) & (source[1:] == source[:-1])
        if bool(rising.any()):
            return cls(torch.stack([source, indices]), num_nodes, weights)
        return cls._from_csr(indptr, indices, weights)

    @property
    def num_edges(self) -> int:
        return int(self.indices.numel())

    @property
    def degree(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def to(self, device: torch.device | str) -> "NeighborGraph":
        if torch.device(device) == self.device:
            return self
        # Batch.to moves the graph every step: the same copy each time keeps the caches keyed
        # on the graph (the regularizers' pairs, the contrastive gamma) valid across steps.
        moved = self.__dict__.setdefault("_moved", {})
        if str(device) not in moved:
            moved[str(device)] = self._from_csr(self.indptr.to(device), self.indices.to(device), self.weights.to(device))
        return moved[str(device)]

    def edges(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All edges as ``(source, target, weight)``."""
        source = torch.repeat_interleave(torch.arange(self.num_nodes, device=self.device), self.degree)
        return source, self.indices, self.weights

    def edge_index(self) -> torch.Tensor:
        source, target, _ = self.edges()
        return torch.stack([source, target])

    def join(self, other: "NeighborGraph") -> "NeighborGraph":
        """The union of both graphs' edges; an edge in both gets the sum of its two weights."""
        if other.num_nodes != self.num_nodes:
            raise ConfigError(f"cannot join a graph of {other.num_nodes} nodes to one of {self.num_nodes} nodes")
        (source, target, weight), (other_source, other_target, other_weight) = self.edges(), other.to(self.device).edges()
        summed = torch.sparse_coo_tensor(
            torch.stack([torch.cat([source, other_source]), torch.cat([target, other_target])]),
            torch.cat([weight, other_weight]), (self.num_nodes, self.num_nodes), check_invariants=False,
        ).coalesce()
        return NeighborGraph(summed.indices(), self.num_nodes, summed.values())

    def neighbors(
        self,
        index: torch.Tensor,
        k: int,
        sampling: Sampling = "top_k",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``k`` neighbours of each node in ``index``.

        Returns ``(ids [B, k], weights [B, k])``; rows with fewer than ``k`` neighbours are
        padded with id ``-1`` and weight exactly ``0``. ``sampling="top_k"`` takes the
        heaviest edges (ties in input order); ``"uniform"`` draws ``k`` distinct
        neighbours uniformly at random (all of them when the degree is ``<= k``).
        """
        check_integer("max_neighbors", k, 1)
        check_choice("neighbor_sampling", sampling, Sampling)
        index = index.to(self.device)
        start = self.indptr[index]
        degree = self.indptr[index + 1] - start
        if sampling == "top_k" or index.numel() == 0:
            slot = torch.arange(k, device=self.device).expand(index.numel(), k)
        else:
            # Rank random keys per row; padding columns get +inf so they sort last.
            width = max(int(degree.max()), 1)
            keys = torch.rand(index.numel(), width, device=self.device, generator=generator)
            keys = keys.masked_fill(torch.arange(width, device=self.device) >= degree[:, None], float("inf"))
            slot = keys.argsort(dim=1)[:, :k]
            if slot.shape[1] < k:
                slot = torch.cat([slot, slot.new_full((index.numel(), k - slot.shape[1]), width)], 1)
        valid = slot < degree[:, None]
        position = (start[:, None] + slot).clamp(max=max(self.num_edges - 1, 0))
        if self.num_edges == 0:
            return (torch.full_like(slot, -1), torch.zeros(slot.shape, device=self.device))
        ids = torch.where(valid, self.indices[position], torch.full_like(position, -1))
        weights = torch.where(valid, self.weights[position], torch.zeros((), device=self.device))
        return ids, weights

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_nodes={self.num_nodes}, num_edges={self.num_edges})"
