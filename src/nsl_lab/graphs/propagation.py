"""Label propagation over a sample graph (Zhou et al., "Learning with local and global consistency", 2004)."""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse
import torch

from nsl_lab.errors import check_integer, check_range
from nsl_lab.graphs.neighbors import NeighborGraph


def symmetric_normalized_adjacency(graph: NeighborGraph) -> torch.Tensor:
    r""":math:`S = D^{-1/2} (A + A^T) D^{-1/2}` as a sparse CSR tensor (float32, on the CPU),
    :math:`D` the row sums of :math:`A + A^T` (an isolated node's row stays 0).

    Built from the graph's own CSR arrays with scipy's int32-indexed CSR: at a million nodes and
    10M edges its peak is a few hundred MB (a COO build sorts 20M int64 index pairs, ~1 GB), and
    CSR products are ~17x faster than COO ones on one CPU thread.
    """
    graph = graph.to("cpu")
    n = graph.num_nodes
    index_type = np.int32 if graph.num_edges < 2**31 - 1 and n < 2**31 - 1 else np.int64
    adjacency = scipy.sparse.csr_matrix(
        (graph.weights.numpy(), graph.indices.numpy().astype(index_type), graph.indptr.numpy().astype(index_type)),
        shape=(n, n),
    )
    both = (adjacency + adjacency.T).tocsr()  # duplicate pairs are summed
    both.sum_duplicates()
    scale = 1.0 / np.sqrt(np.maximum(np.asarray(both.sum(axis=1)).ravel(), 1e-12))
    rows = np.repeat(np.arange(n), np.diff(both.indptr))
    values = (scale[rows] * both.data * scale[both.indices]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(torch.from_numpy(both.indptr.astype(np.int64)),
                                       torch.from_numpy(both.indices.astype(np.int64)),
                                       torch.from_numpy(values), (n, n), check_invariants=False)


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
    normalized = symmetric_normalized_adjacency(graph).to(labels.device)
    n = graph.num_nodes
    start = torch.zeros(n, num_classes, device=labels.device)
    seeds = (labels >= 0).nonzero().flatten()
    start[seeds, labels[seeds]] = 1.0
    scores = start.clone()
    for _ in range(steps):
        scores = alpha * (normalized @ scores) + (1 - alpha) * start
    return scores
