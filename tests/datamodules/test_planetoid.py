import subprocess
import sys

import pytest
import torch

from nsl_lab.datamodules import PlanetoidDataModule
from nsl_lab.errors import ConfigError


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("name, nodes, classes, features", [("Cora", 2708, 7, 1433), ("CiteSeer", 3327, 6, 3703)])
def test_planetoid_splits_graph_and_read_only_root(data_root, cache_dir, name, nodes, classes, features):
    before = listing(data_root / "planetoid")
    data = PlanetoidDataModule(name, data_dir=str(data_root), cache_dir=str(cache_dir), label_frac=0.02, seed=1)
    data.setup()
    assert listing(data_root / "planetoid") == before  # nothing written into the data root
    assert (data.num_nodes, data.num_classes, data.num_features) == (nodes, classes, features)
    train, val, test = (data._batches[s] for s in ("train", "val", "test"))
    assert int(val.labeled.sum()) == 500 and int(test.labeled.sum()) == 1000
    labeled = train.labeled
    assert int(labeled.sum()) == data.n_labeled
    assert not (labeled & (val.labeled | test.labeled)).any()  # labels only from the training pool
    assert (torch.bincount(train.y[labeled], minlength=classes) >= 1).all()
    assert train.graph.num_edges > 0 and train.x.shape[0] == nodes


def test_public_split_is_twenty_per_class(data_root, cache_dir):
    data = PlanetoidDataModule("Cora", data_dir=str(data_root), cache_dir=str(cache_dir))
    data.setup()
    y = data._batches["train"].y
    assert torch.bincount(y[y >= 0], minlength=7).tolist() == [20] * 7


def test_inductive_graph_drops_edges_to_evaluation_nodes(data_root, cache_dir):
    data = PlanetoidDataModule("Cora", data_dir=str(data_root), cache_dir=str(cache_dir), transductive=False)
    data.setup()
    evaluation = data._batches["val"].labeled | data._batches["test"].labeled
    source, target, _ = data.graph.edges()
    assert not (evaluation[source] | evaluation[target]).any()


def test_unknown_dataset_and_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="data.name='PubMed' is not supported; allowed: 'Cora', 'CiteSeer'"):
        PlanetoidDataModule("PubMed")
    (tmp_path / "root").mkdir()
    data = PlanetoidDataModule("Cora", data_dir=str(tmp_path / "root"), cache_dir=str(tmp_path / "c"), download=False)
    with pytest.raises(ConfigError, match=r"put ind.cora.x, .* in .*root/planetoid/Cora/raw"):
        data.setup()


@pytest.mark.slow  # a fresh Python process: ~10 s of imports
def test_processed_graph_loads_again_without_torch_geometric(data_root, cache_dir, tmp_path):
    # torch-geometric's import costs ~0.5 s of each run: once processed, plain tensors are read.
    settings = dict(data_dir=str(data_root), cache_dir=str(cache_dir), label_frac=0.05, seed=3)
    first = PlanetoidDataModule("Cora", **settings)
    first.setup()
    script = (
        "import sys, torch\n"
        "from nsl_lab.datamodules import PlanetoidDataModule\n"
        f"data = PlanetoidDataModule('Cora', **{settings!r})\n"
        "data.setup()\n"
        "assert 'torch_geometric' not in sys.modules\n"
        "b = data._batches['train']\n"
        f"torch.save([b.x.to_dense(), b.y, data.graph.indptr, data.graph.indices], {str(tmp_path / 'again.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    again = torch.load(tmp_path / "again.pt")
    train = first._batches["train"]
    for a, b in zip(again, [train.x.to_dense(), train.y, first.graph.indptr, first.graph.indices]):
        assert torch.equal(a, b)


def test_validation_batch_holds_the_validation_rows_only(data_root, cache_dir):
    # The backbone sees features only, so the 500 rows give the full batch's accuracy, cheaper.
    data = PlanetoidDataModule("Cora", data_dir=str(data_root), cache_dir=str(cache_dir), label_frac=0.05)
    data.setup()
    full, (val,) = data._batches["val"], list(data.val_dataloader())
    rows = full.labeled.nonzero().flatten()
    assert len(val) == 500 and bool(val.labeled.all())
    assert torch.equal(val.index, rows) and torch.equal(val.y, full.y[rows])
    assert torch.equal(val.x.to_dense(), full.x.to_dense()[rows])
