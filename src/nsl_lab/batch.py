"""The batch contract between datamodules and the learner / regularizers."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from nsl_lab.graphs.neighbors import NeighborGraph


def trim_padding(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Drops the padding columns of token rows beyond the longest of ``lengths``."""
    if lengths is None or not lengths.numel():
        return x
    return x[:, : int(lengths.max())]


@dataclass
class Batch:
    """A batch of samples.

    Attributes:
        x: model inputs (features, pixels or token ids), first dimension = samples.
        y: class labels, ``-1`` where a sample is unlabeled (or not scored in this stage).
        index: row ids of the samples in their dataset, so a graph can find their neighbours.
        lengths: sequence lengths for padded token inputs.
        graph: the sample graph when ``x`` holds every node of it (full-graph training).
        neighbors: the graph neighbours' inputs packed into the batch (NSL-style mini-batch
            graph regularization): a batch of ``B * k`` rows, ``k`` per sample in order.
        neighbor_weight: ``[B, k]`` edge weights of the packed neighbours, exactly 0 for padding.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    lengths: torch.Tensor | None = None
    graph: NeighborGraph | None = None
    neighbors: "Batch | None" = None
    neighbor_weight: torch.Tensor | None = None

    @property
    def labeled(self) -> torch.Tensor:
        """Boolean mask of the samples that carry a label."""
        return self.y >= 0

    def to(self, device: torch.device | str) -> "Batch":
        # Lightning moves any object with ``.to``; tensors and the graph travel together.
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if getattr(self, f.name) is not None
        }
        return replace(self, **moved)

    def pin_memory(self) -> "Batch":
        """Page-locked copies of the batch's tensors (DataLoader ``pin_memory=True``), so the
        move to a GPU is one asynchronous copy; the graph stays where it is."""
        pinned = {
            f.name: getattr(self, f.name).pin_memory()
            for f in fields(self)
            if getattr(self, f.name) is not None and f.name != "graph"
        }
        return replace(self, **pinned)

    def __len__(self) -> int:
        return int(self.x.shape[0])
