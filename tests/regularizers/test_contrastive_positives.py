"""The contrastive term's gamma block walked on the fly equals the one cut from the materialised power."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nsl_lab import ConfigError, NeighborGraph
from nsl_lab.regularizers import GraphData, NeighborContrastiveRegularizer
from nsl_lab.regularizers import contrastive
from nsl_lab.regularizers.contrastive import (
    AdjacencyPowerBlocks, PositivePairs, normalized_adjacency_power, walk_count,
)


@st.composite
def graphs(draw) -> tuple[NeighborGraph, torch.Tensor]:
    """A small weighted graph (directed or each edge both ways; self-loops, repeated and zero-weight
    edges allowed) and a random subset of its nodes, without repeats, in random order."""
    n = draw(st.integers(1, 12))
    edges = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1),
                                    st.sampled_from([0.0, 0.25, 1.0, 2.5]) | st.floats(0.01, 3.0)), max_size=40))
    if draw(st.booleans()):  # undirected
        edges += [(t, s, w) for s, t, w in edges]
    index = torch.tensor([[s for s, _, _ in edges], [t for _, t, _ in edges]], dtype=torch.long).reshape(2, -1)
    graph = NeighborGraph(index, n, torch.tensor([w for _, _, w in edges]))
    nodes = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n, unique=True))
    return graph, torch.tensor(nodes)


@settings(max_examples=150, deadline=None)
@given(drawn=graphs(), hops=st.integers(1, 3), normalization=st.sampled_from(["row", "symmetric"]))
def test_the_block_walked_on_the_fly_equals_the_precomputed_one(drawn, hops, normalization):
    graph, nodes = drawn
    precomputed = PositivePairs(normalized_adjacency_power(graph, hops, normalization)).submatrix(nodes)
    on_the_fly = AdjacencyPowerBlocks(graph, hops, normalization).submatrix(nodes)
    assert torch.equal(on_the_fly > 0, precomputed > 0)  # the same positive pairs
    torch.testing.assert_close(on_the_fly, precomputed, rtol=1e-5, atol=0.0)
    # Walks in the multigraph A + I: each stored edge counts, whatever its weight.
    edge_count = torch.zeros(graph.num_nodes, graph.num_nodes, dtype=torch.float64)
    edge_count.index_put_(tuple(graph.edge_index()), torch.ones(graph.num_edges, dtype=torch.float64), accumulate=True)
    walks = torch.linalg.matrix_power(edge_count + torch.eye(graph.num_nodes), hops).sum()
    assert walk_count(graph, hops, 2**40) == int(walks)


def test_a_directed_weighted_triangle_by_hand():
    # 0 -> 1 (weight 2), 1 -> 2, 2 -> 0. Row-normalised A + I: [1/3 2/3 0; 0 1/2 1/2; 1/2 0 1/2];
    # its square: [1/9 5/9 1/3; 1/4 1/4 1/2; 5/12 1/3 1/4], the diagonal dropped.
    graph = NeighborGraph(torch.tensor([[0, 1, 2], [1, 2, 0]]), 3, torch.tensor([2.0, 1.0, 1.0]))
    nodes = torch.tensor([2, 0, 1])
    expected = torch.tensor([[0.0, 5 / 12, 1 / 3], [1 / 3, 0.0, 5 / 9], [1 / 2, 1 / 4, 0.0]])
    for pairs in (PositivePairs(normalized_adjacency_power(graph, 2)), AdjacencyPowerBlocks(graph, 2)):
        torch.testing.assert_close(pairs.submatrix(nodes), expected)
    # Two of the nodes: only their block.
    torch.testing.assert_close(AdjacencyPowerBlocks(graph, 2).submatrix(torch.tensor([2, 0])),
                               torch.tensor([[0.0, 5 / 12], [1 / 3, 0.0]]))


def random_graph(n: int, seed: int) -> NeighborGraph:
    generator = torch.Generator().manual_seed(seed)
    edges = torch.randint(0, n, (2, 4 * n), generator=generator)
    return NeighborGraph(edges, n, torch.rand(4 * n, generator=generator) + 0.1)


@pytest.mark.parametrize("hops, normalization", [(1, "row"), (2, "row"), (3, "symmetric")])
def test_the_loss_is_the_same_whichever_path(hops, normalization):
    graph = random_graph(60, seed=hops)
    data = GraphData(graph, torch.full((60,), -1), num_classes=2)
    z = torch.randn(60, 8, generator=torch.Generator().manual_seed(1))
    rows, index = torch.randperm(60, generator=torch.Generator().manual_seed(2))[:40], torch.arange(60)
    losses = []
    for positives in ("precomputed", "on_the_fly"):
        regularizer = NeighborContrastiveRegularizer(hops=hops, normalization=normalization, positives=positives)
        regularizer.setup(data)
        losses.append(regularizer.contrastive_loss(z, rows, index).item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)


def test_auto_walks_on_the_fly_only_past_the_threshold(monkeypatch):
    graph = random_graph(30, seed=0)
    data = GraphData(graph, torch.full((30,), -1), num_classes=2)
    regularizer = NeighborContrastiveRegularizer(hops=2)
    regularizer.setup(data)
    assert isinstance(regularizer.positive_pairs(torch.device("cpu")), PositivePairs)
    monkeypatch.setattr(contrastive, "ON_THE_FLY_NONZEROS", walk_count(graph, 2, 2**40) - 1)
    regularizer.setup(data)
    assert isinstance(regularizer.positive_pairs(torch.device("cpu")), AdjacencyPowerBlocks)
    # N^2 bounds the nonzeros too: past it, the power stays precomputed however many walks.
    monkeypatch.setattr(contrastive, "ON_THE_FLY_NONZEROS", 30**2)
    regularizer.setup(data)
    assert isinstance(regularizer.positive_pairs(torch.device("cpu")), PositivePairs)


def test_a_bad_positives_setting_names_the_value_and_the_choices():
    with pytest.raises(ConfigError, match=r"^positives='sometimes' is not supported; "
                                          r"allowed: 'auto', 'precomputed', 'on_the_fly'$"):
        NeighborContrastiveRegularizer(positives="sometimes")
