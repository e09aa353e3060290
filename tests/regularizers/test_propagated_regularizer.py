"""Label propagation and PropagatedLabelRegularizer against hand-computed values, and their errors."""
import math
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nsl_lab import Backbone, Batch, ConfigError, Output, StructuredLearner
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.graphs.propagation import label_propagation
from nsl_lab.regularizers import GraphData, PropagatedLabelRegularizer, TrainingStep

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


def step_of(batch: Batch, logits: torch.Tensor) -> TrainingStep:
    return TrainingStep(batch, Output(logits, logits), backbone=None, num_classes=2)


def test_loss_over_the_unlabeled_rows_by_hand():
    graph = NeighborGraph(torch.tensor([[0, 0, 0, 4], [1, 2, 3, 5]]), 6)
    regularizer = PropagatedLabelRegularizer(multiplier=2.0)
    regularizer.setup(GraphData(graph, torch.tensor([0, -1, -1, -1, 1, -1]), num_classes=2))
    logits = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    batch = Batch(x=torch.zeros(3, 1), y=torch.tensor([0, -1, -1]), index=torch.tensor([0, 1, 5]))
    loss = regularizer(step_of(batch, logits))
    # Row 0 is labeled (skipped); node 1 -> class 0, weight 0.75; node 5 -> class 1, weight 1.5.
    ce_1 = -torch.log_softmax(logits[1], 0)[0].item()
    ce_5 = -torch.log_softmax(logits[2], 0)[1].item()
    assert loss.item() == pytest.approx(2.0 * (0.75 * ce_1 + 1.5 * ce_5) / 2, rel=1e-5)


def test_errors():
    with pytest.raises(ConfigError, match="^alpha=1.0 is out of range"):
        PropagatedLabelRegularizer(alpha=1.0)
    with pytest.raises(ConfigError, match="^steps=0 is not allowed"):
        PropagatedLabelRegularizer(steps=0)
    with pytest.raises(ConfigError, match="needs a graph; this data has none"):
        PropagatedLabelRegularizer().setup(GraphData(None, torch.tensor([-1]), num_classes=2))
    batch = Batch(x=torch.zeros(1, 1), y=torch.tensor([-1]), index=torch.tensor([0]))
    with pytest.raises(ConfigError, match=r"has no labels yet: call setup\(graph_data\) first"):
        PropagatedLabelRegularizer()(step_of(batch, torch.zeros(1, 2)))


def test_join_sums_shared_edges_and_keeps_the_rest():
    first = NeighborGraph(torch.tensor([[0, 1], [1, 2]]), 4, torch.tensor([1.0, 2.0]))
    second = NeighborGraph(torch.tensor([[0, 3], [1, 0]]), 4, torch.tensor([0.5, 4.0]))
    source, target, weight = first.join(second).edges()
    edges = {(int(s), int(t)): float(w) for s, t, w in zip(source, target, weight)}
    assert edges == {(0, 1): 1.5, (1, 2): 2.0, (3, 0): 4.0}
    with pytest.raises(ConfigError, match="cannot join a graph of 5 nodes to one of 4 nodes"):
        first.join(NeighborGraph(torch.zeros(2, 0, dtype=torch.long), 5))


class FeatureBackbone(Backbone):
    """A backbone whose penultimate embedding of sample i is ``HIDDEN[i]`` (``x`` holds the sample ids)."""

    HIDDEN = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [1.0, 0.05]])
    in_features, num_classes = 1, 2

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def head(self, z: torch.Tensor, **_) -> Output:
        assert not self.training  # embeddings come from the network in eval mode
        self.calls += 1
        return Output(torch.zeros(len(z), 2), self.HIDDEN[z[:, 0].long()])


def feature_data() -> GraphData:
    # Samples 0..3 train (0 and 2 labeled), 4 is a test sample; the data graph has no edges.
    labels = torch.tensor([0, -1, 1, -1, -1])
    return GraphData(
        graph=NeighborGraph(torch.zeros(2, 0, dtype=torch.long), 5), train_labels=labels, num_classes=2,
        rows={"train": torch.arange(4), "val": torch.zeros(0, dtype=torch.long), "test": torch.tensor([4])},
        batch_rows=lambda index: Batch(x=index[:, None].float(), y=labels[index], index=index), eval_batch_size=2,
    )


def test_feature_graph_joins_the_networks_nearest_samples_outside_the_test_split():
    regularizer = PropagatedLabelRegularizer(feature_graph_from_epoch=1, feature_graph_k=1)
    backbone = FeatureBackbone().eval()
    source, target, weight = regularizer.feature_graph(feature_data(), lambda batch: backbone(batch.x)).edges()
    # Nearest by cosine: 0 <-> 1 and 2 <-> 3; the test sample 4 (closest to 0) is never embedded.
    assert sorted(zip(source.tolist(), target.tolist())) == [(0, 1), (1, 0), (2, 3), (3, 2)]
    expected = float(torch.nn.functional.cosine_similarity(FeatureBackbone.HIDDEN[0], FeatureBackbone.HIDDEN[1], 0))
    assert weight[0].item() == pytest.approx(expected, rel=1e-5)
    assert backbone.calls == 2  # 4 samples in eval batches of 2


def test_labels_spread_over_the_feature_graph_from_the_chosen_epoch():
    # Through the learner: setup at fit start, refresh at the start of each epoch from the chosen one.
    regularizer = PropagatedLabelRegularizer(feature_graph_from_epoch=1, feature_graph_k=1)
    backbone = FeatureBackbone()
    learner = StructuredLearner(backbone, [regularizer])
    data = feature_data()
    trainer = SimpleNamespace(datamodule=SimpleNamespace(graph_data=lambda: data), current_epoch=0)
    learner._trainer = trainer
    learner.train()
    learner.on_fit_start()
    learner.on_train_epoch_start()
    pseudo, weight = regularizer.targets(torch.device("cpu"))
    assert backbone.calls == 0 and weight[[1, 3]].tolist() == [0.0, 0.0]  # no data edge reaches 1 or 3
    trainer.current_epoch = 1
    learner.on_train_epoch_start()
    pseudo, weight = regularizer.targets(torch.device("cpu"))
    assert pseudo[[1, 3]].tolist() == [0, 1] and bool((weight[[1, 3]] > 0).all()) and weight[4].item() == 0.0
    assert learner.training and backbone.training  # training mode restored after the eval-mode pass
    regularizer.targets(torch.device("cpu"))
    assert backbone.calls == 2  # computed once per epoch
    trainer.current_epoch = 2
    learner.on_train_epoch_start()
    assert backbone.calls == 4


def test_feature_graph_errors():
    with pytest.raises(ConfigError, match="^feature_graph_from_epoch=-1 is not allowed"):
        PropagatedLabelRegularizer(feature_graph_from_epoch=-1)
    with pytest.raises(ConfigError, match="^feature_graph_k=0 is not allowed"):
        PropagatedLabelRegularizer(feature_graph_k=0)
    full_graph = GraphData(PATH, torch.tensor([0, -1, -1, -1]), num_classes=2)  # no per-row batches
    regularizer = PropagatedLabelRegularizer(feature_graph_from_epoch=0)
    regularizer.setup(full_graph)
    backbone = FeatureBackbone().eval()
    assert regularizer.refresh_at(0)
    with pytest.raises(ConfigError, match="feature_graph_from_epoch needs mini-batched data"):
        regularizer.refresh(full_graph, lambda batch: backbone(batch.x))


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
