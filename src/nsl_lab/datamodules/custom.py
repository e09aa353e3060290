"""Bring your own data: feature rows, labels (some missing) and an optional graph."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nsl_lab.datamodules.samples import SampleDataModule, Samples, check_class_ids
from nsl_lab.errors import ConfigError
from nsl_lab.files import file_digest
from nsl_lab.graphs.build import dense_embeddings, read_tsv
from nsl_lab.graphs.neighbors import NeighborGraph

FORMATS = (".npy", ".csv")


def read_table(path: str | Path, name: str) -> np.ndarray:
    """A ``.npy`` array or a comma-separated ``.csv`` (an optional header row; empty cells = NaN)."""
    path = Path(path).expanduser()
    if path.suffix not in FORMATS:
        raise ConfigError(f"data.{name}={str(path)!r} must be a {' or '.join(FORMATS)} file")
    if not path.is_file():
        raise ConfigError(f"data.{name}: file {path} does not exist")
    if path.suffix == ".npy":
        try:
            table = np.load(path, allow_pickle=False)
        except ValueError as error:  # pickled objects, a damaged header: one line, never unpickled
            raise ConfigError(f"data.{name}: {path} is not a .npy array of numbers ({error})".splitlines()[0]) from None
        if not (np.issubdtype(table.dtype, np.number) or table.dtype == bool):
            raise ConfigError(f"data.{name}: {path} holds {table.dtype} values; allowed: numbers")
        return table
    lines = path.read_text().split("\n")
    if lines and not lines[-1].strip():
        lines = lines[:-1]  # the final newline
    rows = [line.split(",") for line in lines]
    start = 0 if rows and _numeric_row(rows[0]) else 1  # an optional header row
    if any(len(row) != len(rows[start]) for row in rows[start:]):
        raise ConfigError(f"data.{name}: rows of {path} have different numbers of columns")
    for number, row in enumerate(rows[start:], start + 1):
        if not _numeric_row(row):
            raise ConfigError(f"data.{name}: {path}:{number} holds a value that is not a number: {lines[number - 1]!r}")
    table = np.array([[float(cell) if cell.strip() else np.nan for cell in row] for row in rows[start:]])
    return table[:, 0] if table.ndim == 2 and table.shape[1] == 1 else table


def _numeric_row(cells: list[str]) -> bool:
    try:
        [float(cell) for cell in cells if cell.strip()]
    except ValueError:
        return False
    return True


class CustomDataModule(SampleDataModule):
    """Your features, labels and graph, with the same splits and batches as IMDB.

    Args:
        features: ``[N, d]`` features (``.npy`` or ``.csv``, one row per sample).
        labels: ``[N]`` class ids ``0 .. C-1`` (``.npy`` or ``.csv``); ``-1``, NaN or an
            empty cell means unlabeled. Unlabeled rows are never validation or test rows.
        node_ids: optional text file, one id per line, naming the rows in a TSV graph
            (default: the row numbers ``0 .. N-1``).
        graph: ``none``; ``{kind: tsv, path: edges.tsv}`` (NSL's ``source<TAB>target<TAB>weight``,
            e.g. from ``scripts/build_graph.py``); or ``{kind: knn, embedding: features | pca | npy, k: 10}``.
        Other arguments: see :class:`SampleDataModule` (``test_frac`` of the labeled rows is
        the test set, ``val_frac`` of the rest validation, ``label_frac`` of the rest kept).
    """

    def __init__(self, features: str, labels: str, node_ids: str | None = None, graph=None, **kwargs) -> None:
        super().__init__(graph=graph, **kwargs)
        if self.graph_spec.kind == "natural":
            raise ConfigError("data.graph.kind='natural' is not available for custom data; allowed: 'none', 'tsv', 'knn'")
        self.features_path, self.labels_path, self.node_ids_path = features, labels, node_ids

    def load_samples(self) -> Samples:
        x = read_table(self.features_path, "features").astype(np.float32)
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ConfigError(f"data.features has shape {list(x.shape)}; allowed: [rows, features] (or [rows])")
        labels = read_table(self.labels_path, "labels").astype(np.float64)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise ConfigError(f"data.labels has shape {list(labels.shape)}; allowed: one class id per row ([rows])")
        if len(labels) != len(x):
            raise ConfigError(
                f"data.labels has {len(labels)} rows but data.features has {len(x)}; they must match row for row"
            )
        if not np.isfinite(x).all():
            row = int(np.argwhere(~np.isfinite(x))[0, 0])
            raise ConfigError(f"data.features row {row} holds NaN or inf; features must be finite")
        missing = np.isnan(labels) | (labels == -1)
        known = labels[~missing]
        if known.size == 0:
            raise ConfigError("data.labels has no labeled row")
        if (known < 0).any() or (known != np.round(known)).any():
            bad = known[(known < 0) | (known != np.round(known))][0]
            raise ConfigError(f"data.labels holds {float(bad)!r}; labels must be class ids 0, 1, ... or -1/empty for unlabeled")
        y = np.where(missing, -1, labels).astype(np.int64)
        check_class_ids(y, "data.labels")
        self.num_features = int(x.shape[1])
        return Samples(x=torch.from_numpy(x), y=torch.from_numpy(y))

    def node_ids(self, num_nodes: int) -> np.ndarray | None:
        if self.node_ids_path is None:
            return None
        path = Path(self.node_ids_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"data.node_ids: file {path} does not exist")
        ids = np.array(path.read_text().splitlines(), dtype=str)
        if len(ids) != num_nodes:
            raise ConfigError(f"data.node_ids has {len(ids)} ids but data.features has {num_nodes} rows")
        return ids

    def build_graph(self, samples: Samples) -> NeighborGraph | None:
        spec, num_nodes = self.graph_spec, len(samples.y)
        if spec.kind == "none":
            return None
        if spec.kind == "tsv":
            edge_index, edge_weight = read_tsv(spec.path, num_nodes, self.node_ids(num_nodes))
            return NeighborGraph(edge_index, num_nodes, edge_weight)

        def embed() -> np.ndarray:
            if spec.embedding == "npy":
                embeddings = read_table(spec.path, "graph.path")
                if len(embeddings) != num_nodes:
                    raise ConfigError(f"data.graph.path has {len(embeddings)} rows but data.features has {num_nodes}")
                return embeddings
            if spec.embedding in ("tfidf_svd", "word_vectors"):
                raise ConfigError(f"data.graph.embedding={spec.embedding!r} needs text; for custom data use features, pca or npy")
            return dense_embeddings(samples.x, spec.embedding, spec.dim)

        sources = [self.features_path] + ([spec.path] if spec.embedding == "npy" else [])
        return self.cached_similarity_graph("custom", embed, num_nodes, data=file_digest(sources))
