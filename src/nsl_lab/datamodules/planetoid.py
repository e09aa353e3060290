"""Cora and CiteSeer citation graphs (Planetoid), trained full-graph."""
from __future__ import annotations

import fcntl
import logging
import pickle
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from nsl_lab.batch import Batch
from nsl_lab.context import GraphData, LabeledSplits, Requirement
from nsl_lab.datamodules.label_fraction import LabelSampling, check_label_setting, label_subset
from nsl_lab.errors import ConfigError, check_choice, check_integer
from nsl_lab.files import default_cache_dir, file_digest, save_tensors
from nsl_lab.modules.backbone import InputKind
from nsl_lab.graphs.build import GraphSpec, dense_embeddings, similarity_graph
from nsl_lab.graphs.neighbors import NeighborGraph

PlanetoidName = Literal["Cora", "CiteSeer"]
RAW_PARTS = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
TENSORS_FILE = "nsl_lab_tensors.pt"

log = logging.getLogger(__name__)


def _single_batch(batch: Batch) -> DataLoader:
    # batch_size=None hands the one item through unchanged.
    return DataLoader([batch], batch_size=None, collate_fn=_identity)


def _identity(item: Batch) -> Batch:
    return item


@dataclass
class PlanetoidTensors:
    """What nsl_lab uses of torch-geometric's Planetoid graph, cached as plain tensors."""

    x: torch.Tensor
    y: torch.Tensor
    edge_index: torch.Tensor
    train_mask: torch.Tensor
    val_mask: torch.Tensor
    test_mask: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[0])

    def check(self) -> None:
        """Shapes that agree, node ids in range: a damaged entry fails here, not in training."""
        n = self.num_nodes
        if not (self.y.shape == (n,) and all(m.shape == (n,) and m.dtype == torch.bool
                                             for m in (self.train_mask, self.val_mask, self.test_mask))):
            raise ValueError("features, labels and split masks disagree in size")
        if self.edge_index.dim() != 2 or self.edge_index.shape[0] != 2 or (
                self.edge_index.numel() and not 0 <= int(self.edge_index.min()) <= int(self.edge_index.max()) < n):
            raise ValueError("edge_index is not [2, E] over the nodes")


def corrupt_raw_error(name: str, source: Path, error: BaseException) -> ConfigError:
    """Names the raw file that does not read (each pickled file is read as torch-geometric
    reads it), or reports ``error`` when every file reads on its own."""
    for file in raw_files(name):
        path = source / file
        try:
            if file.endswith("test.index"):
                [int(line) for line in path.read_text().split()]
            else:
                with path.open("rb") as handle:
                    pickle.load(handle, encoding="latin1")  # noqa: S301 - as torch-geometric reads them
        except Exception as file_error:  # noqa: BLE001
            return ConfigError(f"Planetoid {name} raw file {path} is corrupt or truncated "
                               f"({type(file_error).__name__}: {file_error}); re-copy it from the Planetoid release")
    return ConfigError(f"Planetoid {name} raw files in {source} could not be read ({type(error).__name__}: {error}); "
                       "re-copy them from the Planetoid release")


def raw_files(name: str) -> list[str]:
    return [f"ind.{name.lower()}.{part}" for part in RAW_PARTS]


class PlanetoidDataModule(pl.LightningDataModule):
    """A Planetoid citation graph with a configurable share of labeled training nodes.

    Features of every node and the natural citation graph are used in training
    (transductive, as GCN and Graph-MLP); labels only on the chosen training nodes.
    Validation and test use Planetoid's public 500 / 1000 nodes. The training pool is
    every node outside them; ``label_frac`` keeps labels on a stratified, seeded fraction
    of it (at least one per class), ``labels_per_class`` on a fixed count per class, and
    neither means Planetoid's public split (20 per class). Each stage is one batch holding
    the whole graph.

    The raw files are read from ``<data_dir>/planetoid/<name>/raw`` (read-only) and processed
    once by torch-geometric in a scratch folder; the result is cached as plain tensors under
    ``<cache_dir>/planetoid/<name>-<digest of the raw files' content>``, written atomically and
    checked when read, so a corrupt or changed raw file is never served from the cache.

    Args:
        name: ``Cora`` or ``CiteSeer``.
        data_dir: the data root.
        cache_dir: where processed files go (default ``$NSL_LAB_CACHE`` or ``~/.cache/nsl_lab``).
        label_frac: fraction of the training pool that keeps labels, in ``(0, 1]``.
        labels_per_class: alternatively, labeled nodes per class drawn from the pool.
        label_sampling: ``stratified`` (``label_frac`` of each class, at least one each) or
            ``uniform`` (``label_frac`` of the pool drawn uniformly, as some papers do; a class
            left without a label stops the run with one line).
        seed: seed of the label draw.
        graph: ``natural`` (the citation graph), ``knn`` or a :class:`~nsl_lab.graphs.build.GraphSpec`
            mapping such as ``{kind: knn, k: 10, embedding: features}`` (a cosine kNN graph
            synthesized from the node features, ``features`` or ``pca``, instead of the citations).
        normalize_features: divide each feature row by its sum, as GCN.
        transductive: when false, edges touching validation or test nodes are dropped.
        sparse_features: hand features over as a sparse COO tensor (much faster for
            bag-of-words; backbones that need dense inputs call ``.to_dense()``).
        download: fetch the raw files with torch-geometric when they are missing.
    """

    input_kind: ClassVar[InputKind] = "features"
    preset: ClassVar[str | None] = "cora_public"

    @classmethod
    def provides(cls, settings: Mapping[str, Any]) -> frozenset[Requirement]:
        """Every stage is one batch holding the whole graph, unlabeled nodes included."""
        return frozenset({"graph", "batch_graph", "neighbors", "unlabeled_in_batch"})

    def __init__(
        self,
        name: PlanetoidName = "Cora",
        data_dir: str = "data",
        cache_dir: str | None = None,
        label_frac: float | None = None,
        labels_per_class: int | None = None,
        label_sampling: LabelSampling = "stratified",
        seed: int = 0,
        graph: "str | dict" = "natural",
        normalize_features: bool = True,
        transductive: bool = True,
        sparse_features: bool = True,
        download: bool = True,
    ) -> None:
        super().__init__()
        check_choice("data.name", name, PlanetoidName)
        given = dict(graph) if hasattr(graph, "items") else {}
        self.graph_spec = GraphSpec.parse(given or graph)
        check_choice("data.graph.kind", self.graph_spec.kind, ("natural", "knn"))
        if self.graph_spec.kind == "knn":
            if "embedding" not in given:  # node features, not GraphSpec's text default
                self.graph_spec = replace(self.graph_spec, embedding="features")
            check_choice("data.graph.embedding", self.graph_spec.embedding, ("features", "pca"))
        check_label_setting(label_frac, labels_per_class)
        check_choice("data.label_sampling", label_sampling, LabelSampling)
        if label_sampling == "uniform" and label_frac is None:
            raise ConfigError("data.label_sampling=uniform draws data.label_frac of the training pool; set "
                              "data.label_frac (labels_per_class and the public split are per class)")
        check_integer("seed", seed, 0)
        self.label_sampling = label_sampling
        self.name, self.data_dir = name, Path(data_dir).expanduser()
        self.cache_dir = Path(cache_dir or default_cache_dir()).expanduser()
        self.label_frac, self.labels_per_class, self.seed = label_frac, labels_per_class, int(seed)
        self.normalize_features = normalize_features
        self.transductive, self.download = transductive, download
        self.sparse_features = sparse_features
        self._batches: dict[str, Batch] | None = None
        self._scored: dict[str, Batch] = {}

    # -- loading -------------------------------------------------------------------------
    def _raw_source(self) -> Path | None:
        raw = self.data_dir / "planetoid" / self.name / "raw"
        if all((raw / f).is_file() for f in raw_files(self.name)):
            return raw
        return None

    def _missing_data_error(self, reason: str = "") -> ConfigError:
        where = self.data_dir / "planetoid" / self.name / "raw"
        return ConfigError(
            f"Planetoid {self.name} raw files not found: put {', '.join(raw_files(self.name))} in {where} "
            f"(set the data root with paths.data_dir=... or NSL_LAB_DATA){reason}"
        )

    def _load(self) -> "PlanetoidTensors":
        if not self.data_dir.is_dir():
            raise self._missing_data_error(f"; the data root {self.data_dir} does not exist")
        source = self._raw_source()
        if source is None and not self.download:
            raise self._missing_data_error()
        # Keyed by the raw files' content: a changed data root is never served an old entry.
        key = file_digest(source / f for f in raw_files(self.name)) if source is not None else "downloaded"
        root = self.cache_dir / "planetoid"
        root.mkdir(parents=True, exist_ok=True)
        # Parallel jobs (joblib, submitit) share the cache: one at a time processes.
        with open(root / f".{self.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            tensors = root / f"{self.name}-{key}" / TENSORS_FILE
            cached = self._read_cached(tensors)
            if cached is not None:
                return cached
            loaded = self._process(source, root)
            save_tensors(tensors, asdict(loaded))  # atomic, and written only once it is valid
            return loaded

    def _read_cached(self, path: Path) -> "PlanetoidTensors | None":
        """The cached tensors (plain tensors: no torch-geometric import, ~0.5 s of every start),
        or ``None`` when absent or unreadable (then they are built again)."""
        if not path.is_file():
            return None
        try:
            loaded = PlanetoidTensors(**torch.load(path, weights_only=True))
            loaded.check()
            return loaded
        except Exception as error:  # noqa: BLE001 - a damaged cache entry is rebuilt, never trusted
            log.warning("the cached %s tensors at %s are unreadable (%s): rebuilding them", self.name, path, error)
            path.unlink(missing_ok=True)
            return None

    def _process(self, source: Path | None, root: Path) -> "PlanetoidTensors":
        """Reads the raw files with torch-geometric in a scratch folder of the cache."""
        from torch_geometric.datasets import Planetoid  # here only: a cached run never imports it

        staging = Path(tempfile.mkdtemp(prefix=f".{self.name}-", dir=root))
        try:
            if source is not None:
                shutil.copytree(source, staging / self.name / "raw")
            try:
                data = Planetoid(str(staging), name=self.name)[0]
            except Exception as error:  # noqa: BLE001 - named below in one line
                if source is None:  # no network, or the mirror is down
                    raise self._missing_data_error(f" and the download failed ({error})") from None
                raise corrupt_raw_error(self.name, source, error) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        loaded = PlanetoidTensors(**{f.name: getattr(data, f.name) for f in fields(PlanetoidTensors)})
        loaded.check()
        return loaded

    # -- Lightning hooks -----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._batches is not None:
            return
        data = self._load()
        x = data.x
        if self.normalize_features:
            x = x / x.sum(1, keepdim=True).clamp_min(1.0)
        if self.sparse_features:
            x = x.to_sparse().coalesce()
        labels = data.y
        evaluation = data.val_mask | data.test_mask
        if self.label_frac is None and self.labels_per_class is None:
            labeled = data.train_mask.nonzero().flatten()
        else:
            labeled = label_subset(labels, ~evaluation, self.seed, self.label_frac, self.labels_per_class,
                                   self.label_sampling)
        edge_index, edge_weight = data.edge_index, torch.ones(data.edge_index.shape[1])
        if self.graph_spec.kind == "knn":
            spec = self.graph_spec
            embeddings = dense_embeddings(data.x, spec.embedding, spec.dim, seed=0)
            edge_index, edge_weight = similarity_graph(embeddings, spec.k, spec.threshold, spec.method, spec.block_size)
        if not self.transductive:
            keep = ~(evaluation[edge_index[0]] | evaluation[edge_index[1]])
            edge_index, edge_weight = edge_index[:, keep], edge_weight[keep]
        self.graph = NeighborGraph(edge_index, data.num_nodes, edge_weight)
        self.num_features, self.num_classes = int(x.shape[1]), int(labels.max()) + 1
        self.num_nodes, self.n_labeled = int(data.num_nodes), int(labeled.numel())
        self.labeled_index = labeled
        # For probes after label-free pretraining (labeled_splits): every label, the pool, the public split.
        self._labels, self._pool = labels, (~evaluation).nonzero().flatten()
        self._public = data.train_mask.nonzero().flatten()
        index = torch.arange(self.num_nodes)

        def stage_batch(nodes: torch.Tensor) -> Batch:
            y = torch.full_like(labels, -1)
            y[nodes] = labels[nodes]
            return Batch(x=x, y=y, index=index, graph=self.graph)

        self._batches = {
            "train": stage_batch(labeled),
            "val": stage_batch(data.val_mask.nonzero().flatten()),
            "test": stage_batch(data.test_mask.nonzero().flatten()),
        }

    def graph_data(self) -> GraphData:
        """The citation (or kNN) graph and every node's training label; every training batch
        is the whole graph."""
        rows = {"train": torch.arange(self.num_nodes),  # the training batch is every node
                **{stage: self._batches[stage].labeled.nonzero().flatten() for stage in ("val", "test")}}
        train = self._batches["train"]
        return GraphData(self.graph, train.y, self.num_classes, rows, full_batch=True, features=train.x)

    def labeled_splits(self) -> LabeledSplits:
        """Every node's label, the pool outside validation and test, and the public split (the
        ``standard`` setting of probes); one batch of every node, unlabeled."""
        unlabeled = replace(self._batches["train"], y=torch.full_like(self._labels, -1))
        return LabeledSplits(self._labels, self._pool, *(self._batches[stage].labeled.nonzero().flatten()
                                                         for stage in ("val", "test")),
                             batches=lambda: [unlabeled], standard=self._public, label_sampling=self.label_sampling)

    def _scored_rows(self, stage: str) -> Batch:
        """The stage's batch cut to its labeled rows.

        Validation runs every epoch; the backbone sees each node's features only (never the
        graph), so in eval mode a node's logits do not depend on the other rows: the 500
        validation rows give the accuracy of the full-graph batch at a fifth of the cost.
        """
        if stage not in self._scored:
            batch = self._batches[stage]
            rows = batch.labeled.nonzero().flatten()
            x = batch.x.index_select(0, rows).coalesce() if batch.x.is_sparse else batch.x[rows]
            self._scored[stage] = replace(batch, x=x, y=batch.y[rows], index=batch.index[rows])
        return self._scored[stage]

    def train_dataloader(self) -> DataLoader:
        return _single_batch(self._batches["train"])

    def val_dataloader(self) -> DataLoader:
        return _single_batch(self._scored_rows("val"))

    def test_dataloader(self) -> DataLoader:
        return _single_batch(self._batches["test"])

    def __repr__(self) -> str:
        setting = (
            f"label_frac={self.label_frac}" if self.label_frac is not None
            else f"labels_per_class={self.labels_per_class}" if self.labels_per_class is not None
            else "public split"
        )
        return f"{self.__class__.__name__}({self.name!r}, {setting}, seed={self.seed})"
