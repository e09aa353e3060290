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
@given(seed=st.integers(0, 2**16), n=st.integers(3, 30), align=st.booleans())
def test_certainty_weights_are_bounded_and_zero_where_unreached(seed, n, align):
    generator = torch.Generator().manual_seed(seed)
    edges = torch.randint(0, n, (2, 2 * n), generator=generator)
    graph = NeighborGraph(edges[:, edges[0] != edges[1]], n + 1)  # node n has no edge
    labels = torch.full((n + 1,), -1)
    labels[:2] = torch.tensor([0, 1])
    pseudo, weight = PropagatedLabelRegularizer(align_to_prior=align).pseudo_labels(graph, labels, 2)
    assert weight[n].item() == 0.0
    assert bool(torch.isfinite(weight).all()) and bool((weight >= 0).all())
    assert bool((pseudo >= 0).all() & (pseudo < 2).all())


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


def test_join_sums_shared_edges_and_keeps_the_rest():
    first = NeighborGraph(torch.tensor([[0, 1], [1, 2]]), 4, torch.tensor([1.0, 2.0]))
    second = NeighborGraph(torch.tensor([[0, 3], [1, 0]]), 4, torch.tensor([0.5, 4.0]))
    source, target, weight = first.join(second).edges()
    edges = {(int(s), int(t)): float(w) for s, t, w in zip(source, target, weight)}
    assert edges == {(0, 1): 1.5, (1, 2): 2.0, (3, 0): 4.0}
    with pytest.raises(ConfigError, match="cannot join a graph of 5 nodes to one of 4 nodes"):
        first.join(NeighborGraph(torch.zeros(2, 0, dtype=torch.long), 5))


class FeatureLearner(torch.nn.Module):
    """A learner stand-in whose penultimate embedding of sample i is ``HIDDEN[i]``."""

    HIDDEN = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [1.0, 0.05]])

    def __init__(self, datamodule, epoch: int) -> None:
        super().__init__()
        self._trainer = SimpleNamespace(datamodule=datamodule)
        self.num_classes, self.current_epoch, self.device, self.calls = 2, epoch, torch.device("cpu"), 0

    def forward(self, batch: Batch) -> Output:
        assert not self.training  # embeddings come from the network in eval mode
        self.calls += 1
        return Output(torch.zeros(len(batch), 2), self.HIDDEN[batch.index])


def feature_datamodule() -> SimpleNamespace:
    # Samples 0..3 train (0 and 2 labeled), 4 is a test sample; the data graph has no edges.
    return SimpleNamespace(
        graph=NeighborGraph(torch.zeros(2, 0, dtype=torch.long), 5), train_labels=torch.tensor([0, -1, 1, -1, -1]),
        rows={"train": torch.arange(4), "val": torch.zeros(0, dtype=torch.long), "test": torch.tensor([4])},
        rows_batch=lambda index, y: Batch(x=torch.zeros(len(index), 1), y=y[index], index=index), eval_batch_size=2,
    )


def test_feature_graph_joins_the_networks_nearest_samples_outside_the_test_split():
    regularizer = PropagatedLabelRegularizer(feature_graph_from_epoch=1, feature_graph_k=1)
    learner = FeatureLearner(feature_datamodule(), epoch=1)
    learner.train()
    source, target, weight = regularizer.feature_graph(learner, learner._trainer.datamodule).edges()
    # Nearest by cosine: 0 <-> 1 and 2 <-> 3; the test sample 4 (closest to 0) is never embedded.
    assert sorted(zip(source.tolist(), target.tolist())) == [(0, 1), (1, 0), (2, 3), (3, 2)]
    expected = float(torch.nn.functional.cosine_similarity(FeatureLearner.HIDDEN[0], FeatureLearner.HIDDEN[1], 0))
    assert weight[0].item() == pytest.approx(expected, rel=1e-5)
    assert learner.training and learner.calls == 2  # 4 samples in eval batches of 2; training mode restored


def test_labels_spread_over_the_feature_graph_from_the_chosen_epoch():
    regularizer = PropagatedLabelRegularizer(feature_graph_from_epoch=1, feature_graph_k=1)
    datamodule = feature_datamodule()
    before = FeatureLearner(datamodule, epoch=0)
    pseudo, weight = regularizer.targets(before, torch.device("cpu"))
    assert before.calls == 0 and weight[[1, 3]].tolist() == [0.0, 0.0]  # no data edge reaches 1 or 3
    after = FeatureLearner(datamodule, epoch=1)
    pseudo, weight = regularizer.targets(after, torch.device("cpu"))
    assert pseudo[[1, 3]].tolist() == [0, 1] and bool((weight[[1, 3]] > 0).all()) and weight[4].item() == 0.0
    regularizer.targets(after, torch.device("cpu"))
    assert after.calls == 2  # computed once per epoch
    after.current_epoch = 2
    regularizer.targets(after, torch.device("cpu"))
    assert after.calls == 4


def test_feature_graph_errors():
    with pytest.raises(ConfigError, match="propagated.feature_graph_from_epoch=-1 is not allowed"):
        PropagatedLabelRegularizer(feature_graph_from_epoch=-1)
    with pytest.raises(ConfigError, match="propagated.feature_graph_k=0 is not allowed"):
        PropagatedLabelRegularizer(feature_graph_k=0)
    full_graph = SimpleNamespace(graph=PATH, train_labels=torch.tensor([0, -1, -1, -1]))
    learner = FeatureLearner(full_graph, epoch=0)
    with pytest.raises(ConfigError, match="feature_graph_from_epoch needs mini-batched data"):
        PropagatedLabelRegularizer(feature_graph_from_epoch=0).targets(learner, torch.device("cpu"))


def test_alignment_to_the_labeled_class_shares_by_hand():
    # Star around labeled node 0 (class 0) plus a weak edge from node 4 to labeled node 1 (class 1).
    graph = NeighborGraph(torch.tensor([[0, 0, 0, 1], [2, 3, 4, 4]]), 5, torch.tensor([1.0, 1.0, 1.0, 0.25]))
    labels = torch.tensor([0, 1, -1, -1, -1])
    # One step, alpha 0.5: F_4 = 0.5 (1 / sqrt(d_4 d_0), 0.25 / sqrt(d_4 d_1)), d_0 = 3, d_1 = 0.25,
    # so P_4 = (a, b) / (a + b) with a = 1 / sqrt(3), b = 0.5: class 0, narrowly.
    a, b = 1 / math.sqrt(3), 0.5
    p4 = torch.tensor([a, b]) / (a + b)
    plain, _ = PropagatedLabelRegularizer(alpha=0.5, steps=1).pseudo_labels(graph, labels, 2)
    assert plain.tolist() == [0, 1, 0, 0, 0]
    # Rows 0, 2, 3 are (1, 0), row 1 is (0, 1): the mean over the 5 reached rows leans to class 0,
    # the labeled prior is (1/2, 1/2): q_4 = P_4 * prior / mean, renormalised, flips node 4 to class 1.
    mean = (torch.tensor([3.0, 1.0]) + p4) / 5
    q4 = p4 * 0.5 / mean
    q4 = q4 / q4.sum()
    regularizer = PropagatedLabelRegularizer(alpha=0.5, steps=1, align_to_prior=True)
    aligned, weight = regularizer.pseudo_labels(graph, labels, 2)
    assert q4[1] > 0.5 and aligned.tolist() == [0, 1, 0, 0, 1]
    # Certainties: 1 for the one-class rows, 1 - H(q_4) / log 2 for node 4; two rows per class,
    # so class weights 5 / (2 * 3) and 5 / (2 * 2); then scaled to mean 1.
    certainty_4 = 1 + float((q4 * q4.log()).sum()) / math.log(2)
    raw = torch.tensor([5 / 6, 5 / 4, 5 / 6, 5 / 6, 5 / 4 * certainty_4])
    assert weight.tolist() == pytest.approx((raw / raw.mean()).tolist(), rel=1e-5)
    assert "align_to_prior=True" in repr(regularizer)
