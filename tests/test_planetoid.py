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
