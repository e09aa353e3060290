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
    with pytest.raises(ConfigError, match=r"edge.csv.gz line 2 is not 2 comma-separated numbers: '2,x'$"):
        OGBDataModule(name="ogbn-tiny", **settings).setup()
    assert not [p for p in (tmp_path / "cache" / "ogb").iterdir()]  # nothing half-converted is left


def test_ogb_training_split_is_kept(ogb_root, tmp_path):
    """A labeled node in none of OGB's splits is not trained on: only train.csv.gz's nodes are."""
    data_dir, _, _, order = ogb_root
    write_gz(data_dir / "ogb" / "ogbn_tiny" / "split" / "time" / "train.csv.gz", [str(v) for v in order[:10]])
    data = OGBDataModule(data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"), name="ogbn-tiny")
    data.setup()
    assert torch.equal(data.labeled_index, torch.from_numpy(np.sort(order[:10]))) and data.n_labeled == 10


RAW = "raw"  # the files below are under <data_dir>/ogb/ogbn_tiny


@pytest.mark.parametrize("file, lines, message", [
    ("split/time/test.csv.gz", "valid", r"the dataset's validation and test rows overlap \(12 rows, e.g. row \d+\); "
                                        "the splits must be disjoint"),
    (f"{RAW}/node-label.csv.gz", [str(v % 3) for v in range(NUM_NODES - 1)] + ["9"],
     r"holds class ids up to 9 \(row 59\) but 4 distinct ones: class 3 has no row; allowed: ids 0..C-1"),
    (f"{RAW}/node-label.csv.gz", ["-4"] + [str(v % 3) for v in range(1, NUM_NODES)],
     r"node-label.csv.gz row 0 holds -4; allowed: class ids 0, 1, ... or -1 for unlabeled"),
    (f"{RAW}/node-feat.csv.gz", ["0,0,0,0"] * 4 + ["0,nan,0,0"] + ["0,0,0,0"] * (NUM_NODES - 5),
     r"node-feat.csv.gz line 5 holds NaN or inf; features must be finite"),
    (f"{RAW}/node-feat.csv.gz", [], r"node-feat.csv.gz is empty"),
    (f"{RAW}/edge.csv.gz", None, r"edge.csv.gz cannot be read as a gzipped CSV file \(BadGzipFile"),
])
def test_ogb_bad_contents_fail_in_one_line(ogb_root, tmp_path, file, lines, message):
    data_dir, *_ = ogb_root
    path = data_dir / "ogb" / "ogbn_tiny" / file
    if lines is None:
        path.write_bytes(b"0,1\n")  # plain text where gzip is expected
    elif lines == "valid":
        path.write_bytes((path.parent / "valid.csv.gz").read_bytes())
    else:
        write_gz(path, lines)
    with pytest.raises(ConfigError, match=message):
        OGBDataModule(data_dir=str(data_dir), cache_dir=str(tmp_path / "cache"), name="ogbn-tiny").setup()
