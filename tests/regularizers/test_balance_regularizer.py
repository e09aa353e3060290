"""ClassBalanceRegularizer against hand-computed values, its invariants and its errors."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nsl_lab import Batch, ConfigError, Output
from nsl_lab.regularizers import ClassBalanceRegularizer, TrainingStep

# Rows predict (0.8, 0.2) and (0.4, 0.6): the mean prediction is (0.6, 0.4).
LOGITS = torch.tensor([[0.8, 0.2], [0.4, 0.6]]).log()


def test_kl_to_the_labeled_prior_by_hand():
    regularizer = ClassBalanceRegularizer(multiplier=2.0, smoothing=0.0)
    expected = 0.5 * math.log(0.5 / 0.6) + 0.5 * math.log(0.5 / 0.4)  # prior (0.5, 0.5) from y = (0, 1)
    assert regularizer.balance_loss(LOGITS, torch.tensor([0, 1])).item() == pytest.approx(expected, rel=1e-5)
    batch = Batch(x=torch.zeros(2, 1), y=torch.tensor([0, 1]), index=torch.arange(2))
    loss = regularizer(TrainingStep(batch, Output(LOGITS, LOGITS), backbone=None, num_classes=2))
    assert loss.item() == pytest.approx(2.0 * expected, rel=1e-5)


def test_labeled_prior_counts_labeled_rows_only_with_smoothing():
    # Two labels of class 0, one unlabeled row; add-one smoothing: (2 + 1, 0 + 1) / 4.
    prior = ClassBalanceRegularizer(smoothing=1.0).class_prior(torch.tensor([0, 0, -1]), 2)
    assert prior.tolist() == pytest.approx([0.75, 0.25])
    assert ClassBalanceRegularizer(prior="uniform").class_prior(torch.tensor([0, 0]), 4).tolist() == [0.25] * 4
    # No label and no smoothing: nothing to match but uniform.
    assert ClassBalanceRegularizer(smoothing=0.0).class_prior(torch.tensor([-1, -1]), 2).tolist() == [0.5, 0.5]


def test_min_share_charges_only_the_shortfall():
    y = torch.tensor([0, 1])
    # rho = 1: class 1 has 0.4 < 0.5, class 0 has more than its share and costs nothing.
    full = ClassBalanceRegularizer(smoothing=0.0, min_share=1.0).balance_loss(LOGITS, y)
    assert full.item() == pytest.approx(0.5 * math.log(0.5 / 0.4), rel=1e-5)
    # rho = 0.5: both classes hold at least 0.25.
    assert ClassBalanceRegularizer(smoothing=0.0, min_share=0.5).balance_loss(LOGITS, y).item() == 0.0


def test_a_collapsed_prediction_costs_more_than_a_balanced_one():
    y = torch.tensor([0, 1, 2, -1])
    collapsed = torch.tensor([[9.0, 0.0, 0.0]]).repeat(4, 1)
    balanced = torch.eye(3)[[0, 1, 2, 0]] * 9.0
    for regularizer in (ClassBalanceRegularizer(), ClassBalanceRegularizer(min_share=0.5)):
        assert regularizer.balance_loss(collapsed, y) > 1.0 > regularizer.balance_loss(balanced, y)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.lists(st.floats(-5, 5), min_size=3, max_size=3), min_size=1, max_size=8),
    st.lists(st.integers(-1, 2), min_size=1, max_size=8),
    st.floats(0.05, 1.0),
)
def test_kl_is_nonnegative_and_below_the_full_hinge(rows, labels, rho):
    logits = torch.tensor(rows)
    y = torch.tensor((labels * len(rows))[: len(rows)])
    kl = ClassBalanceRegularizer().balance_loss(logits, y).item()
    hinge_full = ClassBalanceRegularizer(min_share=1.0).balance_loss(logits, y).item()
    hinge = ClassBalanceRegularizer(min_share=rho).balance_loss(logits, y).item()
    assert -1e-6 <= kl <= hinge_full + 1e-6
    assert 0.0 <= hinge <= hinge_full + 1e-6


@pytest.mark.parametrize("kwargs, message", [
    ({"prior": "zipf"}, "prior='zipf' is not supported"),
    ({"min_share": 0.0}, "min_share=0.0"),
    ({"min_share": 1.5}, "min_share=1.5"),
    ({"smoothing": -1.0}, "smoothing=-1.0"),
])
def test_bad_settings_fail_with_the_value(kwargs, message):
    with pytest.raises(ConfigError, match="^" + message.replace(".", r"\.").replace("(", r"\(")):
        ClassBalanceRegularizer(**kwargs)
