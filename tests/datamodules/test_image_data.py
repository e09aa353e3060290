"""Image datamodules: CIFAR-10's official formats (tiny files written here), digits, augmentation."""
import collections
import pickle

import numpy as np
import pytest
import torch

from nsl_lab.datamodules import Cifar10DataModule, DigitsDataModule, DigitsGraphDataModule
from nsl_lab.datamodules.images import random_crop, random_flip, read_cifar10_python_batch
from nsl_lab.errors import ConfigError

PER_FILE = 6


def fake_cifar(seed: int, count: int = PER_FILE) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 3072), dtype=np.uint8), rng.integers(0, 10, count).tolist()


def write_python_version(root, files):
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, (data, labels) in files.items():
        # The official layout: a pickled dict with bytes keys, uint8 data [N, 3072] (channel-major rows).
        entry = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"{i}.png".encode() for i in range(len(labels))]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_cases_per_batch": PER_FILE}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def write_binary_version(root, files):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, (data, labels) in files.items():
        records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())


def cifar_files():
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {name: fake_cifar(i) for i, name in enumerate(names)}


@pytest.mark.parametrize("version", ["python", "binary"])
def test_cifar10_reads_the_official_formats(tmp_path, version):
    files = cifar_files()
    (write_python_version if version == "python" else write_binary_version)(tmp_path, files)
    data = Cifar10DataModule(data_dir=str(tmp_path), val_size=5, batch_size=4, crop_padding=0, flip=False,
                             normalize=False)
    data.setup()
    train_x, train_y = data._stages["train"]
    val_x, val_y = data._stages["val"]
    test_x, test_y = data._stages["test"]
    assert len(train_y) + len(val_y) == 5 * PER_FILE and len(test_y) == PER_FILE
    assert test_x.shape == (PER_FILE, 3, 32, 32) and test_x.dtype == torch.uint8
    raw, labels = files["test_batch"]
    # Row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32x32.
    assert torch.equal(test_x[2, 1, 3, 5], torch.tensor(raw[2, 1024 + 3 * 32 + 5]))
    assert test_y.tolist() == labels
    batch = data.on_after_batch_transfer(next(iter(data.test_dataloader())), 0)
    assert batch.x.dtype == torch.float32 and abs(float(batch.x[2, 0, 0, 0]) - raw[2, 0] / 255.0) < 1e-6


def test_cifar10_python_reader_refuses_foreign_pickles(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": collections.OrderedDict}))
    with pytest.raises(pickle.UnpicklingError, match="which a CIFAR file never does"):
        read_cifar10_python_batch(path)


def test_cifar10_missing_says_where(tmp_path):
    with pytest.raises(ConfigError, match=r"cifar-10-batches-py/ or cifar-10-batches-bin/ folder in .*cifar10"):
        Cifar10DataModule(data_dir=str(tmp_path)).setup()


def test_cifar10_normalisation_and_label_frac(tmp_path):
    write_binary_version(tmp_path / "cifar10", cifar_files())
    data = Cifar10DataModule(data_dir=str(tmp_path), val_size=5, label_frac=0.5, batch_size=4)
    data.setup()
    assert data.n_labeled < 25
    x = data._stages["val"][0]
    normalised = data.transform(x, train=False)
    expected = (x.float() / 255 - data.mean[:, None, None]) / data.std[:, None, None]
    assert torch.allclose(normalised, expected, atol=1e-6)


def test_digits_split_scaling_label_frac_and_batches():
    data = DigitsDataModule(batch_size=32, label_frac=0.1, seed=3)
    data.setup()
    assert data.num_features == 1 and data.num_classes == 10 and data.image_shape == (1, 8, 8)
    train_x, train_y = data._stages["train"]
    assert len(data._stages["test"][1]) == 360 and len(data._stages["val"][1]) == 180
    assert 120 <= data.n_labeled <= 135 and set(train_y.tolist()) == set(range(10))
    assert float(train_x.min()) == 0.0 and float(train_x.max()) == 1.0
    batch = next(iter(data.train_dataloader()))
    assert batch.x.shape == (32, 1, 8, 8) and batch.y.shape == (32,) and batch.index.shape == (32,)
    # Same seeds, same draw; the test split does not depend on seed.
    other = DigitsDataModule(label_frac=0.1, seed=4)
    other.setup()
    assert torch.equal(other._stages["test"][0], data._stages["test"][0])
    assert not torch.equal(other._stages["train"][1], train_y) or other.n_labeled != data.n_labeled


def test_random_crop_is_a_shifted_window_and_flip_mirrors():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4) + 1
    generator = torch.Generator().manual_seed(0)
    cropped = random_crop(images, 2, generator)
    assert cropped.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(2):  # each crop is some 4x4 window of its own padded image
        windows = padded[i, 0].unfold(0, 4, 1).unfold(1, 4, 1).reshape(-1, 4, 4)
        assert any(torch.equal(w, cropped[i, 0]) for w in windows)
    flipped = random_flip(images, torch.Generator().manual_seed(1))
    for i in range(2):
        assert torch.equal(flipped[i], images[i]) or torch.equal(flipped[i], images[i].flip(-1))
    assert torch.equal(random_crop(images, 0), images)


def test_digits_graph_keeps_the_digits_test_images_out_of_its_knn_graph(tmp_path):
    images = DigitsDataModule()
    images.setup()
    data = DigitsGraphDataModule(cache_dir=str(tmp_path), label_frac=0.01, include_unlabeled=True,
                                 labeled_per_batch=4, batch_size=16)
    data.setup()
    test = data.rows["test"]
    # The same 360 test images as data=digits, in the same order, as the last rows.
    assert torch.equal(data.samples.x[test], images._stages["test"][0])
    assert torch.equal(data.y_test[test], images._stages["test"][1])
    assert torch.equal(test, torch.arange(1797 - 360, 1797))
    # 1% of each class's ~130 training images: one label per class.
    assert data.n_labeled == 10 and set(data.y_train[data.labeled_index].tolist()) == set(range(10))
    graph = data.graph
    assert graph.num_nodes == 1797 and graph.num_edges > 0
    source, target = graph.edge_index()
    assert int(torch.cat([source, target]).max()) < 1797 - 360  # no test image is in the graph
    # An image's top-10 neighbours by cosine over pixels are mostly of its own class.
    y = data.samples.y
    assert (y[source] == y[target]).float().mean() > 0.9
    batch = next(iter(data.train_dataloader()))
    assert batch.x.shape == (20, 1, 8, 8) and (batch.y[-4:] >= 0).all()
    assert not set(batch.index.tolist()) & set(test.tolist())
    assert DigitsGraphDataModule.input_kind == "images" and data.num_features == 1


@pytest.mark.parametrize("graph, message", [
    ({"kind": "tsv", "path": "edges.tsv"}, "allowed: 'none', 'knn'"),
    ({"kind": "knn", "embedding": "tfidf_svd"}, "allowed: 'pixels', 'pca'"),
])
def test_digits_graph_rejects_graphs_it_cannot_build(graph, message):
    with pytest.raises(ConfigError, match=message):
        DigitsGraphDataModule(graph=graph)
