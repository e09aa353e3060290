import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nsl_lab import Batch, NeighborGraph
from nsl_lab.errors import ConfigError
from nsl_lab.regularizers.distances import pairwise_distance, pairwise_distance_rows, reduce_weighted

A = torch.tensor([[1.0, 2.0, 3.0]])
B = torch.tensor([[2.0, 0.0, 3.0]])


def test_l1_l2_cosine_by_hand():
    assert pairwise_distance(A, B, "l1").item() == pytest.approx(1 + 2 + 0)
    assert pairwise_distance(A, B, "l2").item() == pytest.approx(1 + 4 + 0)  # squared, as NSL
    cos = (2 + 0 + 9) / (math.sqrt(14) * math.sqrt(13))
    assert pairwise_distance(A, B, "cosine").item() == pytest.approx(1 - cos)


def test_softmax_transform_then_l2():
    p, q = torch.softmax(A, -1), torch.softmax(B, -1)
    expected = ((p - q) ** 2).sum().item()
    assert pairwise_distance(A, B, "l2", "softmax").item() == pytest.approx(expected, rel=1e-6)


def test_kl_and_jensen_shannon_by_hand():
    p = [0.5, 0.25, 0.25]
    q = [0.25, 0.5, 0.25]
    logits_p, logits_q = torch.tensor([p]).log(), torch.tensor([q]).log()
    kl = sum(a * math.log(a / b) for a, b in zip(p, q))
    assert pairwise_distance(logits_p, logits_q, "kl", "softmax").item() == pytest.approx(kl, rel=1e-5)
    m = [(a + b) / 2 for a, b in zip(p, q)]
    js = 0.5 * sum(a * math.log(a / c) for a, c in zip(p, m)) + 0.5 * sum(b * math.log(b / c) for b, c in zip(q, m))
    assert pairwise_distance(logits_p, logits_q, "jensen_shannon", "softmax").item() == pytest.approx(js, rel=1e-5)


def test_kl_needs_probabilities():
    with pytest.raises(ConfigError, match="transform='softmax'"):
        pairwise_distance(A, B, "kl", "none")
    with pytest.raises(ConfigError, match="distance='hamming'.*allowed"):
        pairwise_distance(A, B, "hamming")


def test_reductions_with_zero_weight_padding():
    values = torch.tensor([[1.0, 3.0, 100.0], [2.0, 50.0, float("nan")]])
    weights = torch.tensor([[1.0, 0.5, 0.0], [2.0, 0.0, 0.0]])  # 3 non-zero pairs, the rest padding
    weighted_sum = 1 * 1 + 0.5 * 3 + 2 * 2
    assert reduce_weighted(values, weights, "sum").item() == pytest.approx(weighted_sum)
    assert reduce_weighted(values, weights, "sum_by_nonzero_weights").item() == pytest.approx(weighted_sum / 3)
    assert reduce_weighted(values, weights, "mean_by_weight").item() == pytest.approx(weighted_sum / 3.5)
    assert reduce_weighted(values, weights, "mean").item() == pytest.approx(weighted_sum / 6)


def test_all_padding_reduces_to_zero_not_nan():
    values = torch.tensor([5.0, 7.0])
    for reduction in ("sum", "sum_by_nonzero_weights", "mean_by_weight"):
        assert reduce_weighted(values, torch.zeros(2), reduction).item() == 0.0
    assert reduce_weighted(torch.zeros(0), torch.zeros(0), "sum_by_nonzero_weights").item() == 0.0


vectors = st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=2, max_size=6)


@settings(max_examples=60, deadline=None)
@given(vectors, st.data())
def test_distance_properties(a, data):
    b = data.draw(st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=len(a), max_size=len(a)))
    a, b = torch.tensor([a]), torch.tensor([b])
    for distance, transform in [("l1", "none"), ("l2", "none"), ("l2", "softmax"), ("kl", "softmax"), ("jensen_shannon", "softmax")]:
        d_ab = pairwise_distance(a, b, distance, transform).item()
        assert d_ab >= -1e-5, (distance, transform)
        assert pairwise_distance(a, a, distance, transform).item() == pytest.approx(0.0, abs=1e-5)
        if distance != "kl":  # KL is the one asymmetric distance
            assert d_ab == pytest.approx(pairwise_distance(b, a, distance, transform).item(), rel=1e-4, abs=1e-5)
    js = pairwise_distance(a, b, "jensen_shannon", "softmax").item()
    assert js <= math.log(2) + 1e-5  # Jensen-Shannon is bounded by log 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 5)), min_size=1, max_size=12), st.integers(0, 6))
def test_padding_never_changes_the_reduction(pairs, padding):
    values = torch.tensor([v for v, _ in pairs])
    weights = torch.tensor([w for _, w in pairs])
    padded_values = torch.cat([values, torch.full((padding,), 1e6)])
    padded_weights = torch.cat([weights, torch.zeros(padding)])
    for reduction in ("sum", "sum_by_nonzero_weights", "mean_by_weight"):
        assert reduce_weighted(padded_values, padded_weights, reduction).item() == pytest.approx(
            reduce_weighted(values, weights, reduction).item(), rel=1e-5, abs=1e-6
        )


@pytest.mark.parametrize("distance", ["l1", "l2", "cosine", "kl", "jensen_shannon"])
@pytest.mark.parametrize("transform", ["softmax", "sigmoid"])
def test_distance_of_rows_equals_gathering_first_bit_for_bit(distance, transform):
    # pairwise_distance_rows takes the softmax once per row: values and gradients must not change.
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(50, 7, generator=generator) * 3
    rows_i, rows_j = torch.randint(0, 50, (2, 300), generator=generator)
    results = []
    for rows_of in (pairwise_distance_rows, lambda x, i, j, *a: pairwise_distance(x[i], x[j], *a)):
        x = outputs.clone().requires_grad_(True)
        values = rows_of(x * 1.5, rows_i, rows_j, distance, transform)
        (values * torch.linspace(0, 1, 300)).sum().backward()
        results.append((values.detach(), x.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_sum_over_axis_matches_nsl_docstring_example():
    # NSL's pairwise_distance_wrapper docstring: L2 with reduction MEAN gives 10.25 with
    # sum_over_axis=-1 (mean over sample pairs) and 5.125 with None (mean over feature pairs).
    from nsl_lab.regularizers.distances import feature_scale

    a = torch.tensor([[1.0, 1], [2, 2], [0, 2], [5, 5]])
    b = torch.tensor([[1.0, 1], [0, 2], [4, 4], [1, 4]])
    weights = torch.ones(4)
    per_pair = pairwise_distance(a, b, "l2")
    for sum_over_axis, expected in ((-1, 10.25), (None, 5.125)):
        for reduction in ("mean", "mean_by_weight", "sum_by_nonzero_weights"):
            scaled = per_pair * feature_scale(sum_over_axis, reduction, a.shape[-1])
            assert reduce_weighted(scaled, weights, reduction).item() == pytest.approx(expected)
    # A summing reduction adds every feature either way.
    assert feature_scale(None, "sum", 2) == feature_scale(-1, "sum", 2) == 1.0


def test_sum_over_axis_none_averages_the_graph_term_and_is_checked():
    from nsl_lab import GraphRegularizer

    outputs = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 1.0], [0.5, 2.0, 0.0]])
    batch = Batch(x=torch.zeros(3, 1), y=torch.tensor([0, -1, 1]), index=torch.arange(3),
                  graph=NeighborGraph(torch.tensor([[0, 2], [1, 1]]), 3, torch.tensor([1.0, 0.5])))
    summed = GraphRegularizer(distance="l1").neighbor_loss(outputs, batch)
    averaged = GraphRegularizer(distance="l1", sum_over_axis=None).neighbor_loss(outputs, batch)
    assert averaged.item() == pytest.approx(summed.item() / 3)
    assert summed.item() == pytest.approx((1.0 * 2.0 + 0.5 * 3.5) / 2)
    with pytest.raises(ConfigError, match="sum_over_axis=null averages l1 / l2 over the features; distance='kl'"):
        GraphRegularizer(distance="kl", transform="softmax", sum_over_axis=None)
    with pytest.raises(ConfigError, match="sum_over_axis=0 is not supported; allowed: -1, null"):
        GraphRegularizer(sum_over_axis=0)
