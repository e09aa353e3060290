"""Graph regularization with neighbours packed into mini-batches, against hand-computed values."""
import pytest
import torch
from torch import nn

from nsl_lab import Batch, GraphRegularizer, Output, StructuredLearner
from nsl_lab.regularizers import TrainingStep


class Identity(nn.Module):
    """Logits = inputs; counts the rows it sees."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        self.rows_seen = []

    def forward(self, x, **_):
        self.rows_seen.append(len(x))
        return Output(x, 2 * x)


def packed_batch() -> Batch:
    # seeds: row 0 labeled, row 1 unlabeled; 2 neighbour slots each.
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    neighbors = Batch(
        x=torch.tensor([[1.0, 0.0], [0.0, 0.0], [3.0, 1.0], [1.0, 2.0]]),
        y=torch.tensor([1, -1, 0, -1]),
        index=torch.tensor([5, 0, 6, 7]),
    )
    return Batch(x=x, y=torch.tensor([0, -1]), index=torch.tensor([0, 1]), neighbors=neighbors,
                 neighbor_weight=torch.tensor([[0.5, 0.0], [1.0, 2.0]]))


def loss_of(regularizer: GraphRegularizer, batch: Batch) -> tuple[torch.Tensor, Identity]:
    backbone = Identity()
    learner = StructuredLearner(backbone)
    output = learner(batch)
    backbone.rows_seen.clear()
    loss = regularizer(TrainingStep(batch, output, learner.backbone, num_classes=2))
    assert loss.dim() == 0  # one scaled term; the learner logs it under the regularizer's name
    return loss, backbone


def test_labeled_seeds_use_only_their_weighted_neighbours():
    # seed 0 (labeled) - neighbour [1, 0] weight 0.5: squared L2 = 1; the padded slot counts for nothing.
    loss, backbone = loss_of(GraphRegularizer(multiplier=2.0, distance="l2"), packed_batch())
    assert loss.item() == pytest.approx(2.0 * (0.5 * 1.0) / 1)
    assert backbone.rows_seen == [1]  # one extra forward, on the one neighbour that carries weight


def test_all_seeds_with_pair_type_weights():
    # seed 1 (unlabeled) pairs: [3,1] labeled, d = 4 + 0 = 4, w = 1, alpha_LU = 0.5;
    #                           [1,2] unlabeled, d = 0 + 1 = 1, w = 2, alpha_UU = 0.25.
    # seed 0 (labeled) pair: [1,0] labeled, d = 1, w = 0.5, alpha_LL = 1.
    regularizer = GraphRegularizer(multiplier=1.0, distance="l2", seeds="all", labeled_unlabeled=0.5,
                                   unlabeled_unlabeled=0.25)
    loss, backbone = loss_of(regularizer, packed_batch())
    weighted = 0.5 * 1.0 + 0.5 * 4.0 + 0.25 * 2 * 1.0
    assert loss.item() == pytest.approx(weighted / 3)  # sum_by_nonzero_weights: three non-zero pairs
    assert backbone.rows_seen == [3]


@pytest.mark.parametrize("reduction, expected", [("sum", 4.5), ("mean", 4.5 / 4), ("mean_by_weight", 4.5 / 3.5)])
def test_reductions_over_packed_pairs(reduction, expected):
    loss, _ = loss_of(GraphRegularizer(distance="l1", seeds="all", reduction=reduction, multiplier=1.0), packed_batch())
    # l1: seed 0 - [1,0] = 1 (w 0.5); seed 1 - [3,1] = 2 (w 1); seed 1 - [1,2] = 1 (w 2) -> 0.5 + 2 + 2 = 4.5
    assert loss.item() == pytest.approx(expected)


def test_max_neighbors_keeps_the_first_columns_and_hidden_compare():
    regularizer = GraphRegularizer(distance="l2", seeds="all", max_neighbors=1, compare="hidden", multiplier=1.0)
    loss, backbone = loss_of(regularizer, packed_batch())
    # hidden = 2x: seed 0 - [2,0]: 4 (w 0.5); seed 1 [2,2] - [6,2]: 16 (w 1)
    assert loss.item() == pytest.approx((0.5 * 4 + 1 * 16) / 2)
    assert backbone.rows_seen == [2]


def test_no_weighted_neighbour_gives_zero_without_a_forward():
    batch = packed_batch()
    batch.y = torch.tensor([-1, -1])
    loss, backbone = loss_of(GraphRegularizer(), batch)
    assert loss.item() == 0.0 and backbone.rows_seen == []


def test_gradient_flows_to_seed_and_neighbour_inputs():
    batch = packed_batch()
    batch.x.requires_grad_(True)
    batch.neighbors.x.requires_grad_(True)
    learner = StructuredLearner(Identity())
    loss = GraphRegularizer(multiplier=1.0)(TrainingStep(batch, learner(batch), learner.backbone, num_classes=2))
    loss.backward()
    # d/dx0 of 0.5 * |x0 - n0|^2 = (x0 - n0) = [-1, 0]
    assert torch.allclose(batch.x.grad[0], torch.tensor([-1.0, 0.0]))
    assert torch.allclose(batch.neighbors.x.grad[0], torch.tensor([1.0, 0.0]))
