import pytest
import torch
from torch import nn

from nsl_lab import Batch, ConfigError, GraphRegularizer, NeighborGraph, Output, StructuredLearner
from nsl_lab.modules import WrappedModule
from nsl_lab.regularizers import GraphData, NeighborContrastiveRegularizer, TrainingStep
from nsl_lab.regularizers.contrastive import PositivePairs, normalized_adjacency_power

# Path 0 - 1 - 2 plus 3 -> 0, undirected except the last edge. Node 0 and 2 labeled.
EDGES = torch.tensor([[0, 1, 1, 2, 3], [1, 0, 2, 1, 0]])
WEIGHTS = torch.tensor([1.0, 1.0, 0.5, 0.5, 2.0])
LOGITS = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
Y = torch.tensor([0, -1, 1, -1])


def batch() -> Batch:
    return Batch(x=torch.zeros(4, 1), y=Y, index=torch.arange(4), graph=NeighborGraph(EDGES, 4, WEIGHTS))


def sq(a, b):
    return float(((LOGITS[a] - LOGITS[b]) ** 2).sum())


def step_of(data: Batch, epoch: int = 0) -> TrainingStep:
    """The training step on ``data`` whose logits (and hidden layer) are ``LOGITS``."""
    return TrainingStep(data, Output(LOGITS, LOGITS), backbone=None, epoch=epoch, num_classes=2)


def test_nsl_labeled_seeds_top_k_by_hand():
    # Seeds 0 and 2; neighbours 0->1 (w 1), 2->1 (w .5); NSL reduction: sum(w d) / #nonzero.
    regularizer = GraphRegularizer(multiplier=0.1, distance="l2", max_neighbors=2)
    expected = (1.0 * sq(0, 1) + 0.5 * sq(2, 1)) / 2
    assert regularizer.neighbor_loss(LOGITS, batch()).item() == pytest.approx(expected)
    loss = regularizer(step_of(batch()))
    assert loss.item() == pytest.approx(0.1 * expected)


def test_all_seeds_with_pair_type_weights_by_hand():
    # Pairs (i -> j): 0->1 LU, 1->0 LU, 1->2 LU, 2->1 LU, 3->0 UL (w 2): all labeled-unlabeled.
    regularizer = GraphRegularizer(seeds="all", max_neighbors=3, labeled_unlabeled=0.5, reduction="sum")
    expected = 0.5 * (1.0 * sq(0, 1) + 1.0 * sq(1, 0) + 0.5 * sq(1, 2) + 0.5 * sq(2, 1) + 2.0 * sq(3, 0))
    assert regularizer.neighbor_loss(LOGITS, batch()).item() == pytest.approx(expected)
    # Zeroing the labeled-unlabeled weight leaves nothing: every edge touches one labeled node.
    none = GraphRegularizer(seeds="all", labeled_unlabeled=0.0)
    assert none.neighbor_loss(LOGITS, batch()).item() == 0.0


def test_full_graph_equals_sampling_every_neighbour():
    for seeds in ("labeled", "all"):
        full = GraphRegularizer(full_graph=True, seeds=seeds, distance="kl", transform="softmax")
        sampled = GraphRegularizer(max_neighbors=4, seeds=seeds, distance="kl", transform="softmax")
        assert full.neighbor_loss(LOGITS, batch()).item() == pytest.approx(sampled.neighbor_loss(LOGITS, batch()).item())


def test_neighbours_outside_the_batch_are_dropped():
    sub = Batch(x=torch.zeros(2, 1), y=torch.tensor([0, -1]), index=torch.tensor([0, 3]), graph=NeighborGraph(EDGES, 4, WEIGHTS))
    regularizer = GraphRegularizer(seeds="all", max_neighbors=2, reduction="sum")
    # Only the edge 3 -> 0 has both ends in the batch (rows 1 -> 0).
    logits = LOGITS[[0, 3]]
    assert regularizer.neighbor_loss(logits, sub).item() == pytest.approx(2.0 * sq(3, 0))


def test_gradient_reaches_both_ends():
    logits = LOGITS.clone().requires_grad_(True)
    GraphRegularizer(max_neighbors=1).neighbor_loss(logits, batch()).backward()
    assert logits.grad[1].abs().sum() > 0 and logits.grad[0].abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_neighbors": 0}, r"^max_neighbors=0 .* integer >= 1"),
        ({"max_neighbors": 2.0}, r"^max_neighbors=2.0 .* integer >= 1"),
        ({"distance": "euclid"}, r"^distance='euclid' is not supported; allowed: 'l1', 'l2'"),
        ({"seeds": "some"}, r"^seeds='some'"),
        ({"multiplier": -1.0}, r"^multiplier=-1.0 is out of range"),
    ],
)
def test_bad_settings_name_value_and_choices(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GraphRegularizer(**kwargs)


def test_contrastive_by_hand_on_a_triangle_with_an_outsider():
    # Nodes 0-1 connected, 2 isolated. With hops=1 gamma = D^-1/2 (A+I) D^-1/2.
    graph = NeighborGraph(torch.tensor([[0, 1], [1, 0]]), 3)
    gamma = normalized_adjacency_power(graph, 1, "symmetric")
    g = {(int(s), int(t)): float(w) for s, t, w in zip(*gamma.edges())}
    assert g[(0, 1)] == pytest.approx(0.5) and g[(0, 0)] == pytest.approx(0.5) and g[(2, 2)] == pytest.approx(1.0)
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    b = Batch(x=torch.zeros(3, 1), y=torch.full((3,), -1), index=torch.arange(3))
    regularizer = NeighborContrastiveRegularizer(temperature=0.5, hops=1, normalization="symmetric")
    regularizer.setup(GraphData(graph, b.y, num_classes=2))  # the positive pairs come from the fit's graph
    tau = 0.5
    cos = z @ z.t()
    # Rows with a positive: 0 and 1 (node 2 has none but itself).
    row0 = -torch.log(0.5 * torch.exp(cos[0, 1] / tau) / (torch.exp(cos[0, 1] / tau) + torch.exp(cos[0, 2] / tau)))
    row1 = -torch.log(0.5 * torch.exp(cos[1, 0] / tau) / (torch.exp(cos[1, 0] / tau) + torch.exp(cos[1, 2] / tau)))
    value = regularizer.contrastive_loss(z, torch.arange(3), b.index)
    assert value.item() == pytest.approx(((row0 + row1) / 2).item(), rel=1e-5)


def test_python_api_wraps_a_plain_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 2))  # returns logits only
    learner = StructuredLearner(model, [GraphRegularizer(multiplier=0.5)], num_classes=2)
    assert isinstance(learner.backbone, WrappedModule) and learner.backbone.module is model
    loss = learner.training_step(batch(), 0)
    loss.backward()
    assert loss.item() > 0 and all(p.grad is not None for p in model.parameters())


def test_contrastive_gradient_is_finite_when_some_rows_have_no_positive():
    graph = NeighborGraph(torch.tensor([[0, 1], [1, 0]]), 3)  # node 2 has no neighbour
    z = torch.randn(3, 4, requires_grad=True)
    b = Batch(x=torch.zeros(3, 1), y=torch.full((3,), -1), index=torch.arange(3))
    regularizer = NeighborContrastiveRegularizer(hops=1)
    regularizer.setup(GraphData(graph, b.y, num_classes=2))
    regularizer.contrastive_loss(z, torch.arange(3), b.index).backward()
    assert torch.isfinite(z.grad).all()


def test_warmup_ramps_the_multiplier_linearly():
    regularizer = GraphRegularizer(multiplier=2.0, warmup_epochs=4)
    seen = [regularizer.weight(epoch) for epoch in range(6)]
    assert seen == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert GraphRegularizer(multiplier=2.0).weight(0) == 2.0  # no warmup: full weight from the start
    # The term is scaled by the weight of the step's epoch.
    unscaled = regularizer.neighbor_loss(LOGITS, batch()).item()
    assert regularizer(step_of(batch(), epoch=5)).item() == pytest.approx(2.0 * unscaled)
    assert regularizer(step_of(batch(), epoch=0)).item() == pytest.approx(0.5 * unscaled)
    with pytest.raises(ConfigError, match="^warmup_epochs=-1"):
        GraphRegularizer(warmup_epochs=-1)


def test_contrastive_gamma_block_equals_the_dense_matrix():
    generator = torch.Generator().manual_seed(0)
    edges = torch.randint(0, 40, (2, 150), generator=generator)
    positive = normalized_adjacency_power(NeighborGraph(edges, 40), 2)
    dense = torch.sparse_coo_tensor(positive.edge_index(), positive.weights, (40, 40)).to_dense()
    dense.fill_diagonal_(0.0)  # self-pairs never count
    nodes = torch.randperm(40, generator=generator)[:15]
    assert torch.equal(PositivePairs(positive).submatrix(nodes), dense[nodes][:, nodes])


def test_cached_pairs_follow_a_change_of_labels():
    # With full-graph data the pairs are found once, at setup, and kept while the whole graph
    # comes back; a setup with other training labels must find them again.
    regularizer = GraphRegularizer(distance="l2", max_neighbors=2)
    data = batch()
    regularizer.setup(GraphData(data.graph, Y.clone(), num_classes=2, full_batch=True))
    first = regularizer.neighbor_loss(LOGITS, data)
    assert regularizer.pairs(data)[0] is regularizer.pairs(data)[0]
    relabelled = Y.clone()
    relabelled[2] = -1  # node 2 is no seed any more
    data.y = relabelled
    regularizer.setup(GraphData(data.graph, relabelled, num_classes=2, full_batch=True))
    assert regularizer.neighbor_loss(LOGITS, data).item() == pytest.approx(sq(0, 1))
    assert first.item() != pytest.approx(sq(0, 1))
    # Without full-graph data the pairs come from each batch: relabelling in place is followed.
    per_batch = GraphRegularizer(distance="l2", max_neighbors=2)
    data.y = Y.clone()
    assert per_batch.neighbor_loss(LOGITS, data).item() == pytest.approx(first.item())
    data.y[2] = -1
    assert per_batch.neighbor_loss(LOGITS, data).item() == pytest.approx(sq(0, 1))
