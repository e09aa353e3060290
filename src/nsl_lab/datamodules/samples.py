"""Mini-batch datamodules over a table of samples with an optional sample graph.

The shared part of the IMDB and bring-your-own-data datamodules: splits (a test set given
or carved, a validation set carved from training, ``label_frac`` on the rest), loaders,
and NSL-style neighbour packing, where each training batch carries the inputs of every
sample's top-``k`` graph neighbours.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from nsl_lab.batch import Batch, trim_padding
from nsl_lab.context import GraphData, LabeledSplits, Requirement
from nsl_lab.datamodules.generators import SeededGenerators
from nsl_lab.datamodules.label_fraction import check_label_setting, stratified_label_subset
from nsl_lab.errors import ConfigError, check_choice, check_flag, check_integer, check_range
from nsl_lab.files import default_cache_dir
from nsl_lab.graphs.build import EMBEDDING_BUILD, GraphSpec, load_graph, save_graph, similarity_graph
from nsl_lab.graphs.neighbors import NeighborGraph, Sampling
from nsl_lab.modules.backbone import InputKind


log = logging.getLogger(__name__)


@dataclass
class Samples:
    """Every sample of a dataset: inputs (a tensor or a :class:`~nsl_lab.graphs.store.FeatureStore`),
    labels (``-1`` = none) and, when the dataset fixes them, the test, validation and training
    rows (a labeled row in none of them is not trained on)."""

    x: Any
    y: torch.Tensor
    lengths: torch.Tensor | None = None
    test_index: torch.Tensor | None = None
    val_index: torch.Tensor | None = None
    train_index: torch.Tensor | None = None


def check_class_ids(y: np.ndarray, name: str) -> None:
    """Labels are -1 (none) or class ids 0..C-1 with every class present: a stray id (a typo,
    1e8) would otherwise add empty classes to the model, or exhaust memory making them."""
    if (y < -1).any():
        row = int(np.argmax(y < -1))
        raise ConfigError(f"{name} row {row} holds {int(y[row])}; allowed: class ids 0, 1, ... or -1 for unlabeled")
    ids = np.unique(y[y >= 0])
    if ids.size and ids[-1] != ids.size - 1:
        absent = int(np.argmax(ids != np.arange(ids.size)))
        row = int(np.argmax(y == ids[-1]))
        raise ConfigError(f"{name} holds class ids up to {int(ids[-1])} (row {row}) but {ids.size} distinct ones: "
                          f"class {absent} has no row; allowed: ids 0..C-1 with every class present")


def check_disjoint(samples: Samples, num_rows: int) -> None:
    """The dataset's own training, validation and test rows are disjoint (a test row that is
    also trained or validated on would inflate every figure)."""
    given = {name: index for name, index in (("train", samples.train_index), ("validation", samples.val_index),
                                             ("test", samples.test_index)) if index is not None}
    seen = torch.full((num_rows,), -1, dtype=torch.long)
    for number, (name, index) in enumerate(given.items()):
        earlier = seen[index]
        if (earlier >= 0).any():
            first = int(index[earlier >= 0][0])
            other = list(given)[int(earlier[earlier >= 0][0])]
            raise ConfigError(f"the dataset's {other} and {name} rows overlap ({int((earlier >= 0).sum())} rows, "
                              f"e.g. row {first}); the splits must be disjoint")
        seen[index] = number


def carve(rows: torch.Tensor, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rest, carved)``: a seeded random ``fraction`` of ``rows`` split off (sorted)."""
    order = rows[torch.randperm(rows.numel(), generator=generator)]
    count = int(round(fraction * rows.numel()))
    return order[count:].sort().values, order[:count].sort().values


class LabeledTopUpSampler(Sampler[list[int]]):
    """Shuffled batches of ``batch_size`` training rows, each topped up with
    ``labeled_per_batch`` labeled rows, as SSL methods pair every unlabeled batch with a
    labeled one (FixMatch, Sohn et al. 2020).

    With 1% of the rows labeled, a plain shuffle shows each labeled row once per epoch and
    most batches none at all; the top-up shows every batch some labels. The labeled rows are
    drawn in a seeded cycle: each once, in a fresh order, before any repeats. Yields positions
    into the training rows; an epoch is one pass over them.

    Args:
        num_rows: training rows (labeled or not).
        labeled: positions of the labeled ones among them.
        batch_size: shuffled training rows per batch (the last batch may hold fewer).
        labeled_per_batch: labeled rows added to each batch.
        generator: the seeded source of both orders.
    """

    def __init__(self, num_rows: int, labeled: torch.Tensor, batch_size: int, labeled_per_batch: int,
                 generator: torch.Generator) -> None:
        if labeled.numel() == 0:
            raise ConfigError("data.labeled_per_batch > 0 needs labeled training rows; there are none")
        self.num_rows, self.labeled, self.generator = num_rows, labeled, generator
        self.batch_size, self.labeled_per_batch = batch_size, labeled_per_batch
        #: labeled positions drawn for the coming batches (carried across epochs and checkpoints)
        self.cycle = torch.zeros(0, dtype=torch.long)

    def _draw_labeled(self) -> torch.Tensor:
        while self.cycle.numel() < self.labeled_per_batch:
            order = self.labeled[torch.randperm(self.labeled.numel(), generator=self.generator)]
            self.cycle = torch.cat([self.cycle, order])
        drawn, self.cycle = self.cycle[:self.labeled_per_batch], self.cycle[self.labeled_per_batch:]
        return drawn

    def __iter__(self):
        order = torch.randperm(self.num_rows, generator=self.generator)
        for batch in order.split(self.batch_size):
            yield torch.cat([batch, self._draw_labeled()]).tolist()

    def __len__(self) -> int:
        return -(-self.num_rows // self.batch_size)


class SampleDataModule(pl.LightningDataModule):
    """Base class: subclasses implement :meth:`load_samples` and :meth:`build_graph`.

    Splits: the test rows are ``Samples.test_index`` or a seeded ``test_frac`` of the
    labeled rows; the validation rows ``Samples.val_index`` or ``val_frac`` of the remaining
    labeled rows; ``label_frac``
    (stratified, seeded) of the rest keeps its labels. Training batches hold the labeled
    training rows and, with ``include_unlabeled``, every other non-evaluation row with
    ``y = -1`` (seeds for ``seeds: all``). Validation and test labels are never seen in
    training, but those rows stay graph nodes (transductive, features only).

    With ``neighbors = k > 0`` and a graph, each training batch packs the inputs of each
    sample's ``k`` neighbours (``neighbor_sampling``: ``top_k`` by weight or ``uniform``)
    as ``batch.neighbors`` plus ``batch.neighbor_weight [B, k]`` (0 = padding).

    With ``include_unlabeled`` and ``labeled_per_batch = m > 0``, every training batch also
    holds ``m`` labeled rows (:class:`LabeledTopUpSampler`).
    """

    input_kind: ClassVar[InputKind] = "features"
    preset: ClassVar[str | None] = None
    #: the graph a subclass builds when ``graph`` is not set
    default_graph: ClassVar[str] = "none"

    @classmethod
    def provides(cls, settings: Mapping[str, Any]) -> frozenset[Requirement]:
        """What training batches give a regularizer with these settings (``data.*``)."""
        graph = settings.get("graph") or cls.default_graph
        kind = graph.get("kind", "knn") if isinstance(graph, Mapping) else graph
        provided: set[Requirement] = set()
        if kind != "none":
            provided.add("graph")
            if settings.get("neighbors", 0):
                provided.add("neighbors")
        if settings.get("include_unlabeled", False):
            provided.add("unlabeled_in_batch")
        return frozenset(provided)

    @classmethod
    def check_label_free(cls, settings: Mapping[str, Any]) -> None:
        """Refuses settings (``data.*``) under which labels would choose the rows of a
        label-free pretraining: without ``include_unlabeled`` the training rows are the
        labeled ones (a ``label_frac`` of them), and ``labeled_per_batch`` adds labeled rows."""
        if not settings.get("include_unlabeled", False):
            raise ConfigError("data.include_unlabeled=false trains on the labeled rows only, so labels would choose "
                              "the rows of a label-free pretraining; set data.include_unlabeled=true (every "
                              "non-evaluation row, unlabeled)", "data.include_unlabeled")
        if settings.get("labeled_per_batch", 0):
            raise ConfigError(f"data.labeled_per_batch={settings['labeled_per_batch']} adds labeled rows to every "
                              "batch, which a label-free pretraining must not choose by label; set "
                              "data.labeled_per_batch=0", "data.labeled_per_batch")

    def __init__(
        self,
        cache_dir: str | None = None,
        label_frac: float | None = None,
        val_frac: float = 0.1,
        test_frac: float = 0.2,
        seed: int = 0,
        graph: "str | dict | GraphSpec | None" = None,
        neighbors: int = 0,
        neighbor_sampling: str = "top_k",
        include_unlabeled: bool = False,
        labeled_per_batch: int = 0,
        batch_size: int = 64,
        eval_batch_size: int = 512,
    ) -> None:
        super().__init__()
        check_label_setting(label_frac, None)
        check_range("data.val_frac", val_frac, 0.0, 1.0, high_inclusive=False)
        check_range("data.test_frac", test_frac, 0.0, 1.0, high_inclusive=False)
        check_integer("data.neighbors", neighbors, 0)
        check_integer("data.batch_size", batch_size, 1)
        check_integer("data.labeled_per_batch", labeled_per_batch, 0)
        check_integer("seed", seed, 0)
        if labeled_per_batch and not include_unlabeled:
            raise ConfigError(f"data.labeled_per_batch={labeled_per_batch} needs data.include_unlabeled=true "
                              "(without unlabeled rows every training row is labeled already); allowed: 0 or "
                              "include_unlabeled=true")
        check_integer("data.eval_batch_size", eval_batch_size, 1)
        check_choice("data.neighbor_sampling", neighbor_sampling, Sampling)
        self.cache_dir = Path(cache_dir or default_cache_dir()).expanduser()
        self.label_frac, self.val_frac, self.test_frac, self.seed = label_frac, val_frac, test_frac, int(seed)
        self.graph_spec = GraphSpec.parse(dict(graph) if hasattr(graph, "items") else graph)
        self.num_neighbors, self.neighbor_sampling = int(neighbors), neighbor_sampling
        self.include_unlabeled, self.labeled_per_batch = check_flag("data.include_unlabeled", include_unlabeled), int(labeled_per_batch)
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.graph: NeighborGraph | None = None
        self._ready = False
        # Shuffling (and the labeled top-up) and neighbour sampling draw from their own generators.
        self.generators = SeededGenerators({"shuffle": self.seed, "neighbors": self.seed + 1})
        self._top_up: LabeledTopUpSampler | None = None
        self._restored_cycle: torch.Tensor | None = None

    # -- for subclasses ------------------------------------------------------------------
    def load_samples(self) -> Samples:  # pragma: no cover - interface
        raise NotImplementedError

    def build_graph(self, samples: Samples) -> NeighborGraph | None:  # pragma: no cover - interface
        raise NotImplementedError

    def cached_similarity_graph(self, name: str, embed, num_nodes: int, **context) -> NeighborGraph:
        """A knn graph from ``embed()`` (called only on a cache miss), cached under its
        parameters and ``context`` (a digest of the data it was built from); an unreadable
        entry is rebuilt."""
        spec = self.graph_spec
        key = spec.key(num_nodes=num_nodes, build=EMBEDDING_BUILD, **context)
        path = self.cache_dir / "graphs" / f"{name}-{key}.pt"
        stored = None
        if path.is_file():
            try:
                stored = load_graph(path)
            except Exception as error:  # noqa: BLE001 - a damaged cache entry is rebuilt, never trusted
                log.warning("the cached graph %s is unreadable (%s): rebuilding it", path, error)
        if stored is not None:
            edge_index, edge_weight, _, _ = stored
        else:
            embeddings = embed()
            edge_index, edge_weight = similarity_graph(
                embeddings, spec.k, spec.threshold, spec.method, spec.block_size, progress=sys.stderr.isatty()
            )
            save_graph(path, edge_index, edge_weight, len(embeddings), {**vars(spec), **context})
        # The embedded rows are the first samples; any later ones (e.g. test rows) stay isolated.
        return NeighborGraph(edge_index, num_nodes, edge_weight)

    # -- splits --------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        samples = self.load_samples()
        generator = torch.Generator().manual_seed(self.seed)
        y = samples.y.long()
        has_label = y >= 0
        if samples.test_index is None:
            pool, test = carve(has_label.nonzero().flatten(), self.test_frac, generator)
        else:
            test = samples.test_index
            is_test = torch.zeros_like(has_label)
            is_test[test] = True
            pool = (has_label & ~is_test).nonzero().flatten()
        if samples.val_index is None:
            train_pool, val = carve(pool, self.val_frac, generator)
        else:
            val = samples.val_index
            is_val = torch.zeros_like(has_label)
            is_val[val] = True
            train_pool = pool[~is_val[pool]]
        check_disjoint(samples, y.numel())
        if samples.train_index is not None:
            in_train = torch.zeros_like(has_label)
            in_train[samples.train_index] = True
            train_pool = train_pool[in_train[train_pool]]
        if train_pool.numel() == 0:
            raise ConfigError("no labeled training samples are left after the validation and test splits")
        if self.label_frac is None or self.label_frac == 1.0:
            labeled = train_pool
        else:
            labeled = stratified_label_subset(y, train_pool, self.seed, self.label_frac)
        evaluation = torch.zeros_like(has_label)
        evaluation[val], evaluation[test] = True, True
        if self.include_unlabeled:
            train_rows = (~evaluation).nonzero().flatten()
        else:
            train_rows = labeled
        self.samples = samples
        self.y_train = torch.full_like(y, -1)
        self.y_train[labeled] = y[labeled]
        self.y_val = torch.full_like(y, -1)
        self.y_val[val] = y[val]
        self.y_test = torch.full_like(y, -1)
        self.y_test[test] = y[test]
        self.rows = {"train": train_rows, "val": val, "test": test}
        self.labeled_index, self.n_labeled = labeled, int(labeled.numel())
        self._pool = train_pool
        self.num_classes = int(y.max()) + 1
        self.graph = self.build_graph(samples)
        self._ready = True

    # -- batches -------------------------------------------------------------------------
    def graph_data(self) -> GraphData:
        """The sample graph, every row's training label and a way to batch any rows."""
        return GraphData(self.graph, self.y_train, self.num_classes, dict(self.rows),
                         batch_rows=lambda rows: self.rows_batch(rows, self.y_train),
                         eval_batch_size=self.eval_batch_size)

    def labeled_splits(self) -> LabeledSplits:
        """Every row's label, the labeled training pool (a label fraction of it is drawn as
        :meth:`setup` draws ``label_frac``) and the validation and test rows of this seed's
        split; every row in batches of ``eval_batch_size``, unlabeled."""
        y = self.samples.y.long()
        unlabeled = torch.full_like(y, -1)

        def batches():  # the rows a probe reads only (not the unlabeled rest of the pool)
            wanted = torch.cat([self._pool, self.rows["val"], self.rows["test"]]).unique()
            for rows in wanted.split(self.eval_batch_size):
                yield self.rows_batch(rows, unlabeled)

        return LabeledSplits(y, self._pool, self.rows["val"], self.rows["test"], batches=batches)

    def rows_batch(self, index: torch.Tensor, y: torch.Tensor) -> Batch:
        lengths = None if self.samples.lengths is None else self.samples.lengths[index]
        return Batch(x=trim_padding(self.samples.x[index], lengths), y=y[index], index=index, lengths=lengths)

    def collate(self, items: list[torch.Tensor], stage: str, generator: torch.Generator | None = None) -> Batch:
        index = torch.stack(items).long()
        labels = {"train": self.y_train, "val": self.y_val, "test": self.y_test}[stage]
        batch = self.rows_batch(index, labels)
        if stage == "train" and self.num_neighbors and self.graph is not None:
            ids, weight = self.graph.neighbors(index, self.num_neighbors, self.neighbor_sampling, generator)
            # Padding slots point at the sample itself; their weight is exactly 0.
            ids = torch.where(ids >= 0, ids, index[:, None])
            batch.neighbors = self.rows_batch(ids.reshape(-1), self.y_train)
            batch.neighbor_weight = weight
        return batch

    def _loader(self, stage: str) -> DataLoader:
        train = stage == "train"
        generators = self.generators.reset() if train else {}
        generator = generators.get("shuffle")
        collate = partial(self.collate, stage=stage, generator=generators.get("neighbors"))
        if train and self.labeled_per_batch:
            rows = self.rows["train"]
            self._top_up = LabeledTopUpSampler(rows.numel(), (self.y_train[rows] >= 0).nonzero().flatten(),
                                               self.batch_size, self.labeled_per_batch, generator)
            if self._restored_cycle is not None:
                self._top_up.cycle, self._restored_cycle = self._restored_cycle, None
            return DataLoader(rows, batch_sampler=self._top_up, collate_fn=collate, pin_memory=self.pin_memory)
        return DataLoader(
            self.rows[stage], batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train,
            generator=generator, collate_fn=collate, pin_memory=self.pin_memory,
        )

    @property
    def pin_memory(self) -> bool:
        """Batches gathered into page-locked memory when they go to a GPU (one async copy each)."""
        trainer = getattr(self, "trainer", None)
        return bool(trainer is not None and getattr(trainer.strategy.root_device, "type", "cpu") == "cuda")

    def state_dict(self) -> dict[str, Any]:
        """Generator states (and the labeled top-up's cycle) for checkpoints."""
        state: dict[str, Any] = {"generators": self.generators.state_dict()}
        if self._top_up is not None:
            state["top_up_cycle"] = self._top_up.cycle
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generators.load_state_dict(state["generators"])
        self._restored_cycle = state.get("top_up_cycle")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
