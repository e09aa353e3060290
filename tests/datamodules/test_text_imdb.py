"""Tokeniser, vocabulary, padding, the aclImdb folder reader and the IMDB datamodule."""
import gzip
import itertools
import json

import pytest
import torch

from nsl_lab.datamodules.imdb import IMDBDataModule, read_aclimdb, read_jsonl
from nsl_lab.datamodules.text import Vocabulary, pad_sequences, tokenize
from nsl_lab.errors import ConfigError


def test_tokenize_lowercases_and_drops_markup():
    assert tokenize("Great<br /><br />MOVIE, isn't it?!") == ["great", "movie", "isn't", "it", "?", "!"]
    assert tokenize("<i>5/10</i> -- meh") == ["5", "10", "meh"]


def test_vocabulary_orders_by_frequency_and_applies_limits():
    documents = [["b", "a", "b", "c"], ["b", "a", "d"]]
    vocab = Vocabulary.build(documents, max_size=None, min_freq=1)
    assert vocab.tokens == ["<pad>", "<unk>", "b", "a", "c", "d"]  # ties alphabetical
    assert Vocabulary.build(documents, max_size=2).tokens[2:] == ["b", "a"]
    assert Vocabulary.build(documents, min_freq=2).tokens[2:] == ["b", "a"]
    assert vocab.encode(["a", "zzz"]) == [3, 1]
    with pytest.raises(ConfigError, match="data.min_freq=0 is not allowed; it must be an integer >= 1"):
        Vocabulary.build(documents, min_freq=0)


def test_pad_sequences_truncates_pads_and_reports_lengths():
    ids, lengths = pad_sequences([[5, 6, 7, 8], [9], []], max_len=3)
    assert ids.tolist() == [[5, 6, 7], [9, 0, 0], [1, 0, 0]]
    assert lengths.tolist() == [3, 1, 1]
    ids, lengths = pad_sequences([[5, 6, 7, 8], [9], []], max_len=3, truncate="tail")
    assert ids.tolist() == [[6, 7, 8], [9, 0, 0], [1, 0, 0]]
    assert lengths.tolist() == [3, 1, 1]
    with pytest.raises(ConfigError, match="data.truncate='middle'"):
        pad_sequences([[5]], max_len=3, truncate="middle")


def write_tiny_imdb(root, records_by_split):
    """Writes both layouts of the same reviews: imdb/*.jsonl.gz and an aclImdb/ folder."""
    (root / "imdb").mkdir(parents=True)
    for split, records in records_by_split.items():
        with gzip.open(root / "imdb" / f"{split}.jsonl.gz", "wt", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        for record in records:
            path = root / "aclImdb" / record["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(record["text"], encoding="utf-8")


@pytest.fixture(scope="module")
def tiny_imdb(tmp_path_factory, data_root):
    """40 training and 20 test reviews (half of each polarity) taken from the real data."""
    records = {}
    for split, size in [("train", 40), ("test", 20)]:
        with gzip.open(data_root / "imdb" / f"{split}.jsonl.gz", "rt", encoding="utf-8") as handle:
            rows = [json.loads(line) for line in itertools.islice(handle, 0, None)]
        negative = [r for r in rows if r["label"] == 0][: size // 2]
        positive = [r for r in rows if r["label"] == 1][: size // 2]
        records[split] = negative + positive
    root = tmp_path_factory.mktemp("imdb_root")
    write_tiny_imdb(root, records)
    return root, records


def test_folder_reader_matches_the_jsonl_records(tiny_imdb):
    root, records = tiny_imdb
    for split in ("train", "test"):
        from_folder = read_aclimdb(root / "aclImdb", split)
        assert from_folder == read_jsonl(root / "imdb" / f"{split}.jsonl.gz") == records[split]
    with pytest.raises(ConfigError, match="has no train/neg/ directory"):
        read_aclimdb(root / "imdb", "train")


@pytest.mark.parametrize("source", ["jsonl", "folder"])
def test_imdb_datamodule_splits_vocab_and_packed_neighbours(tiny_imdb, tmp_path, source):
    root, records = tiny_imdb
    data = IMDBDataModule(
        data_dir=str(root), cache_dir=str(tmp_path), source=source, folder=str(root / "aclImdb"), max_len=50,
        vocab_size=500, min_freq=1, label_frac=0.25, val_frac=0.25, seed=0, neighbors=3, batch_size=8,
        graph={"kind": "knn", "k": 3, "embedding": "tfidf_svd", "dim": 8, "max_features": 1000},
    )
    data.setup()
    train_rows, val_rows, test_rows = data.rows["train"], data.rows["val"], data.rows["test"]
    assert test_rows.tolist() == list(range(40, 60))
    assert len(val_rows) == 10 and not set(val_rows.tolist()) & set(train_rows.tolist())
    # label_frac 0.25 of the 30 remaining training reviews, stratified: round(0.25 * n_c) per class
    assert data.n_labeled == len(train_rows) and 6 <= data.n_labeled <= 9
    assert set(data.y_train[train_rows].tolist()) == {0, 1} and (data.y_train[val_rows] == -1).all()
    # the vocabulary comes from the training reviews only
    train_tokens = {t for r in records["train"] for t in tokenize(r["text"])}
    assert set(data.vocab.tokens[2:]) <= train_tokens
    assert data.samples.lengths.max() <= 50 and data.num_features == len(data.vocab)
    batch = next(iter(data.train_dataloader()))
    assert batch.neighbor_weight.shape == (len(batch), 3) and len(batch.neighbors) == 3 * len(batch)
    expected_ids, expected_weight = data.graph.neighbors(batch.index, 3)
    assert torch.equal(batch.neighbor_weight, expected_weight)
    assert torch.equal(batch.neighbors.index.reshape(-1, 3), torch.where(expected_ids >= 0, expected_ids, batch.index[:, None]))
    assert torch.equal(batch.neighbors.y, data.y_train[batch.neighbors.index])  # val/test labels stay hidden
    test_batch = next(iter(data.test_dataloader()))
    assert test_batch.neighbors is None and (test_batch.y >= 0).all()
    # the graph is cached under its parameters: a second datamodule loads it
    assert len(list((tmp_path / "graphs").glob("imdb-*.pt"))) == 1
    again = IMDBDataModule(data_dir=str(root), cache_dir=str(tmp_path), source=source, folder=str(root / "aclImdb"),
                           max_len=50, vocab_size=500, min_freq=1, label_frac=0.25, val_frac=0.25, neighbors=3,
                           graph={"kind": "knn", "k": 3, "embedding": "tfidf_svd", "dim": 8, "max_features": 1000})
    again.setup()
    assert torch.equal(again.graph.indices, data.graph.indices)


def test_imdb_word_vector_graph_and_embedding_choices(tiny_imdb, tmp_path):
    root, _ = tiny_imdb
    data = IMDBDataModule(data_dir=str(root), cache_dir=str(tmp_path), max_len=50, vocab_size=500, min_freq=1,
                          label_frac=0.25, val_frac=0.25, neighbors=0, include_unlabeled=True,
                          graph={"kind": "knn", "k": 3, "embedding": "word_vectors", "dim": 8, "window": 5})
    data.setup()
    source, target, _ = data.graph.edges()
    assert len(source) > 0 and bool((source < 40).all() & (target < 40).all())  # training reviews only
    assert torch.equal(data.graph_data().train_labels, data.y_train)
    with pytest.raises(ConfigError, match="data.graph.embedding='pixels' is not supported; allowed: 'tfidf_svd', 'word_vectors'"):
        IMDBDataModule(data_dir=str(root), graph={"kind": "knn", "embedding": "pixels"})
