"""Label propagation and PropagatedLabelRegularizer against hand-computed values, and their errors."""
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nsl_lab import Batch, ConfigError, Output
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.graphs.propagation import label_propagation
from nsl_lab.regularizers import PropagatedLabelRegularizer

# A path 0 - 1 - 2 (unit weights) and an isolated node 3.
PATH = NeighborGraph(torch.tensor([[0, 1], [1, 2]]), 4)


def test_two_propagation_steps_by_hand():
    # S_01 = S_12 = 1 / sqrt(1 * 2); F1 = 0.5 S Y + 0.5 Y, F2 = 0.5 S F1 + 0.5 Y.
    scores = label_propagation(PATH, torch.tensor([0, -1, -1, -1]), 2, alpha=0.5, steps=2)
    s = 1 / math.sqrt(2)
    f1 = [0.5, 0.5 * s, 0.0, 0.0]
    expected = [0.5 * s * f1[1] + 0.5, 0.5 * s * (f1[0] + f1[2]), 0.5 * s * f1[1], 0.0]
    assert scores[:, 0].tolist() == pytest.approx(expected, rel=1e-5)
    assert scores[:, 1].tolist() == [0.0] * 4  # no label of class 1: nothing to spread


def test_pseudo_labels_certainty_and_class_weights_by_hand():
    labels = torch.tensor([0, -1, 1, -1])
    pseudo, weight = PropagatedLabelRegularizer(alpha=0.5, steps=2).pseudo_labels(PATH, labels, 2)
    # Node 1 sits halfway between a 0 and a 1: certainty 0. Node 3 is unreached: weight 0.
    assert weight[1].item() == pytest.approx(0.0, abs=1e-6) and weight[3].item() == 0.0
    scores = label_propagation(PATH, labels, 2, alpha=0.5, steps=2)
    p = scores[0] / scores[0].sum()
    certainty = 1 + float((p * p.log()).sum()) / math.log(2)
    # Nodes 0 and 2 are pseudo-labeled 0 and 1: one each, so both class weights are 1; the
    # weights (c, 0, c) of the reached nodes then scale to mean 1.
    assert 0 < certainty < 1 and pseudo[[0, 2]].tolist() == [0, 1]
    assert weight[[0, 2]].tolist() == pytest.approx([1.5, 1.5], rel=1e-5)


def test_class_weights_balance_the_pseudo_labels():
    # A star: centre 0 labeled 0 reaches three leaves; leaf 4 labeled 1 reaches only itself and 5.
    graph = NeighborGraph(torch.tensor([[0, 0, 0, 4], [1, 2, 3, 5]]), 6)
    labels = torch.tensor([0, -1, -1, -1, 1, -1])
    pseudo, weight = PropagatedLabelRegularizer().pseudo_labels(graph, labels, 2)
    assert pseudo.tolist() == [0, 0, 0, 0, 1, 1]
    # 4 nodes of class 0 and 2 of class 1 (all certain): weights N / (C N_c) = 0.75 and 1.5
    # (mean 1 already).
    assert weight.tolist() == pytest.approx([0.75] * 4 + [1.5] * 2, rel=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(3, 30))
def test_certainty_weights_are_bounded_and_zero_where_unreached(seed, n):
    generator = torch.Generator().manual_seed(seed)
    edges = torch.randint(0, n, (2, 2 * n), generator=generator)
    graph = NeighborGraph(edges[:, edges[0] != edges[1]], n + 1)  # node n has no edge
    labels = torch.full((n + 1,), -1)
    labels[:2] = torch.tensor([0, 1])
    pseudo, weight = PropagatedLabelRegularizer().pseudo_labels(graph, labels, 2)
    assert weight[n].item() == 0.0
    assert bool((weight >= 0).all()) and bool((pseudo >= 0).all() & (pseudo < 2).all())


def learner_with(datamodule) -> SimpleNamespace:
    return SimpleNamespace(_trainer=SimpleNamespace(datamodule=datamodule), num_classes=2, current_epoch=0)


def test_loss_over_the_unlabeled_rows_by_hand():
    graph = NeighborGraph(torch.tensor([[0, 0, 0, 4], [1, 2, 3, 5]]), 6)
    datamodule = SimpleNamespace(graph=graph, train_labels=torch.tensor([0, -1, -1, -1, 1, -1]))
    regularizer = PropagatedLabelRegularizer(multiplier=2.0)
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    batch = Batch(x=torch.zeros(3, 1), y=torch.tensor([0, -1, -1]), index=torch.tensor([0, 1, 5]))
    loss, _ = regularizer(learner_with(datamodule), batch, Output(logits, logits))
    # Row 0 is labeled (skipped); node 1 -> class 0, weight 0.75; node 5 -> class 1, weight 1.5.
    ce_1 = -torch.log_softmax(logits[1], 0)[0].item()
    ce_5 = -torch.log_softmax(logits[2], 0)[1].item()
    assert loss.item() == pytest.approx(2.0 * (0.75 * ce_1 + 1.5 * ce_5) / 2, rel=1e-5)


def test_errors():
    with pytest.raises(ConfigError, match="propagated.alpha=1.0 is out of range"):
        PropagatedLabelRegularizer(alpha=1.0)
    with pytest.raises(ConfigError, match="propagated.steps=0 is not allowed"):
        PropagatedLabelRegularizer(steps=0)
    batch = Batch(x=torch.zeros(1, 1), y=torch.tensor([-1]), index=torch.tensor([0]))
    with pytest.raises(ConfigError, match="needs a datamodule with a graph and train_labels"):
        PropagatedLabelRegularizer()(learner_with(None), batch, Output(torch.zeros(1, 2), torch.zeros(1, 2)))
