"""IMDB movie reviews (Maas et al. 2011) with a synthesized review graph."""
from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from nsl_lab.datamodules.samples import SampleDataModule, Samples
from nsl_lab.datamodules.text import Truncate, Vocabulary, pad_sequences, tokenize
from nsl_lab.errors import ConfigError, check_choice, check_integer
from nsl_lab.graphs.build import GraphSpec, text_embeddings, word_vector_embeddings
from nsl_lab.graphs.neighbors import NeighborGraph

Split = Literal["train", "test"]
Source = Literal["auto", "jsonl", "folder"]
TextEmbedding = Literal["tfidf_svd", "word_vectors"]
_FILE_NAME = re.compile(r"^(\d+)_(\d+)\.txt$")


def read_jsonl(path: str | Path) -> list[dict]:
    """Reviews from ``{train,test}.jsonl.gz`` (records ``id``, ``rating``, ``label``, ``text``, ``path``)."""
    with gzip.open(Path(path), "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_aclimdb(folder: str | Path, split: Split) -> list[dict]:
    """Reviews from the official ``aclImdb/<split>/{neg,pos}/<id>_<rating>.txt`` layout.

    Records match :func:`read_jsonl`'s, in the same order: negatives then positives, by id.
    """
    check_choice("split", split, Split)
    folder = Path(folder)
    records = []
    for label, polarity in enumerate(("neg", "pos")):
        directory = folder / split / polarity
        if not directory.is_dir():
            raise ConfigError(f"aclImdb folder {folder} has no {split}/{polarity}/ directory")
        files = []
        for file in directory.iterdir():
            match = _FILE_NAME.match(file.name)
            if match:
                files.append((int(match.group(1)), int(match.group(2)), file))
        for review_id, rating, file in sorted(files):
            records.append({
                "id": review_id, "rating": rating, "label": label,
                "text": file.read_text(encoding="utf-8"), "path": f"{split}/{polarity}/{file.name}",
            })
    return records


class IMDBDataModule(SampleDataModule):
    """IMDB sentiment (25,000 training and 25,000 test reviews), mini-batched.

    Text is tokenised (lower case, markup removed), mapped to ids with a vocabulary built
    from the training reviews only (``vocab_size`` most frequent, seen ``min_freq`` times)
    and truncated or padded to ``max_len``. ``val_frac`` of the training reviews is
    validation, ``label_frac`` of the rest keeps labels (stratified, seeded) and the test
    set is the official test split. The graph (``graph``, a :class:`GraphSpec`, default a
    top-10 cosine kNN graph over TF-IDF + SVD embeddings) is built over the training
    reviews and cached under ``<cache_dir>/graphs`` keyed by its parameters; test reviews
    are not in it.

    Args:
        data_dir: the data root, holding ``imdb/{train,test}.jsonl.gz``.
        source: ``jsonl``, ``folder`` (an ``aclImdb/`` directory at ``folder``) or ``auto``.
        folder: the ``aclImdb/`` directory (default ``<data_dir>/imdb/aclImdb``).
        max_len: tokens kept per review.
        truncate: keep a long review's last ``max_len`` tokens (``tail``, default: the verdict
            tends to close a review) or its first (``head``).
        vocab_size, min_freq: vocabulary limits.
        train_size, test_size: use a seeded random subset of that many reviews (small runs).
        Other arguments: see :class:`SampleDataModule`.
    """

    input_kind = "tokens"
    preset = "imdb_propagated"
    default_graph = "knn"

    def __init__(
        self,
        data_dir: str = "data",
        source: Source = "auto",
        folder: str | None = None,
        max_len: int = 256,
        truncate: Truncate = "tail",
        vocab_size: int = 20000,
        min_freq: int = 2,
        train_size: int | None = None,
        test_size: int | None = None,
        graph: "str | dict | None" = None,
        **kwargs,
    ) -> None:
        super().__init__(graph=graph if graph is not None else {"kind": "knn"}, **kwargs)
        check_choice("data.source", source, Source)
        check_integer("data.max_len", max_len, 1)
        check_integer("data.vocab_size", vocab_size, 1)
        check_integer("data.min_freq", min_freq, 1)
        check_choice("data.truncate", truncate, Truncate)
        for name, value in [("train_size", train_size), ("test_size", test_size)]:
            check_integer(f"data.{name}", value, 2, optional=True)
        if self.graph_spec.kind not in ("none", "knn"):
            raise ConfigError(f"data.graph.kind={self.graph_spec.kind!r} is not available for IMDB; allowed: 'knn', 'none'")
        if self.graph_spec.kind == "knn":
            check_choice("data.graph.embedding", self.graph_spec.embedding, TextEmbedding)
        self.data_dir = Path(data_dir).expanduser()
        self.source, self.max_len, self.vocab_size, self.min_freq = source, int(max_len), vocab_size, int(min_freq)
        self.truncate = truncate
        self.folder = Path(folder).expanduser() if folder else self.data_dir / "imdb" / "aclImdb"
        self.train_size, self.test_size = train_size, test_size

    def read(self, split: Split) -> list[dict]:
        jsonl = self.data_dir / "imdb" / f"{split}.jsonl.gz"
        if self.source == "jsonl" or (self.source == "auto" and jsonl.is_file()):
            if not jsonl.is_file():
                raise ConfigError(f"IMDB file {jsonl} not found (set the data root with paths.data_dir=... or NSL_LAB_DATA)")
            return read_jsonl(jsonl)
        if not self.folder.is_dir():
            raise ConfigError(
                f"IMDB not found: neither {jsonl} nor an aclImdb/ folder at {self.folder} (set data.folder=...)"
            )
        return read_aclimdb(self.folder, split)

    def subset(self, records: list[dict], size: int | None, offset: int) -> list[dict]:
        if size is None or size >= len(records):
            return records
        generator = torch.Generator().manual_seed(self.seed + offset)
        keep = torch.randperm(len(records), generator=generator)[:size].sort().values
        return [records[i] for i in keep.tolist()]

    def load_samples(self) -> Samples:
        train = self.subset(self.read("train"), self.train_size, 0)
        test = self.subset(self.read("test"), self.test_size, 1)
        self.train_texts = [r["text"] for r in train]
        train_tokens = [tokenize(t) for t in self.train_texts]
        self.vocab = Vocabulary.build(train_tokens, self.vocab_size, self.min_freq)
        ids, lengths = pad_sequences(
            [self.vocab.encode(t) for t in train_tokens] + [self.vocab.encode(tokenize(r["text"])) for r in test],
            self.max_len,
            self.truncate,
        )
        self.num_features = len(self.vocab)
        self.num_train_reviews = len(train)
        y = torch.tensor([int(r["label"]) for r in train + test], dtype=torch.long)
        return Samples(x=ids, y=y, lengths=lengths, test_index=torch.arange(len(train), len(train) + len(test)))

    def build_graph(self, samples: Samples) -> NeighborGraph | None:
        if self.graph_spec.kind == "none":
            return None
        spec = self.graph_spec
        return self.cached_similarity_graph(
            "imdb",
            lambda: self.review_embeddings(spec),
            num_nodes=len(samples.y),
            # Keyed by the reviews themselves, so subsets and other copies never share a cache entry.
            texts=hashlib.sha1("\0".join(self.train_texts).encode()).hexdigest(),
        )

    def review_embeddings(self, spec: GraphSpec) -> np.ndarray:
        """The training reviews embedded for the kNN graph (``spec.embedding``)."""
        if spec.embedding == "word_vectors":
            documents = [tokenize(text) for text in self.train_texts]
            return word_vector_embeddings(documents, spec.dim, spec.window, spec.max_features, seed=0)
        return text_embeddings(self.train_texts, spec.dim, spec.max_features, seed=0)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(label_frac={self.label_frac}, max_len={self.max_len}, truncate={self.truncate!r}, "
            f"graph={self.graph_spec.kind!r}, neighbors={self.num_neighbors}, seed={self.seed})"
        )
