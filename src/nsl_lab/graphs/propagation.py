"""Label propagation over a sample graph (Zhou et al., "Learning with local and global consistency", 2004)."""
from __future__ import annotations

import warnings

import torch

from nsl_lab.errors import check_integer, check_range
from nsl_lab.graphs.neighbors import NeighborGraph


def label_propagation(
    graph: NeighborGraph, labels: torch.Tensor, num_classes: int, alpha: float = 0.9, steps: int = 50
) -> torch.Tensor:
    r"""Class scores spread from the labeled nodes over the symmetrised graph.

    .. math::
        F^{(0)} = Y,\quad F^{(t+1)} = \alpha\, S F^{(t)} + (1 - \alpha)\, Y,\quad
        S = D^{-1/2} (A + A^T) D^{-1/2}

    where :math:`Y_{ic} = 1` when node :math:`i` carries label :math:`c` (``labels[i] = c``;
    ``-1`` = unlabeled). Returns :math:`F` after ``steps`` steps, ``[num_nodes, num_classes]``,
    non-negative; rows of nodes that no label reaches are 0.
    """
    check_range("label_propagation.alpha", alpha, 0.0, 1.0, high_inclusive=False)
    check_integer("label_propagation.steps", steps, 1)
    source, target, weight = graph.edges()
    n = graph.num_nodes
    index = torch.cat([torch.stack([source, target]), torch.stack([target, source])], 1)
    adjacency = torch.sparse_coo_tensor(index, torch.cat([weight, weight]).float(), (n, n), check_invariants=False).coalesce()
    scale = torch.sparse.sum(adjacency, 1).to_dense().clamp_min(1e-12).rsqrt() if adjacency._nnz() else torch.ones(n, device=graph.device)
    row, column = adjacency.indices()
    normalized = torch.sparse_coo_tensor(adjacency.indices(), scale[row] * adjacency.values() * scale[column], (n, n),
                                         check_invariants=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        # CSR products are ~17x faster than COO on one CPU thread (100k nodes, 2M edges: 24 vs 406 ms).
        normalized = normalized.to_sparse_csr()
    start = torch.zeros(n, num_classes, device=labels.device)
    seeds = (labels >= 0).nonzero().flatten()
    start[seeds, labels[seeds]] = 1.0
    scores = start.clone()
    for _ in range(steps):
        scores = alpha * (normalized @ scores) + (1 - alpha) * start
    return scores
