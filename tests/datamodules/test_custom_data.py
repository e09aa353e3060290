"""Bring-your-own-data datamodule: splits, graphs and every bad-input error."""
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_train
from nsl_lab.compatibility import check_compatibility
from nsl_lab.compose import compose_config
from nsl_lab.datamodules import CustomDataModule
from nsl_lab.datamodules.samples import LabeledTopUpSampler
from nsl_lab.errors import ConfigError
from nsl_lab.graphs.build import similarity_graph, write_tsv
from nsl_lab.run import build_regularizers


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20).astype(float)
    x = rng.standard_normal((60, 5)).astype(np.float32) + labels[:, None]
    labels[::10] = np.nan  # 6 unlabeled rows
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    edge_index, weight = similarity_graph(x, k=4)
    write_tsv(tmp_path / "g.tsv", edge_index, weight, [f"n{i}" for i in range(60)])
    (tmp_path / "ids.txt").write_text("\n".join(f"n{i}" for i in range(60)) + "\n")
    return tmp_path


def make(files, **overrides) -> CustomDataModule:
    settings = dict(features=str(files / "x.npy"), labels=str(files / "y.npy"), cache_dir=str(files / "cache"),
                    node_ids=str(files / "ids.txt"), graph={"kind": "tsv", "path": str(files / "g.tsv")},
                    neighbors=2, batch_size=16, seed=0)
    data = CustomDataModule(**{**settings, **overrides})
    data.setup()
    return data


def test_splits_labels_and_graph(files):
    data = make(files, label_frac=0.5, include_unlabeled=True)
    train, val, test = (set(data.rows[s].tolist()) for s in ("train", "val", "test"))
    unlabeled = set(range(0, 60, 10))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(test) == round(0.2 * 54) and len(val) == round(0.1 * (54 - len(test)))
    assert unlabeled <= train and not (unlabeled & (val | test))  # unlabeled rows train with y = -1
    labeled = set(data.labeled_index.tolist())
    assert labeled <= train and set((data.y_train >= 0).nonzero().flatten().tolist()) == labeled
    assert data.n_labeled < len(train - unlabeled)  # label_frac hid some training labels
    assert data.graph.num_edges == len((files / "g.tsv").read_text().splitlines())
    batch = next(iter(data.train_dataloader()))
    assert batch.neighbor_weight.shape == (len(batch), 2) and (batch.neighbor_weight > 0).all()


def test_csv_inputs_with_header_and_empty_labels(files):
    x = np.load(files / "x.npy")
    labels = np.load(files / "y.npy")
    np.savetxt(files / "x.csv", x, delimiter=",", header=",".join(f"f{i}" for i in range(5)), comments="")
    (files / "y.csv").write_text("label\n" + "\n".join("" if np.isnan(v) else str(int(v)) for v in labels) + "\n")
    data = make(files, features=str(files / "x.csv"), labels=str(files / "y.csv"), graph={"kind": "knn", "k": 3, "embedding": "features"})
    assert torch.allclose(data.samples.x, torch.from_numpy(x).float(), atol=1e-5)
    assert (data.samples.y == -1).sum() == 6 and data.num_features == 5 and data.num_classes == 3
    assert data.graph.num_edges >= 60 * 3


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: np.save(f / "y.npy", np.zeros(59)), "data.labels has 59 rows but data.features has 60"),
        (lambda f: (f / "g.tsv").write_text("n0\tn1\t1.0\nn0\tnope\t1.0\n"), "g.tsv:2: unknown node id 'nope'"),
        (lambda f: (f / "g.tsv").write_text("n0\tn1\tnan\n"), "g.tsv:1: NaN edge weight"),
        (lambda f: (f / "g.tsv").write_text("n0\tn1\t-1\n"), "g.tsv:1: negative edge weight '-1'"),
        (lambda f: np.save(f / "x.npy", np.full((60, 5), np.nan)), "data.features row 0 holds NaN or inf"),
        (lambda f: np.save(f / "y.npy", np.full(60, 0.5)), "data.labels holds 0.5; labels must be class ids"),
        (lambda f: (f / "ids.txt").write_text("a\nb\n"), "data.node_ids has 2 ids but data.features has 60 rows"),
        (lambda f: (f / "x.npy").unlink(), "data.features: file"),
        (lambda f: np.save(f / "x.npy", np.zeros((60, 5, 2))), r"data.features has shape \[60, 5, 2\]; allowed: \[rows"),
        (lambda f: np.save(f / "x.npy", np.array(["a"] * 60)), r"x.npy holds <U1 values; allowed: numbers"),
        (lambda f: np.save(f / "y.npy", np.zeros((60, 2))), r"data.labels has shape \[60, 2\]; allowed: one class id"),
        (lambda f: np.save(f / "y.npy", np.r_[np.arange(59) % 3, 1e8]),
         r"data.labels holds class ids up to 100000000 \(row 59\) but 4 distinct ones: class 3 has no row"),
        (lambda f: np.save(f / "y.npy", np.r_[np.arange(59) % 3, -2]), r"data.labels holds -2.0; labels must be class ids"),
    ],
)
def test_bad_inputs_fail_with_a_clear_error(files, change, message):
    change(files)
    with pytest.raises(ConfigError, match=message):
        make(files)


def test_bad_file_type_is_named(files):
    with pytest.raises(ConfigError, match=r"data.features='.*x.txt' must be a .npy or .csv file"):
        make(files, features=str(files / "x.txt"))


def test_custom_data_through_train_script(files, tmp_path, cache_dir):
    args = ["data=custom", f"data.features={files / 'x.npy'}", f"data.labels={files / 'y.npy'}",
            f"data.node_ids={files / 'ids.txt'}", "data.graph.kind=tsv", f"data.graph.path={files / 'g.tsv'}",
            "backbone=ffn", "backbone.projection_size=null", "backbone.hidden_sizes=[16]", "regularizer=graph_nsl",
            "trainer.max_epochs=3", "logger=none"]
    _, metrics = run_train(args, tmp_path / "run", cache_dir, in_process=True)
    assert metrics["n_labeled"] > 0 and metrics["epochs"] == 3
    completed, metrics = run_train([*args[:-2], "data.labels=" + str(files / "x.npy"), "trainer.max_epochs=1"],
                                   tmp_path / "bad", cache_dir, check=False, in_process=True)
    assert completed.returncode == 2 and metrics is None
    assert "nsl_lab: error: data.labels has shape [60, 5]; allowed: one class id per row ([rows])" in completed.stderr


def test_labeled_top_up_sampler_by_hand():
    sampler = LabeledTopUpSampler(10, torch.tensor([2, 5, 7]), batch_size=4, labeled_per_batch=2,
                                  generator=torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(sampler) == len(batches) == 3 and [len(b) for b in batches] == [6, 6, 4]
    # The first part of each batch is one shuffled pass over all 10 rows ...
    assert sorted(row for batch in batches for row in batch[:-2]) == list(range(10))
    # ... the last 2 are labeled rows, drawn in a cycle: each of 2, 5, 7 once before any repeats.
    drawn = [row for batch in batches for row in batch[-2:]]
    assert sorted(drawn[:3]) == [2, 5, 7] and sorted(drawn[3:]) == [2, 5, 7]
    again = LabeledTopUpSampler(10, torch.tensor([2, 5, 7]), 4, 2, torch.Generator().manual_seed(0))
    assert list(again) == batches  # seeded


@settings(max_examples=25, deadline=None)
@given(num_rows=st.integers(1, 40), labeled=st.integers(1, 10), batch_size=st.integers(1, 16),
       per_batch=st.integers(1, 12))
def test_every_labeled_row_is_drawn_before_any_repeats(num_rows, labeled, batch_size, per_batch):
    labeled = min(labeled, num_rows)
    sampler = LabeledTopUpSampler(num_rows, torch.arange(labeled), batch_size, per_batch, torch.Generator().manual_seed(1))
    batches = list(sampler)
    drawn = [row for batch in batches for row in batch[len(batch) - per_batch:]]
    assert len(drawn) == per_batch * len(batches) == per_batch * -(-num_rows // batch_size)
    for start in range(0, len(drawn) - labeled + 1, labeled):
        assert sorted(drawn[start:start + labeled]) == list(range(labeled))


def test_labeled_rows_in_every_training_batch(files):
    data = make(files, label_frac=0.5, include_unlabeled=True, labeled_per_batch=3)
    batches = list(data.train_dataloader())
    assert len(batches) == -(-len(data.rows["train"]) // 16)
    assert all(int((batch.y[-3:] >= 0).sum()) == 3 for batch in batches)
    assert all(batch.neighbor_weight.shape == (len(batch), 2) for batch in batches)  # neighbours still packed


def test_labeled_per_batch_errors(files):
    with pytest.raises(ConfigError, match="data.labeled_per_batch=2 needs data.include_unlabeled=true"):
        make(files, labeled_per_batch=2)
    with pytest.raises(ConfigError, match="data.labeled_per_batch=-1 is not allowed; it must be an integer >= 0"):
        make(files, labeled_per_batch=-1, include_unlabeled=True)
    with pytest.raises(ConfigError, match="needs labeled training rows; there are none"):
        LabeledTopUpSampler(5, torch.zeros(0, dtype=torch.long), 2, 1, torch.Generator())


@pytest.mark.parametrize("graph, message", [
    ("none", "needs a sample graph, which data (CustomDataModule) does not give with these settings; set data.graph "
             "(e.g. data.graph.kind=knn)"),  # not "set data.neighbors": there is no graph to take neighbours from
    ("knn", None),
])
def test_a_graph_loss_without_a_graph_names_the_graph(files, tmp_path, graph, message):
    cfg = compose_config(["data=custom", f"data.features={files / 'x.npy'}", f"data.labels={files / 'y.npy'}",
                          f"data.graph.kind={graph}", "regularizer=graph_nsl"], tmp_path)
    regularizers = build_regularizers(cfg.regularizer)
    if message is None:
        check_compatibility(cfg, regularizers)
    else:
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_compatibility(cfg, regularizers)
