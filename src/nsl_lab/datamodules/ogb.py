"""OGB node-property datasets (ogbn-arxiv, ogbn-products, ...) read from their raw files on disk,
converted once into a feature store and a CSR graph in the cache. Nothing is downloaded."""
from __future__ import annotations

import contextlib
import gzip
import io
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from nsl_lab.datamodules.samples import Samples, check_class_ids
from nsl_lab.datamodules.stored_graph import STORED_FILES, StoredGraphDataModule
from nsl_lab.errors import ConfigError, check_choice, check_flag
from nsl_lab.files import file_digest
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.graphs.store import StoreDtype, build_once, save_csr, write_features

RAW_FILES = ("node-feat.csv.gz", "edge.csv.gz", "node-label.csv.gz")
SPLITS = ("train", "valid", "test")
#: lines parsed at a time (bounds the conversion's memory at block x feature_dim)
BLOCK_LINES = 100_000


def read_blocks(path: Path, dtype: type, columns: int | None = None) -> Iterator[np.ndarray]:
    """The rows of a gzipped comma-separated file, ``BLOCK_LINES`` at a time, as arrays; an
    empty or ``nan`` cell in an integer file (an unlabeled node) becomes -1."""
    with gzip_errors(path), gzip.open(path, "rt") as handle:
        yield from _blocks(path, handle, dtype, columns)


@contextlib.contextmanager
def gzip_errors(path: Path) -> Iterator[None]:
    """A file that is not gzip, or is truncated, ends in one line naming it."""
    try:
        yield
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} cannot be read as a gzipped CSV file ({type(error).__name__}: {error})") from None


def _blocks(path: Path, handle: io.TextIOBase, dtype: type, columns: int | None) -> Iterator[np.ndarray]:
    number = 0
    while True:
        lines = handle.readlines(BLOCK_LINES * 16)  # a size hint in characters
        if not lines:
            return
        if dtype is np.int64:
            lines = [line if line.strip() and line.strip().lower() != "nan" else "-1\n" for line in lines]
        try:
            block = np.loadtxt(io.StringIO("".join(lines)), delimiter=",", dtype=dtype, ndmin=2)
        except ValueError:
            bad = next((i for i, line in enumerate(lines) if not _parses(line, dtype, columns)), 0)
            raise ConfigError(f"{path} line {number + bad + 1} is not {columns or 'some'} comma-separated numbers: "
                              f"{lines[bad].strip()[:80]!r}") from None
        if columns is not None and block.shape[1] != columns:
            raise ConfigError(f"{path} has rows of {block.shape[1]} values near line {number + 1}; expected {columns}")
        if dtype is np.float32 and not np.isfinite(block).all():
            bad = int(np.argwhere(~np.isfinite(block))[0, 0])
            raise ConfigError(f"{path} line {number + bad + 1} holds NaN or inf; features must be finite")
        number += len(block)
        yield block


def _parses(line: str, dtype: type, columns: int | None) -> bool:
    """Whether one line is ``columns`` numbers of ``dtype`` (finds the line ``np.loadtxt`` refused)."""
    cells = line.strip().split(",")
    try:
        [int(cell) if np.issubdtype(dtype, np.integer) else float(cell) for cell in cells]
    except ValueError:
        return False
    return columns is None or len(cells) == columns


def node_ids(path: Path, columns: int, num_nodes: int) -> np.ndarray:
    """``[rows, columns]`` node ids read from ``path``, each checked to be in ``0 .. num_nodes - 1``."""
    ids = np.concatenate(list(read_blocks(path, np.int64, columns)))
    if ids.size and (ids.min() < 0 or ids.max() >= num_nodes):
        raise ConfigError(f"{path} holds node ids outside 0 .. {num_nodes - 1}")
    return ids


def convert_ogb(raw_folder: Path, split_folder: Path, target: Path, dtype: StoreDtype, symmetrize: bool,
                progress: bool = False) -> None:
    """Writes features, labels, CSR graph and split indices into ``target`` from an OGB folder."""
    target.mkdir(parents=True, exist_ok=True)
    features_path = raw_folder / "node-feat.csv.gz"
    with gzip_errors(features_path), gzip.open(features_path, "rt") as handle:
        first = handle.readline()
        num_nodes = 1 + sum(1 for _ in handle) if first.strip() else 0
    if num_nodes == 0:
        raise ConfigError(f"{features_path} is empty; it must hold one line of features per node")
    dim = len(first.split(","))
    features = write_features(target / "features.npy", num_nodes, dim, dtype)
    row = 0
    with tqdm(total=num_nodes, desc="node features", unit="node", disable=not progress) as bar:
        for block in read_blocks(features_path, np.float32, dim):
            features[row:row + len(block)] = block
            row += len(block)
            bar.update(len(block))
    features.flush()
    del features
    labels = np.concatenate(list(read_blocks(raw_folder / "node-label.csv.gz", np.int64, 1)))[:, 0]
    if len(labels) != num_nodes:
        raise ConfigError(f"{raw_folder}/node-label.csv.gz has {len(labels)} rows for {num_nodes} nodes")
    np.save(target / "labels.npy", labels)
    edges = node_ids(raw_folder / "edge.csv.gz", 2, num_nodes)
    edge_index = torch.from_numpy(edges.T.copy())
    if symmetrize:
        edge_index = torch.cat([edge_index, edge_index.flip(0)], 1)
        edge_index = edge_index[:, edge_index[0] != edge_index[1]].unique(dim=1)
    save_csr(target, NeighborGraph(edge_index, num_nodes))
    for split in SPLITS:
        np.save(target / f"{split}.npy", node_ids(split_folder / f"{split}.csv.gz", 1, num_nodes)[:, 0])


class OGBDataModule(StoredGraphDataModule):
    """``data=ogb``: an OGB node-property dataset in OGB's on-disk layout,
    ``<data_dir>/ogb/<name with _>/raw/{node-feat,edge,node-label}.csv.gz`` and
    ``.../split/<split_type>/{train,valid,test}.csv.gz`` (what ``ogb`` leaves after a download;
    copy it there). It is converted once (a progress bar) into ``<cache>/ogb/<name>-<digest of
    the files>/``: features as a memory-mapped ``.npy``, the graph as CSR, the splits as
    ``.npy``; later runs read only that. OGB's train / valid / test split is kept;
    ``label_frac`` keeps that fraction of the training nodes' labels (stratified, seeded).

    Args:
        data_dir: the data root.
        name: e.g. ``ogbn-arxiv`` or ``ogbn-products``.
        split_type: the folder under ``split/`` (``auto``: the only one there).
        symmetrize: store every edge in both directions (arxiv's citation edges are directed).
        dtype: the feature store's ``float32`` or ``float16``.
        **kwargs: see :class:`SampleDataModule` (``val_frac`` and ``test_frac`` are unused).
    """

    def __init__(self, data_dir: str = "data", name: str = "ogbn-arxiv", split_type: str = "auto",
                 symmetrize: bool = True, dtype: StoreDtype = "float32", **kwargs) -> None:
        super().__init__(**kwargs)
        check_choice("data.dtype", dtype, StoreDtype)
        if not name.startswith("ogbn-"):
            raise ConfigError(f"data.name={name!r} is not an OGB node-property dataset; allowed: names like 'ogbn-arxiv'")
        self.data_dir, self.name, self.split_type = Path(data_dir).expanduser(), name, split_type
        self.symmetrize, self.dtype = check_flag("data.symmetrize", symmetrize), dtype

    @property
    def root(self) -> Path:
        return self.data_dir / "ogb" / self.name.replace("-", "_")

    def source_files(self) -> tuple[Path, Path]:
        """``(raw folder, split folder)``, or one line saying what is missing."""
        raw = self.root / "raw"
        missing = [name for name in RAW_FILES if not (raw / name).is_file()]
        if missing:
            raise ConfigError(f"data=ogb needs {', '.join(missing)} under {raw} (OGB's layout; nothing is "
                              f"downloaded here: copy the dataset's folder there)")
        splits = self.root / "split"
        types = sorted(p.name for p in splits.iterdir() if p.is_dir()) if splits.is_dir() else []
        if self.split_type == "auto":
            if len(types) != 1:
                raise ConfigError(f"data.split_type=auto needs exactly one folder under {splits}; found "
                                  f"{types or 'none'}: set data.split_type")
            chosen = splits / types[0]
        else:
            chosen = splits / self.split_type
            if not chosen.is_dir():
                raise ConfigError(f"data.split_type={self.split_type!r} is not a folder under {splits}; "
                                  f"allowed: {', '.join(types) or 'none found'}")
        missing = [f"{split}.csv.gz" for split in SPLITS if not (chosen / f"{split}.csv.gz").is_file()]
        if missing:
            raise ConfigError(f"{chosen} lacks {', '.join(missing)}")
        return raw, chosen

    def stored(self) -> Path:
        """The converted folder, converted first when it is not complete."""
        raw, split = self.source_files()
        digest = file_digest([raw / name for name in RAW_FILES] + [split / f"{s}.csv.gz" for s in SPLITS])
        folder = self.cache_dir / "ogb" / f"{self.name}-{digest}-{self.dtype}-{'sym' if self.symmetrize else 'dir'}"
        return build_once(folder, (*STORED_FILES, *(f"{s}.npy" for s in SPLITS)), lambda partial:
                          convert_ogb(raw, split, partial, self.dtype, self.symmetrize, progress=sys.stderr.isatty()))

    def split_index(self, folder: Path) -> dict[str, torch.Tensor]:
        """OGB's own training, validation and test nodes."""
        train, valid, test = (torch.from_numpy(np.load(folder / f"{s}.npy")).long() for s in SPLITS)
        return {"train_index": train, "test_index": test, "val_index": valid}

    def load_samples(self) -> Samples:
        samples = super().load_samples()
        check_class_ids(samples.y.numpy(), f"{self.name}'s node-label.csv.gz")
        return samples
