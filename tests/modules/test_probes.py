"""Probes on frozen embeddings: known answers, settings chosen on validation, label draws that
match the datamodule's."""
from __future__ import annotations

import pytest
import torch

from nsl_lab import Batch
from nsl_lab.context import LabeledSplits
from nsl_lab.datamodules import PlanetoidDataModule
from nsl_lab.errors import ConfigError
from nsl_lab.modules import FFN
from nsl_lab.probes import (check_probe_settings, embed_rows, knn_probe, logistic_probe, parse_label_fracs,
                            probe_embeddings, probe_train_rows)


def separable(n_per_class: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes on three orthogonal axes, a little noise: every probe gets them all right."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    embeddings = torch.eye(3)[labels] * 5 + 0.1 * torch.randn(labels.numel(), 3, generator=generator)
    return embeddings, labels


def interleaved_rows(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = torch.arange(n)
    return rows[rows % 3 == 0], rows[rows % 3 == 1], rows[rows % 3 == 2]


def test_probes_classify_separable_embeddings_exactly():
    embeddings, labels = separable()
    train, val, test = interleaved_rows(labels.numel())
    for probe in (logistic_probe, knn_probe):
        result = probe(embeddings, labels, train, val, test)
        assert result.val_acc == 1.0 and result.test_acc == 1.0


def test_knn_chooses_k_on_validation_by_hand():
    # Train: class 0 at 0 (one point), class 1 at 1.0, 1.1, 1.2 (three); on a 2-D circle arc.
    angle = torch.tensor([0.0, 1.0, 1.1, 1.2, 0.1, 0.05])
    embeddings = torch.stack([angle.cos(), angle.sin()], 1)
    labels = torch.tensor([0, 1, 1, 1, 0, 0])
    train, val, test = torch.tensor([0, 1, 2, 3]), torch.tensor([4]), torch.tensor([5])
    # k=1: the nearest train point of 0.1 is 0 (class 0): right; k=5 (all 4): class 1 outvotes it.
    assert knn_probe(embeddings, labels, train, val, test, k_grid=[5]).val_acc == 0.0
    result = knn_probe(embeddings, labels, train, val, test, k_grid=[1, 5])
    assert (result.chosen, result.val_acc, result.test_acc) == (1.0, 1.0, 1.0)


def test_knn_in_chunks_votes_as_in_one_piece(monkeypatch):
    import nsl_lab.probes as probes

    embeddings, labels = separable(seed=1)
    embeddings = embeddings + 4 * torch.randn(embeddings.shape, generator=torch.Generator().manual_seed(2))
    train, val, test = interleaved_rows(labels.numel())
    whole = knn_probe(embeddings, labels, train, val, test)
    monkeypatch.setattr(probes, "KNN_CHUNK_ROWS", 3)
    assert knn_probe(embeddings, labels, train, val, test) == whole
    assert 0.4 < whole.test_acc < 1.0  # noisy enough that the vote is not trivial


def test_a_single_class_training_set_predicts_that_class():
    embeddings, labels = separable()
    train, val, test = torch.tensor([0, 1]), torch.tensor([2, 30]), torch.tensor([3, 4, 40, 41])
    result = logistic_probe(embeddings, labels, train, val, test)
    assert (result.val_acc, result.test_acc) == (0.5, 0.5)


def test_logistic_probe_takes_the_best_c_on_validation_and_the_smaller_on_ties():
    embeddings, labels = separable()
    train, val, test = interleaved_rows(labels.numel())
    assert logistic_probe(embeddings, labels, train, val, test, c_grid=[10.0, 0.5, 100.0]).chosen == 0.5


def splits_of(embeddings: torch.Tensor, labels: torch.Tensor) -> LabeledSplits:
    train, val, test = interleaved_rows(labels.numel())
    batch = Batch(x=embeddings, y=torch.full_like(labels, -1), index=torch.arange(labels.numel()))
    return LabeledSplits(labels, train, val, test, batches=lambda: [batch], standard=train[::4])


def test_probe_grid_writes_every_key_once_and_draws_the_standard_split_once():
    embeddings, labels = separable()
    metrics = probe_embeddings(embeddings, splits_of(embeddings, labels), [0.5, "standard"], seeds=[0, 1],
                               kinds=["logreg", "knn"], progress=False)
    for kind in ("logreg", "knn"):
        for seed in (0, 1):
            assert metrics[f"probe/{kind}/label_frac=0.5/seed={seed}/test/acc"] == 1.0
        assert f"probe/{kind}/standard/seed=0/test/acc" in metrics
        assert f"probe/{kind}/standard/seed=1/test/acc" not in metrics  # a fixed split: one draw
        assert metrics[f"probe/{kind}/label_frac=0.5/test/acc_std"] == 0.0


def test_bad_probe_settings_fail_in_one_line():
    with pytest.raises(ConfigError, match="probe.label_fracs has 'half'"):
        parse_label_fracs(["half"])
    with pytest.raises(ConfigError, match="probe.label_fracs=1.5 is out of range"):
        parse_label_fracs([1.5])
    embeddings, labels = separable()
    with pytest.raises(ConfigError, match="probe.kinds='svm'"):
        probe_embeddings(embeddings, splits_of(embeddings, labels), kinds=["svm"])
    with pytest.raises(ConfigError, match=r"probe.seeds=\[\] must be a non-empty list"):
        probe_embeddings(embeddings, splits_of(embeddings, labels), seeds=[])


@pytest.mark.parametrize("setting, match", [
    ({"seeds": [-1]}, "probe.seeds=-1 is not allowed"),
    ({"seeds": [0.5]}, "probe.seeds=0.5 is not allowed"),
    ({"seeds": 3}, "probe.seeds=3 must be a non-empty list"),
    ({"kinds": []}, "probe.kinds=\\[\\] must be a non-empty list"),
    ({"layer": "penultimate"}, "probe.layer='penultimate' is not supported"),
    ({"c_grid": [1.0, 0.0]}, "probe.c_grid=0.0 is out of range"),
    ({"k_grid": [0]}, "probe.k_grid=0 is not allowed"),
    ({"k_grid": []}, "probe.k_grid=\\[\\] must be a non-empty list"),
])
def test_every_probe_setting_is_checked_before_any_probe_runs(setting, match):
    with pytest.raises(ConfigError, match=match):
        check_probe_settings(**setting)


def test_checked_probe_settings_are_normalised():
    checked = check_probe_settings([0.5, None, "standard"], [2], ["knn"], "logits", [1], [3])
    assert checked == {"label_fracs": [0.5, "standard", "standard"], "layer": "logits", "seeds": [2],
                       "kinds": ["knn"], "c_grid": [1.0], "k_grid": [3]}


@pytest.mark.parametrize("label_frac, seed, sampling", [(0.05, 1, "stratified"), (0.2, 2, "uniform")])
def test_a_probe_draws_the_labels_a_supervised_run_of_the_same_setting_trains_on(
        label_frac, seed, sampling, data_root, cache_dir):
    pretraining = PlanetoidDataModule(data_dir=str(data_root), cache_dir=str(cache_dir), label_sampling=sampling,
                                      label_frac=0.5 if sampling == "uniform" else None, seed=0)
    pretraining.setup("fit")
    splits = pretraining.labeled_splits()
    supervised = PlanetoidDataModule(data_dir=str(data_root), cache_dir=str(cache_dir), label_frac=label_frac,
                                     label_sampling=sampling, seed=seed)
    supervised.setup("fit")
    assert torch.equal(probe_train_rows(splits, label_frac, seed), supervised.labeled_index)
    public = PlanetoidDataModule(data_dir=str(data_root), cache_dir=str(cache_dir))
    public.setup("fit")
    assert torch.equal(probe_train_rows(splits, "standard", seed), public.labeled_index)
    assert splits.val.numel() == 500 and splits.test.numel() == 1000


def test_embed_rows_reads_every_row_in_eval_mode_and_restores_the_mode():
    embeddings, labels = separable()
    model = FFN(3, 3, [4], dropout=0.5, projection_size=2).train()
    rows = embed_rows(model, splits_of(embeddings, labels))
    assert model.training and rows.shape == (labels.numel(), 2)
    assert torch.equal(rows, model.eval()(embeddings).hidden)  # no dropout: eval mode
