"""Feature store, CSR files and the synthetic SBM graph: round trips, closed-form statistics, bad input."""
import numpy as np
import pytest
import torch

from nsl_lab.datamodules import SyntheticGraphDataModule
from nsl_lab.datamodules.synthetic_graph import (draw_labels_and_means, feature_bayes_accuracy,
                                                 generate_synthetic_graph)
from nsl_lab.errors import ConfigError
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.graphs.store import FeatureStore, load_csr, save_csr, write_features


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_feature_store_reads_rows_from_a_memory_map(tmp_path, dtype):
    values = np.arange(40, dtype=np.float32).reshape(10, 4) / 8
    target = write_features(tmp_path / "x.npy", 10, 4, dtype)
    target[:] = values
    target.flush()
    store = FeatureStore(tmp_path / "x.npy")
    assert isinstance(store.values, np.memmap) and store.shape == (10, 4) and len(store) == 10
    rows = store[torch.tensor([7, 2, 7])]
    assert rows.dtype == torch.float32 and torch.equal(rows, torch.from_numpy(values[[7, 2, 7]]))
    assert store.nbytes == 10 * 4 * np.dtype(dtype).itemsize
    assert torch.equal(FeatureStore(torch.from_numpy(values))[torch.tensor([1])], torch.from_numpy(values[[1]]))


def test_feature_store_rejects_what_it_cannot_read(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        FeatureStore(tmp_path / "missing.npy")
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    with pytest.raises(ConfigError, match="is not a readable .npy file"):
        FeatureStore(tmp_path / "bad.npy")
    with pytest.raises(ConfigError, match=r"holds \[N, d\] rows; got shape \[3\]"):
        FeatureStore(np.zeros(3, dtype=np.float32))
    with pytest.raises(ConfigError, match="float32 or float16 values; got int64"):
        FeatureStore(np.zeros((3, 2), dtype=np.int64))


def test_csr_round_trip_keeps_every_edge_and_the_top_k_order(tmp_path):
    edge_index = torch.tensor([[0, 0, 0, 2, 3], [1, 2, 3, 0, 0]])
    graph = NeighborGraph(edge_index, 4, torch.tensor([0.5, 2.0, 1.0, 1.0, 3.0]))
    save_csr(tmp_path / "g", graph)
    loaded = load_csr(tmp_path / "g")
    for mine, theirs in zip(graph.edges(), loaded.edges()):
        assert torch.equal(mine, theirs)
    ids, weights = loaded.neighbors(torch.tensor([0]), 2)
    assert ids.tolist() == [[2, 3]] and weights.tolist() == [[2.0, 1.0]]  # the heaviest first
    assert not list((tmp_path / "g").glob(".*partial"))


def test_from_csr_sorts_rows_and_rejects_bad_arrays():
    # Row 0 lists its neighbours lightest first: from_csr sorts them as the constructor does.
    graph = NeighborGraph.from_csr(torch.tensor([0, 2, 2]), torch.tensor([1, 0]), torch.tensor([1.0, 5.0]))
    assert graph.indices.tolist() == [0, 1] and graph.weights.tolist() == [5.0, 1.0]
    with pytest.raises(ConfigError, match="indptr must rise from 0"):
        NeighborGraph.from_csr(torch.tensor([0, 3, 2]), torch.tensor([1, 0]))
    with pytest.raises(ConfigError, match=r"node ids in \[0, 5\], allowed: 0 \.\. 1"):
        NeighborGraph.from_csr(torch.tensor([0, 1, 2]), torch.tensor([5, 0]))
    with pytest.raises(ConfigError, match="lacks indptr.npy"):
        load_csr("/nonexistent")


def test_synthetic_graph_has_the_requested_degree_homophily_and_class_means(tmp_path):
    summary = generate_synthetic_graph(tmp_path, num_nodes=20_000, avg_degree=6, num_classes=4, feature_dim=16,
                                       homophily=0.7, class_separation=3.0, seed=1)
    labels = np.load(tmp_path / "labels.npy")
    x = FeatureStore(tmp_path / "features.npy")[slice(None)]
    graph = load_csr(tmp_path)
    assert graph.num_nodes == 20_000 and summary["num_edges"] == graph.num_edges
    # 20,000 * 6 / 2 pairs in both directions, less the self-loops (~1/5000 of the same-class pairs).
    assert abs(graph.num_edges - 120_000) < 60
    source, target, _ = graph.edges()
    y = torch.from_numpy(labels)
    assert abs((y[source] == y[target]).float().mean().item() - 0.7) < 0.01
    # Undirected: every edge is stored in both directions.
    reverse = set(zip(target.tolist(), source.tolist()))
    assert all(pair in reverse for pair in zip(source[:500].tolist(), target[:500].tolist()))
    # Noise of unit variance around the class means; the means ~3 noise deviations apart.
    means = torch.stack([x[y == c].mean(0) for c in range(4)])
    residual = x - means[y]
    assert abs(residual.var().item() - 1.0) < 0.02
    distances = torch.cdist(means, means)[~torch.eye(4, dtype=torch.bool)]
    assert 1.5 < distances.mean().item() < 4.5
    # The same seed, the same data.
    generate_synthetic_graph(tmp_path / "again", num_nodes=20_000, avg_degree=6, num_classes=4, feature_dim=16,
                             homophily=0.7, class_separation=3.0, seed=1)
    assert np.array_equal(np.load(tmp_path / "again" / "indices.npy"), np.load(tmp_path / "indices.npy"))


def test_feature_bayes_accuracy_is_the_closed_form_and_the_generated_datas_own(tmp_path):
    from math import erf, sqrt

    settings = dict(num_nodes=20_000, num_classes=2, feature_dim=16, class_separation=1.5, seed=4)
    bayes = feature_bayes_accuracy(**settings)
    # Two equiprobable classes, identity noise: Phi(|mu_0 - mu_1| / 2).
    _, means = draw_labels_and_means(np.random.default_rng(4), 20_000, 2, 16, 1.5)
    half_gap = float(np.linalg.norm(means[0] - means[1])) / 2
    assert abs(bayes - 0.5 * (1 + erf(half_gap / sqrt(2)))) < 0.005
    # The means it replays are the generator's: the nearest true mean scores the same on its nodes.
    generate_synthetic_graph(tmp_path, avg_degree=2, **settings)
    labels, x = np.load(tmp_path / "labels.npy"), np.load(tmp_path / "features.npy")
    nearest = ((x[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    assert abs((nearest == labels).mean() - bayes) < 0.01
    assert abs(feature_bayes_accuracy(1000, num_classes=5, class_separation=0.0) - 0.2) < 0.01  # no signal: chance


def test_synthetic_datamodule_generates_once_and_batches_sampled_neighbours(tmp_path):
    settings = dict(num_nodes=3000, feature_dim=8, num_classes=3, cache_dir=str(tmp_path), label_frac=0.05,
                    include_unlabeled=True, neighbors=3, neighbor_sampling="uniform", batch_size=256)
    data = SyntheticGraphDataModule(**settings)
    data.setup()
    folder = data.folder
    assert isinstance(data.samples.x, FeatureStore) and data.num_features == 8 and data.num_classes == 3
    stamp = (folder / "features.npy").stat().st_mtime_ns
    again = SyntheticGraphDataModule(**{**settings, "seed": 1})
    again.setup()
    assert again.folder == folder and (folder / "features.npy").stat().st_mtime_ns == stamp  # not regenerated
    assert not torch.equal(again.rows["test"], data.rows["test"])  # seed draws the splits
    batch = next(iter(data.train_dataloader()))
    assert batch.x.shape == (256, 8) and batch.neighbors.x.shape == (256 * 3, 8)
    assert torch.equal(batch.x, data.samples.x[batch.index])
    evaluation = set(data.rows["val"].tolist()) | set(data.rows["test"].tolist())
    assert not evaluation & set(batch.index.tolist())
    seen = torch.cat([b.index for b in data.train_dataloader()])
    assert torch.equal(seen.sort().values, data.rows["train"])  # every non-evaluation node, once an epoch


@pytest.mark.parametrize("settings, message", [
    ({"homophily": 1.5}, "data.homophily=1.5 is out of range"),
    ({"dtype": "float64"}, "data.dtype='float64' is not supported; allowed: 'float32', 'float16'"),
    ({"num_nodes": 1}, "data.num_nodes=1"),
    ({"num_nodes": 20, "avg_degree": 100.0}, r"data.avg_degree=100.0 is out of range; allowed: 0.0 <= data.avg_degree "
                                             r"<= 9.5"),  # pairs drawn with replacement: at most half the others
    ({"avg_degree": float("inf")}, "data.avg_degree=inf is out of range"),
    ({"graph": "knn"}, "data.graph.kind='knn' is not supported; allowed: 'natural', 'none'"),
])
def test_synthetic_settings_fail_in_one_line_before_generating(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message):
        SyntheticGraphDataModule(cache_dir=str(tmp_path), **settings)
    assert not (tmp_path / "synthetic").exists()


def test_batches_are_pinned_only_for_a_gpu_trainer(tmp_path):
    from types import SimpleNamespace

    data = SyntheticGraphDataModule(num_nodes=500, feature_dim=4, cache_dir=str(tmp_path))
    assert data.pin_memory is False  # no trainer yet
    data.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    assert data.pin_memory is False
    data.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)))
    assert data.pin_memory is True


def test_too_few_nodes_for_the_classes_fail_in_one_line_and_leave_nothing(tmp_path):
    data = SyntheticGraphDataModule(num_nodes=3, num_classes=10, avg_degree=1.0, cache_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"data.num_nodes=3 left class \d without a node"):
        data.setup()
    assert not list((tmp_path / "synthetic").iterdir())  # the partial folder is gone
