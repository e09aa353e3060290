"""A seeded stochastic-block-model graph with class-dependent Gaussian features, of any size,
generated straight into a feature store and a CSR graph on disk."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from nsl_lab.datamodules.stored_graph import STORED_FILES, StoredGraphDataModule
from nsl_lab.errors import ConfigError, check_choice, check_integer, check_range
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.graphs.store import StoreDtype, build_once, save_csr, write_features

#: rows of features drawn at a time (bounds the generator's memory at block x feature_dim)
BLOCK_ROWS = 65536
GENERATOR_VERSION = 1


def check_settings(num_nodes: int, avg_degree: float, num_classes: int, feature_dim: int, homophily: float,
                   class_separation: float, dtype: str, seed: int) -> None:
    """One line naming the first bad setting of :func:`generate_synthetic_graph`."""
    check_integer("data.num_nodes", num_nodes, 2)
    # Pairs are drawn with replacement: a degree near N - 1 would be mostly repeated pairs.
    check_range("data.avg_degree", avg_degree, 0.0, (num_nodes - 1) / 2 if isinstance(num_nodes, int) else None)
    check_integer("data.num_classes", num_classes, 2)
    check_integer("data.feature_dim", feature_dim, 1)
    check_range("data.homophily", homophily, 0.0, 1.0)
    check_range("data.class_separation", class_separation, 0.0)
    check_choice("data.dtype", dtype, StoreDtype)
    check_integer("data.graph_seed", seed, 0)


def draw_labels_and_means(rng: np.random.Generator, num_nodes: int, num_classes: int, feature_dim: int,
                          class_separation: float) -> tuple[np.ndarray, np.ndarray]:
    """The generator's first draws: every node's class ``[N]`` and the class means ``[C, d]``."""
    labels = rng.integers(0, num_classes, num_nodes)
    scale = class_separation / np.sqrt(2 * feature_dim)
    return labels, rng.standard_normal((num_classes, feature_dim)).astype(np.float32) * scale


def feature_bayes_accuracy(num_nodes: int, num_classes: int = 10, feature_dim: int = 128,
                           class_separation: float = 4.0, seed: int = 0, samples: int = 200_000) -> float:
    """The best accuracy any classifier of a node's own features can reach on
    :func:`generate_synthetic_graph`'s data (same settings and ``seed``): the Bayes-optimal
    rule, the nearest true class mean (equal priors, identity noise), scored by Monte Carlo on
    ``samples`` fresh nodes (standard error below 0.1 point at the default). A model that needs
    no graph at inference, however it was trained, cannot beat it in expectation."""
    _, means = draw_labels_and_means(np.random.default_rng(seed), num_nodes, num_classes, feature_dim,
                                     class_separation)
    rng = np.random.default_rng([seed, 1])
    correct = 0
    for first in range(0, samples, BLOCK_ROWS):
        count = min(BLOCK_ROWS, samples - first)
        y = rng.integers(0, num_classes, count)
        x = means[y] + rng.standard_normal((count, feature_dim), dtype=np.float32)
        # argmin_c |x - mu_c|^2 = argmax_c (x . mu_c - |mu_c|^2 / 2)
        correct += int(((x @ means.T - 0.5 * (means ** 2).sum(1)).argmax(1) == y).sum())
    return correct / samples


def generate_synthetic_graph(
    folder: str | Path,
    num_nodes: int,
    avg_degree: float = 10.0,
    num_classes: int = 10,
    feature_dim: int = 128,
    homophily: float = 0.8,
    class_separation: float = 4.0,
    dtype: StoreDtype = "float32",
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    r"""Writes ``features.npy`` ``[N, d]``, ``labels.npy`` ``[N]`` and the CSR graph
    (``indptr.npy``, ``indices.npy``, ``weight.npy``) into ``folder``; returns their summary.

    Labels are uniform over the classes. Features: :math:`x_i = \mu_{y_i} + \varepsilon_i`,
    :math:`\varepsilon_i \sim \mathcal N(0, I_d)`, class means :math:`\mu_c \sim \mathcal N(0,
    \sigma^2 I_d)` with :math:`\sigma = s / \sqrt{2d}`, so two class means lie
    ``class_separation`` = :math:`s` noise standard deviations apart on average. Edges: ``N *
    avg_degree / 2`` undirected pairs, each from a uniform node to a uniform node of the same
    class with probability ``homophily`` and of another class otherwise (so the share of
    same-class edges is ``homophily``), stored in both directions with weight 1; self-loops
    are dropped. Features are drawn in blocks of rows, never all of them in memory at once; the
    edges as a few integer vectors of ``N * avg_degree`` entries.
    """
    check_settings(num_nodes, avg_degree, num_classes, feature_dim, homophily, class_separation, dtype, seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    labels, means = draw_labels_and_means(rng, num_nodes, num_classes, feature_dim, class_separation)
    np.save(folder / "labels.npy", labels)
    features = write_features(folder / "features.npy", num_nodes, feature_dim, dtype)
    blocks = range(0, num_nodes, BLOCK_ROWS)
    for first in tqdm(blocks, desc="features", unit="block", disable=not progress):
        rows = labels[first:first + BLOCK_ROWS]
        features[first:first + len(rows)] = means[rows] + rng.standard_normal((len(rows), feature_dim), dtype=np.float32)
    features.flush()
    del features
    # Edges: a uniform source, then a uniform member of its class (or of another class).
    pairs = int(round(num_nodes * avg_degree / 2))
    members = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise ConfigError(f"data.num_nodes={num_nodes} left class {int(np.argmin(counts))} without a node; "
                          f"use more nodes or fewer classes (data.num_classes={num_classes})")
    class_start = np.concatenate([[0], np.cumsum(counts)])
    source = rng.integers(0, num_nodes, pairs)
    target_class = labels[source]
    other = rng.random(pairs) >= homophily
    target_class[other] = (target_class[other] + rng.integers(1, num_classes, int(other.sum()))) % num_classes
    size = class_start[target_class + 1] - class_start[target_class]
    target = members[class_start[target_class] + (rng.random(pairs) * size).astype(np.int64)]
    keep = source != target
    source, target = source[keep], target[keep]
    both_source, both_target = np.concatenate([source, target]), np.concatenate([target, source])
    del source, target
    order = np.argsort(both_source, kind="stable")
    indices = torch.from_numpy(both_target[order])
    indptr = torch.from_numpy(np.concatenate([[0], np.cumsum(np.bincount(both_source, minlength=num_nodes))]))
    del both_source, both_target, order
    save_csr(folder, NeighborGraph.from_csr(indptr, indices, torch.ones(indices.numel())))
    summary = {"num_nodes": num_nodes, "num_edges": int(indices.numel()), "seconds": time.perf_counter() - start}
    return summary


class SyntheticGraphDataModule(StoredGraphDataModule):
    """``data=synthetic_graph``: :func:`generate_synthetic_graph`'s graph, generated once into
    ``<cache>/synthetic/<hash of its settings>`` and read from there as every
    :class:`~nsl_lab.datamodules.stored_graph.StoredGraphDataModule`. Splits as every :class:`SampleDataModule`
    (``test_frac``, ``val_frac``, then ``label_frac`` of the rest labeled).

    Args:
        num_nodes, avg_degree, num_classes, feature_dim, homophily, class_separation, dtype:
            see :func:`generate_synthetic_graph`.
        graph_seed: seed of the generated data (fixed across ``seed``, which draws the splits).
        graph: ``natural`` (the generated graph, default) or ``none``.
        **kwargs: see :class:`SampleDataModule`.
    """


    def __init__(self, num_nodes: int = 100_000, avg_degree: float = 10.0, num_classes: int = 10,
                 feature_dim: int = 128, homophily: float = 0.8, class_separation: float = 4.0,
                 dtype: StoreDtype = "float32", graph_seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = {"num_nodes": num_nodes, "avg_degree": float(avg_degree), "num_classes": num_classes,
                         "feature_dim": feature_dim, "homophily": float(homophily),
                         "class_separation": float(class_separation), "dtype": dtype, "seed": int(graph_seed)}
        check_settings(**self.settings)  # now, before any data is generated

    @property
    def folder(self) -> Path:
        key = hashlib.sha1(json.dumps({**self.settings, "version": GENERATOR_VERSION}, sort_keys=True).encode())
        return self.cache_dir / "synthetic" / key.hexdigest()[:16]

    def stored(self) -> Path:
        """The data's folder, generated first when it is not complete."""
        return build_once(self.folder, STORED_FILES, lambda partial:
                          generate_synthetic_graph(partial, **self.settings, progress=sys.stderr.isatty()))
