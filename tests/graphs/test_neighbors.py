import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nsl_lab.errors import ConfigError
from nsl_lab.graphs import NeighborGraph

# 0 -> 1 (w .5), 0 -> 2 (w 2), 0 -> 3 (w 1); 1 -> 0 (w 1); 2 and 3 have no out-edges.
EDGES = torch.tensor([[0, 0, 0, 1], [1, 2, 3, 0]])
WEIGHTS = torch.tensor([0.5, 2.0, 1.0, 1.0])


def test_top_k_by_weight_with_padding():
    graph = NeighborGraph(EDGES, 4, WEIGHTS)
    ids, weights = graph.neighbors(torch.tensor([0, 1, 2]), 2)
    assert ids.tolist() == [[2, 3], [0, -1], [-1, -1]]
    assert weights.tolist() == [[2.0, 1.0], [1.0, 0.0], [0.0, 0.0]]


def test_uniform_sampling_draws_distinct_real_neighbours():
    graph = NeighborGraph(EDGES, 4, WEIGHTS)
    torch.manual_seed(0)
    seen = set()
    for _ in range(50):
        ids, weights = graph.neighbors(torch.tensor([0, 1]), 2, "uniform")
        row = ids[0].tolist()
        assert len(set(row)) == 2 and set(row) <= {1, 2, 3}
        assert ids[1].tolist() == [0, -1] and weights[1].tolist() == [1.0, 0.0]
        expected = {1: 0.5, 2: 2.0, 3: 1.0}
        assert weights[0].tolist() == [expected[i] for i in row]
        seen.add(tuple(sorted(row)))
    assert len(seen) == 3  # every pair of the three neighbours comes up


def test_edges_round_trip_and_errors():
    graph = NeighborGraph(EDGES, 4, WEIGHTS)
    source, target, weight = graph.edges()
    assert sorted(zip(source.tolist(), target.tolist(), weight.tolist())) == sorted(
        zip(EDGES[0].tolist(), EDGES[1].tolist(), WEIGHTS.tolist())
    )
    with pytest.raises(ConfigError, match="max_neighbors=0"):
        graph.neighbors(torch.tensor([0]), 0)
    with pytest.raises(ConfigError, match=r"node ids in \[0, 9\]"):
        NeighborGraph(torch.tensor([[0], [9]]), 4)
    with pytest.raises(ConfigError, match=">= 0"):
        NeighborGraph(EDGES, 4, -WEIGHTS)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.integers(0, 40), st.integers(1, 5), st.sampled_from(["top_k", "uniform"]), st.integers(0, 99))
def test_neighbors_are_real_edges_and_padding_is_zero(n, m, k, sampling, seed):
    generator = torch.Generator().manual_seed(seed)
    edges = torch.randint(0, n, (2, m), generator=generator)
    weights = torch.rand(m, generator=generator) + 0.1
    graph = NeighborGraph(edges, n, weights)
    ids, w = graph.neighbors(torch.arange(n), k, sampling)
    assert ids.shape == (n, k) and w.shape == (n, k)
    degree = torch.bincount(edges[0], minlength=n)
    for node in range(n):
        real = ids[node] >= 0
        assert int(real.sum()) == min(k, int(degree[node]))
        assert (w[node][~real] == 0).all()
        for j, weight in zip(ids[node][real].tolist(), w[node][real].tolist()):
            match = (edges[0] == node) & (edges[1] == j) & torch.isclose(weights, torch.tensor(weight))
            assert bool(match.any())
    if sampling == "top_k":  # weights come out in decreasing order
        assert (w[:, :-1] >= w[:, 1:]).all()
