"""scikit-learn's digits as a semi-supervised graph dataset: every image a node of a kNN graph
over pixels, the unlabeled images in the training batches (label-fraction studies)."""
from __future__ import annotations

import hashlib
from typing import ClassVar

import torch

from nsl_lab.datamodules.images import load_digits_split
from nsl_lab.datamodules.samples import SampleDataModule, Samples
from nsl_lab.errors import ConfigError, check_integer
from nsl_lab.graphs.build import dense_embeddings
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.modules.backbone import InputKind


class DigitsGraphDataModule(SampleDataModule):
    """The 8x8 digits (``[N, 1, 8, 8]`` pixels in ``[0, 1]``) with a sample graph, in the
    mini-batches of :class:`SampleDataModule`.

    The test images are :class:`~nsl_lab.datamodules.DigitsDataModule`'s (the same seeded
    draw of ``test_size``), so figures compare across the two. They are the last rows and
    stay out of the graph: the kNN graph (``graph.embedding``: ``pixels`` or ``pca``, cosine
    similarity) is built over the other images only, so no test image shapes training.
    ``val_frac`` of the rest is validation (seeded by ``seed``; graph nodes, labels unseen),
    ``label_frac`` of the remainder keeps its labels, and with ``include_unlabeled`` every
    other non-evaluation image joins the training batches with ``y = -1``.

    Args:
        test_size: test images.
        split_seed: seed of the test draw (fixed across ``seed``).
        **kwargs: see :class:`SampleDataModule` (``test_frac`` is unused: the test set is given).
    """

    input_kind: ClassVar[InputKind] = "images"
    preset = "digits_label_frac"
    default_graph = "knn"

    def __init__(self, test_size: int = 360, split_seed: int = 0, graph=None, **kwargs) -> None:
        super().__init__(graph=graph if graph is not None else {"kind": "knn", "embedding": "pixels"}, **kwargs)
        check_integer("data.test_size", test_size, 1)
        check_integer("data.split_seed", split_seed, 0)
        if self.graph_spec.kind not in ("none", "knn"):
            raise ConfigError(f"data.graph.kind={self.graph_spec.kind!r} is not available for digits; "
                              "allowed: 'none', 'knn'")
        if self.graph_spec.kind == "knn" and self.graph_spec.embedding not in ("pixels", "pca"):
            raise ConfigError(f"data.graph.embedding={self.graph_spec.embedding!r} does not apply to images; "
                              "allowed: 'pixels', 'pca'")
        self.test_size, self.split_seed = int(test_size), int(split_seed)

    def load_samples(self) -> Samples:
        x, y, rest, test = load_digits_split(self.test_size, self.split_seed)
        order = torch.cat([rest, test])  # test rows last: outside the graph's embedded rows
        self.num_features, self.image_shape = 1, tuple(x.shape[1:])
        self._graph_rows = rest.numel()
        return Samples(x=x[order].contiguous(), y=y[order], test_index=torch.arange(rest.numel(), len(order)))

    def build_graph(self, samples: Samples) -> NeighborGraph | None:
        spec = self.graph_spec
        if spec.kind == "none":
            return None
        pixels = samples.x[: self._graph_rows]
        digest = hashlib.sha1(pixels.numpy().tobytes()).hexdigest()[:16]
        return self.cached_similarity_graph(
            "digits", lambda: dense_embeddings(pixels, spec.embedding, spec.dim), len(samples.y), data=digest
        )
