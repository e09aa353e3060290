"""The shared part of the large-graph datamodules: one cached folder holding a feature store,
labels and CSR graph files, read without copying the features."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from nsl_lab.datamodules.samples import SampleDataModule, Samples
from nsl_lab.errors import ConfigError, check_choice
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.graphs.store import CSR_FILES, FeatureStore, load_csr
from nsl_lab.modules.backbone import InputKind

#: the files every stored-graph folder holds
STORED_FILES = ("features.npy", "labels.npy", *CSR_FILES)


class StoredGraphDataModule(SampleDataModule):
    """Base class: a subclass implements :meth:`stored` (its folder, built first when needed)
    and, when its dataset fixes them, :meth:`split_index`. Features are read through a
    memory-mapped :class:`~nsl_lab.graphs.store.FeatureStore` (each batch gathers only its
    rows and its neighbours'), the CSR graph is loaded into memory. ``graph``: ``natural``
    (the stored graph, default) or ``none``."""

    input_kind: ClassVar[InputKind] = "features"
    preset = "large_graph"
    default_graph = "natural"

    def __init__(self, graph: Any = "natural", **kwargs) -> None:
        super().__init__(graph=graph, **kwargs)
        check_choice("data.graph.kind", self.graph_spec.kind, ("natural", "none"))

    def stored(self) -> Path:  # pragma: no cover - interface
        raise NotImplementedError

    def split_index(self, folder: Path) -> dict[str, torch.Tensor]:
        """``test_index`` / ``val_index`` of :class:`Samples` when the dataset fixes its split."""
        return {}

    def load_samples(self) -> Samples:
        folder = self._folder = self.stored()
        store = FeatureStore(folder / "features.npy")
        labels = np.load(folder / "labels.npy", allow_pickle=False)
        if len(labels) != len(store):
            raise ConfigError(f"{folder} holds {len(labels)} labels for {len(store)} feature rows; delete it to rebuild")
        self.num_features = store.shape[1]
        return Samples(x=store, y=torch.from_numpy(labels).long(), **self.split_index(folder))

    def build_graph(self, samples: Samples) -> NeighborGraph | None:
        if self.graph_spec.kind == "none":
            return None
        graph = load_csr(self._folder)
        if graph.num_nodes != len(samples.y):
            raise ConfigError(f"{self._folder} holds a graph of {graph.num_nodes} nodes for {len(samples.y)} samples; "
                              "delete it to rebuild")
        return graph
