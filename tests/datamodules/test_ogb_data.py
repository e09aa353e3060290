"""data=ogb on small files in OGB's exact node-property layout, written here."""
import gzip

import numpy as np
import pytest
import torch

from nsl_lab.datamodules import OGBDataModule
from nsl_lab.errors import ConfigError
from nsl_lab.graphs.store import FeatureStore

NUM_NODES = 60


def write_gz(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as handle:
        handle.write("".join(f"{line}\n" for line in lines))


@pytest.fixture()
def ogb_root(tmp_path):
    """ogbn-tiny: 60 nodes, 4 features, 3 classes, directed edges i -> i+1 and i -> i+3 (mod 60)."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(NUM_NODES, 4)).round(4)
    labels = np.arange(NUM_NODES) % 3
    root = tmp_path / "data" / "ogb" / "ogbn_tiny"
    write_gz(root / "raw" / "node-feat.csv.gz", [",".join(f"{v:.4f}" for v in row) for row in features])
    write_gz(root / "raw" / "node-label.csv.gz", [str(v) for v in labels])
    write_gz(root / "raw" / "edge.csv.gz", [f"{i},{(i + step) % NUM_NODES}" for i in range(NUM_NODES) for step in (1, 3)])
    write_gz(root / "raw" / "num-node-list.csv.gz", [str(NUM_NODES)])
    order = rng.permutation(NUM_NODES)
    for name, ids in (("train", order[:36]), ("valid", order[36:48]), ("test", order[48:])):
        write_gz(root / "split" / "time" / f"{name}.csv.gz", [str(v) for v in ids])
    return tmp_path / "data", features, labels, order


def test_ogb_layout_converts_once_into_a_store_csr_and_the_official_split(ogb_root, tmp_path):
    data_dir, features, labels, order = ogb_root
    data = OGBDataModule(data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"), name="ogbn-tiny",
                         include_unlabeled=True, neighbors=2, batch_size=8)
    data.setup()
    assert isinstance(data.samples.x, FeatureStore)
    assert np.allclose(data.samples.x[torch.arange(NUM_NODES)].numpy(), features, atol=1e-6)
    assert torch.equal(data.samples.y, torch.from_numpy(labels))
    assert torch.equal(data.rows["test"], torch.from_numpy(order[48:]))
    assert torch.equal(data.rows["val"].sort().values, torch.from_numpy(np.sort(order[36:48])))
    assert torch.equal(data.labeled_index, torch.from_numpy(np.sort(order[:36])))
    # Symmetrised: node 10's neighbours are 11, 13, 9 and 7.
    source, target, _ = data.graph.edges()
    assert sorted(target[source == 10].tolist()) == [7, 9, 11, 13] and data.graph.num_edges == 4 * NUM_NODES
    batch = next(iter(data.train_dataloader()))
    assert batch.x.shape == (8, 4) and batch.neighbors.x.shape == (16, 4)
    # A second datamodule reads the conversion; it does not convert again.
    folder = data.stored()
    stamp = (folder / "features.npy").stat().st_mtime_ns
    again = OGBDataModule(data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"), name="ogbn-tiny", label_frac=0.1)
    again.setup()
    assert (folder / "features.npy").stat().st_mtime_ns == stamp and again.n_labeled == 3  # one per class


def test_ogb_missing_or_bad_files_fail_in_one_line(ogb_root, tmp_path):
    data_dir, *_ = ogb_root
    settings = dict(data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"data=ogb needs node-feat.csv.gz, edge.csv.gz, node-label.csv.gz under"):
        OGBDataModule(name="ogbn-arxiv", **settings).setup()
    with pytest.raises(ConfigError, match=r"data.split_type='sales' is not a folder under .*; allowed: time"):
        OGBDataModule(name="ogbn-tiny", split_type="sales", **settings).setup()
    with pytest.raises(ConfigError, match="is not an OGB node-property dataset"):
        OGBDataModule(name="cora", **settings)
    write_gz(data_dir / "ogb" / "ogbn_tiny" / "raw" / "edge.csv.gz", ["0,1", "2,x"])
    with pytest.raises(ConfigError, match="edge.csv.gz has a line that is not 2 comma-separated numbers"):
        OGBDataModule(name="ogbn-tiny", **settings).setup()
    assert not [p for p in (tmp_path / "cache" / "ogb").iterdir()]  # nothing half-converted is left
