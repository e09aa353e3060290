"""The node-to-neighbourhood InfoNCE: hand-computed values, label-freedom, both summaries."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from nsl_lab import Batch, Output
from nsl_lab.context import GraphData, TrainingStep
from nsl_lab.errors import ConfigError
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.modules import FFN
from nsl_lab.regularizers import NeighborhoodContrastiveRegularizer
from nsl_lab.regularizers.neighborhood import info_nce, propagate_features


def path_graph() -> NeighborGraph:
    """0 - 1 - 2 (undirected)."""
    return NeighborGraph(torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]), 3)


def test_propagate_features_matches_the_hand_computed_sgc_step():
    # A + I on the path: degrees 2, 3, 2; symmetric normalisation D^-1/2 (A + I) D^-1/2.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    d = torch.tensor([2.0, 3.0, 2.0])
    a = torch.tensor([[1.0, 1, 0], [1, 1, 1], [0, 1, 1]]) / torch.sqrt(d[:, None] * d[None, :])
    assert torch.allclose(propagate_features(path_graph(), x, 1), a @ x, atol=1e-6)
    assert torch.allclose(propagate_features(path_graph(), x.to_sparse(), 2), a @ a @ x, atol=1e-6)
    row = torch.tensor([[1.0, 1, 0], [1, 1, 1], [0, 1, 1]]) / d[:, None]
    assert torch.allclose(propagate_features(path_graph(), x, 1, "row"), row @ x, atol=1e-6)


def test_info_nce_by_hand():
    # Orthonormal anchors, positives equal to them: cos = I, logits = I / tau.
    z = torch.eye(3)
    tau = 0.5
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2.0))  # each row: e^{1/tau} vs two e^0
    assert info_nce(z, z, tau).item() == pytest.approx(expected, rel=1e-6)
    # Swapped positives: every anchor's positive is orthogonal, a negative matches it.
    swapped = z[[1, 0, 2]]
    row = -math.log(1.0 / (math.exp(2.0) + 2.0))
    assert info_nce(z, swapped, tau).item() == pytest.approx((2 * row + expected) / 3, rel=1e-6)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 12), st.integers(1, 6), st.floats(0.05, 2.0), st.integers(0, 10_000))
def test_info_nce_is_bounded_by_log_batch_size_when_embeddings_are_equal(rows, dim, tau, seed):
    """With every positive equal to its anchor and all anchors equal, every logit is the same:
    the loss is exactly log B; it never goes below 0."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(1, dim, generator=generator).repeat(rows, 1)
    assert info_nce(z, z, tau).item() == pytest.approx(math.log(rows), rel=1e-5)
    other = torch.randn(rows, dim, generator=generator)
    assert info_nce(other, torch.randn(rows, dim, generator=generator), tau).item() >= 0.0


def full_graph_step(model: FFN, x: torch.Tensor, graph: NeighborGraph, y: torch.Tensor) -> TrainingStep:
    batch = Batch(x=x, y=y, index=torch.arange(x.shape[0]), graph=graph)
    return TrainingStep(batch, model(x), model, 0, 2)


def test_inputs_summary_is_the_info_nce_of_the_projected_propagated_features():
    torch.manual_seed(0)
    x = torch.rand(3, 4)
    model = FFN(4, 2, [8], dropout=0.0, projection_size=5).eval()
    term = NeighborhoodContrastiveRegularizer(hops=2, temperature=0.3, sample_size=16)
    term.setup(GraphData(path_graph(), torch.full((3,), -1), 2, full_batch=True))
    step = full_graph_step(model, x, path_graph(), torch.full((3,), -1))
    value = term.loss(step)
    summaries = term.projection(torch.nn.functional.normalize(propagate_features(path_graph(), x, 2), dim=-1))
    assert term.projection.weight.shape == (5, 4)  # the hidden width, found at the first step
    assert value.item() == pytest.approx(info_nce(step.output.hidden, summaries, 0.3).item(), rel=1e-6)
    # it trains both the encoder and W
    value.backward()
    assert model.hidden_layers[0].weight.grad.abs().sum() > 0 and term.projection.weight.grad.abs().sum() > 0


def test_the_learner_resets_the_backbone_and_w():
    from nsl_lab.modules import RepresentationLearner

    torch.manual_seed(0)
    model = FFN(4, 2, [8], dropout=0.0, projection_size=5)
    term = NeighborhoodContrastiveRegularizer(hops=1, sample_size=16)
    learner = RepresentationLearner(model, {"neighborhood": term})
    term.setup(GraphData(path_graph(), torch.full((3,), -1), 2, full_batch=True))
    term.loss(full_graph_step(model, torch.rand(3, 4), path_graph(), torch.full((3,), -1)))  # sizes W
    before = {name: value.clone() for name, value in learner.named_parameters()}
    learner.reset_parameters()
    after = dict(learner.named_parameters())
    for name in ("backbone.hidden_layers.0.weight", "regularizers.neighborhood.projection.weight"):
        assert after[name].shape == before[name].shape and not torch.equal(after[name], before[name]), name


def test_the_term_ignores_labels():
    torch.manual_seed(0)
    x = torch.rand(3, 4)
    model = FFN(4, 2, [8], dropout=0.0).eval()
    values = []
    for labels in (torch.tensor([0, 1, -1]), torch.full((3,), -1)):
        torch.manual_seed(1)
        term = NeighborhoodContrastiveRegularizer(hops=1)
        term.setup(GraphData(path_graph(), labels, 2, full_batch=True))
        values.append(term.loss(full_graph_step(model, x, path_graph(), labels)).item())
    assert values[0] == values[1]
    assert not NeighborhoodContrastiveRegularizer().reads_labels


def test_embeddings_summary_over_packed_neighbours_is_their_weighted_mean():
    class Identity(torch.nn.Module):
        def forward(self, x):
            return Output(x, x)

    from nsl_lab.modules import as_backbone

    backbone = as_backbone(Identity())
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # neighbours: row 0 -> rows 1 (w 1) and 2 (w 3); row 1 -> row 0 (w 2) and padding; row 2 none
    nbr_x = torch.stack([x[1], x[2], x[0], x[1], x[2], x[2]])
    weight = torch.tensor([[1.0, 3.0], [2.0, 0.0], [0.0, 0.0]])
    batch = Batch(x=x, y=torch.full((3,), -1), index=torch.arange(3),
                  neighbors=Batch(x=nbr_x, y=torch.full((6,), -1), index=torch.arange(6)), neighbor_weight=weight)
    term = NeighborhoodContrastiveRegularizer(summary="embeddings", temperature=1.0)
    value = term.loss(TrainingStep(batch, Output(x, x), backbone))
    summaries = torch.stack([(x[1] + 3 * x[2]) / 4, x[0]])  # row 2 has no neighbour: it sits out
    assert value.item() == pytest.approx(info_nce(x[:2], summaries, 1.0).item(), rel=1e-6)


def test_bad_settings_fail_in_one_line():
    with pytest.raises(ConfigError, match="summary='graph'"):
        NeighborhoodContrastiveRegularizer(summary="graph")
    with pytest.raises(ConfigError, match="hops=0"):
        NeighborhoodContrastiveRegularizer(hops=0)
    term = NeighborhoodContrastiveRegularizer()
    term.setup(GraphData(path_graph(), torch.full((3,), -1), 2, full_batch=False))
    model = FFN(4, 2, [8])
    with pytest.raises(ConfigError, match="summary=inputs needs full-graph data"):
        term.loss(full_graph_step(model, torch.rand(3, 4), path_graph(), torch.full((3,), -1)))
