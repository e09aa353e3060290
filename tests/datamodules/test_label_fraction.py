import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nsl_lab.datamodules import stratified_label_subset
from nsl_lab.errors import ConfigError

LABELS = torch.tensor([0] * 50 + [1] * 30 + [2] * 3 + [3] * 17)
POOL = torch.ones(100, dtype=torch.bool)
POOL[90:] = False  # the last 10 (class 3) are "test" nodes


def test_counts_per_class_and_at_least_one():
    chosen = stratified_label_subset(LABELS, POOL, seed=0, label_frac=0.1)
    counts = torch.bincount(LABELS[chosen], minlength=4).tolist()
    # round(.1 * 50) = 5, round(.1 * 30) = 3, max(1, round(.3)) = 1, class 3 has 7 in the pool -> 1
    assert counts == [5, 3, 1, 1]
    assert bool(POOL[chosen].all())


def test_full_fraction_keeps_the_whole_pool():
    assert stratified_label_subset(LABELS, POOL, seed=3, label_frac=1.0).tolist() == list(range(90))


def test_labels_per_class():
    chosen = stratified_label_subset(LABELS, POOL, seed=0, labels_per_class=4)
    assert torch.bincount(LABELS[chosen], minlength=4).tolist() == [4, 4, 3, 4]


def test_seed_stability():
    first = stratified_label_subset(LABELS, POOL, seed=7, label_frac=0.2)
    assert torch.equal(first, stratified_label_subset(LABELS, POOL, seed=7, label_frac=0.2))
    assert not torch.equal(first, stratified_label_subset(LABELS, POOL, seed=8, label_frac=0.2))


@pytest.mark.parametrize("frac", [0.0, -0.1, 1.5, float("nan")])
def test_label_frac_out_of_range(frac):
    with pytest.raises(ConfigError, match=r"data.label_frac=.* allowed: 0.0 < data.label_frac <= 1.0"):
        stratified_label_subset(LABELS, POOL, seed=0, label_frac=frac)


def test_both_settings_is_an_error():
    with pytest.raises(ConfigError, match="both set"):
        stratified_label_subset(LABELS, POOL, seed=0, label_frac=0.5, labels_per_class=2)


@settings(max_examples=50, deadline=None)
@given(st.floats(0.001, 1.0), st.integers(0, 1000))
def test_every_class_keeps_a_label_and_counts_follow_the_fraction(frac, seed):
    chosen = stratified_label_subset(LABELS, POOL, seed=seed, label_frac=frac)
    counts = torch.bincount(LABELS[chosen], minlength=4)
    pool_counts = torch.bincount(LABELS[POOL], minlength=4)
    assert (counts >= 1).all() and (counts <= pool_counts).all()
    expected = torch.clamp(torch.round(frac * pool_counts.double()), min=1).long()
    assert torch.equal(counts, expected)
    assert chosen.unique().numel() == chosen.numel()


def test_uniform_label_draw_is_seeded_sized_and_keeps_every_class():
    from nsl_lab.datamodules.label_fraction import label_subset, uniform_label_subset

    labels = torch.arange(1000) % 4
    pool = torch.arange(1000)
    chosen = uniform_label_subset(labels, pool, seed=3, label_frac=0.05)
    assert chosen.numel() == 50 and torch.equal(chosen, chosen.sort().values)
    assert set(labels[chosen].tolist()) == {0, 1, 2, 3}
    assert torch.equal(chosen, label_subset(labels, pool, 3, 0.05, sampling="uniform"))
    assert not torch.equal(chosen, uniform_label_subset(labels, pool, seed=4, label_frac=0.05))
    # Not stratified: the class counts vary (stratified would give 12 or 13 each).
    counts = torch.bincount(labels[chosen], minlength=4)
    assert counts.sum() == 50
    # A draw too small to reach every class stops with one line.
    with pytest.raises(ConfigError, match=r"label_sampling=uniform drew no label of class \d at data.label_frac=0.002"):
        uniform_label_subset(labels, pool, seed=0, label_frac=0.002)
    with pytest.raises(ConfigError, match="label_sampling=uniform draws data.label_frac"):
        label_subset(labels, pool, 0, labels_per_class=3, sampling="uniform")
    with pytest.raises(ConfigError, match="data.label_sampling='random' is not supported"):
        label_subset(labels, pool, 0, 0.1, sampling="random")


def test_planetoid_uniform_label_sampling(data_root, cache_dir):
    from nsl_lab.datamodules import PlanetoidDataModule

    settings = dict(data_dir=str(data_root), cache_dir=str(cache_dir), label_frac=0.05, seed=1)
    uniform = PlanetoidDataModule("Cora", label_sampling="uniform", **settings)
    uniform.setup()
    stratified = PlanetoidDataModule("Cora", **settings)
    stratified.setup()
    labels = uniform.graph_data().train_labels
    # 5% of Cora's 1208-node pool either way; uniformly drawn, the class counts are the pool's by chance.
    assert uniform.n_labeled == stratified.n_labeled == 60
    assert set(labels[uniform.labeled_index].tolist()) == set(range(7))
    assert not torch.equal(uniform.labeled_index, stratified.labeled_index)
    with pytest.raises(ConfigError, match="label_sampling=uniform draws data.label_frac"):
        PlanetoidDataModule("Cora", label_sampling="uniform")
