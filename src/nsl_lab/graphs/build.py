r"""Similarity graphs synthesized from embeddings: NSL's graph builder for PyTorch.

Rows of an embedding matrix :math:`E \in \mathbb{R}^{N \times d}` become nodes; with
:math:`\hat e_i = e_i / \|e_i\|`, the similarity of two nodes is
:math:`s_{ij} = \hat e_i \cdot \hat e_j` (cosine). Node :math:`i` links to

- its ``k`` most similar other nodes (top-k), and/or
- every node with :math:`s_{ij} \ge` ``threshold`` (NSL's ``similarity_threshold``),

both when set (the top-k that also clear the threshold). The result is symmetric, as NSL's
``build_graph`` writes each edge in both directions: :math:`i - j` is an edge when
either end selected the other, weighted by :math:`s_{ij}`.

Exact search multiplies one block of rows by the whole matrix at a time, so memory stays
``block_size x N`` rather than ``N x N``. ``method="faiss_hnsw"`` uses faiss's HNSW index and
``method="faiss_ivf"`` its inverted-file index (approximate; IVF for a million rows and more,
its memory that of the index: the rows themselves plus the list assignments).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
import functools
from typing import Any, Callable, Literal, Mapping, get_args

import numpy as np
import torch

from nsl_lab.errors import ConfigError, check_choice, check_integer, check_range
from nsl_lab.files import save_tensors, write_text

Method = Literal["exact", "faiss_hnsw", "faiss_ivf"]
METHODS = get_args(Method)
Embedding = Literal["tfidf_svd", "word_vectors", "pixels", "pca", "features", "npy"]
GraphKind = Literal["none", "natural", "knn", "tsv"]


@dataclass(frozen=True)
class GraphSpec:
    """How a datamodule gets its sample graph (``data.graph``).

    ``kind``: ``none``, ``natural`` (the dataset's own graph), ``knn`` (built from
    embeddings, see :func:`similarity_graph`) or ``tsv`` (an NSL edge list at ``path``).
    ``embedding`` says where knn embeddings come from: ``tfidf_svd`` or ``word_vectors``
    (text; ``window`` is the latter's co-occurrence window), ``pixels`` or ``features`` (raw
    rows), ``pca`` (rows projected to ``dim``) or ``npy`` (``path``).
    """

    kind: str = "knn"
    k: int | None = 10
    threshold: float | None = None
    embedding: str = "tfidf_svd"
    dim: int = 256
    method: str = "exact"
    path: str | None = None
    max_features: int = 50000
    block_size: int = 2048
    window: int = 10

    @classmethod
    def parse(cls, value: "str | Mapping[str, Any] | GraphSpec | None") -> "GraphSpec":
        if isinstance(value, GraphSpec):
            return value
        if value is None:
            value = "none"
        if isinstance(value, str):
            check_choice("data.graph", value, GraphKind)
            return cls(kind=value)
        if not isinstance(value, Mapping):
            raise ConfigError(f"data.graph={value!r} must be one of {get_args(GraphKind)} or a mapping with a 'kind'",
                              "data.graph")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ConfigError(f"data.graph.{unknown[0]} is not a graph setting; allowed: {', '.join(sorted(allowed))}")
        spec = cls(**{str(key): val for key, val in value.items()})
        spec.check()
        return spec

    def check(self) -> None:
        check_choice("data.graph.kind", self.kind, GraphKind)
        if self.kind == "knn":
            check_knn_settings(self.k, self.threshold, self.method)
            check_choice("data.graph.embedding", self.embedding, Embedding)
            check_integer("data.graph.dim", self.dim, 1)
            check_integer("data.graph.block_size", self.block_size, 1)
            check_integer("data.graph.window", self.window, 1)
            if self.embedding == "npy" and not self.path:
                raise ConfigError("data.graph.embedding='npy' needs data.graph.path=<embeddings.npy>")
        if self.kind == "tsv" and not self.path:
            raise ConfigError("data.graph.kind='tsv' needs data.graph.path=<edges.tsv>")

    def key(self, **context: Any) -> str:
        """A short hash of every setting (and ``context``): the graph's cache key."""
        payload = json.dumps({**asdict(self), **context}, sort_keys=True, default=str)
        return hashlib.sha1(payload.encode()).hexdigest()[:16]


def check_knn_settings(k: int | None, threshold: float | None, method: str) -> None:
    check_choice("graph.method", method, Method)
    if k is None and threshold is None:
        raise ConfigError("graph.k and graph.threshold are both null; set k (top-k), threshold, or both", "graph.k")
    check_integer("graph.k", k, 1, optional=True)
    if threshold is not None:
        check_range("graph.threshold", threshold, -1.0, 1.0)
    if method != "exact" and k is None:
        raise ConfigError(f"graph.method={method!r} searches k neighbours; set graph.k (threshold alone needs 'exact')")


def normalize_rows(embeddings: np.ndarray | torch.Tensor, block_rows: int | None = None) -> torch.Tensor:
    """Rows scaled to unit length, as float32.

    A numpy array (a read-only memory map included) is converted one block of rows at a
    time: each block is copied to a writable float32 array, so the input is never copied
    whole and torch never wraps a read-only buffer.
    """
    if isinstance(embeddings, torch.Tensor):
        if embeddings.dim() != 2:
            raise ConfigError(f"embeddings must be a 2-d matrix [N, d], got shape {list(embeddings.shape)}")
        x = embeddings.to(torch.float32)
        _check_finite(x, 0)
        return torch.nn.functional.normalize(x, dim=1)
    array = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings)
    if array.ndim != 2:
        raise ConfigError(f"embeddings must be a 2-d matrix [N, d], got shape {list(array.shape)}")
    n, dim = array.shape
    if block_rows is None:  # ~64 MiB of float32 per block
        block_rows = max(1, (1 << 24) // max(dim, 1))
    out = torch.empty((n, dim), dtype=torch.float32)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        block = torch.from_numpy(np.array(array[start:stop], dtype=np.float32))  # a writable copy
        _check_finite(block, start)
        out[start:stop] = torch.nn.functional.normalize(block, dim=1)
    return out


def _check_finite(x: torch.Tensor, first_row: int) -> None:
    finite = torch.isfinite(x).all(dim=1) if x.numel() else torch.ones(len(x), dtype=torch.bool)
    if not bool(finite.all()):
        row = first_row + int((~finite).nonzero()[0, 0])
        raise ConfigError(f"embeddings contain NaN or inf (row {row}); every value must be finite")


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="rows", leave=False)


def _exact_search(
    x: torch.Tensor, k: int | None, threshold: float | None, block_size: int, progress: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = x.shape[0]
    sources, targets, weights = [], [], []
    with torch.inference_mode(), _progress(n, progress, "graph") as bar:
        for start in range(0, n, block_size):  # a loop over blocks of rows, each a matmul
            stop = min(start + block_size, n)
            similarity = x[start:stop] @ x.T
            rows = torch.arange(stop - start)
            similarity[rows, rows + start] = float("-inf")  # no self-loops
            if k is not None:
                value, column = similarity.topk(min(k, n - 1), dim=1)
                row = rows[:, None].expand_as(column)
                keep = torch.isfinite(value)
                if threshold is not None:
                    keep &= value >= threshold
                row, column, value = row[keep], column[keep], value[keep]
            else:
                row, column = (similarity >= threshold).nonzero(as_tuple=True)
                value = similarity[row, column]
            sources.append(row + start)
            targets.append(column)
            weights.append(value)
            bar.update(stop - start)
    return torch.cat(sources), torch.cat(targets), torch.cat(weights)


def _faiss_index(data: np.ndarray, kind: str, k: int, hnsw_m: int = 32):
    """An inner-product index over ``data``: HNSW, or IVF (``4 sqrt(N)`` lists, trained on a
    sample of 64 rows per list, 16 probed) for millions of rows, where HNSW's graph is slow to build."""
    import faiss

    n, dim = data.shape
    if kind == "faiss_hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(64, 2 * k)
    else:
        lists = max(1, min(int(4 * np.sqrt(n)), n // 39))  # faiss wants >= 39 training rows per list
        if lists == 1:  # under 78 rows: one list is a flat search (and faiss warns of too few training rows)
            index = faiss.IndexFlatIP(dim)
            index.add(data)
            return index
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(n, min(n, 64 * lists), replace=False)
        index.train(data[np.sort(sample)])
        index.nprobe = min(16, lists)
    index.add(data)
    return index


def _faiss_search(
    x: torch.Tensor, k: int, threshold: float | None, progress: bool, kind: str = "faiss_hnsw"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if importlib.util.find_spec("faiss") is None:  # pragma: no cover - faiss is a dependency
        raise ConfigError(f"graph.method={kind!r} needs faiss-cpu: pip install 'nsl_lab[faiss]'")
    data = np.ascontiguousarray(x.numpy())
    index = _faiss_index(data, kind, k)
    n = data.shape[0]
    # k + 1: the query itself usually comes back first.
    scores, ids = np.empty((n, k + 1), np.float32), np.empty((n, k + 1), np.int64)
    with _progress(n, progress, "graph (faiss)") as bar:
        for start in range(0, n, 8192):
            stop = min(start + 8192, n)
            scores[start:stop], ids[start:stop] = index.search(data[start:stop], k + 1)
            bar.update(stop - start)
    value, column = torch.from_numpy(scores), torch.from_numpy(ids)
    row = torch.arange(n)[:, None].expand_as(column)
    keep = (column >= 0) & (column != row)
    # Keep the k best non-self hits per row.
    keep &= keep.long().cumsum(1) <= k
    if threshold is not None:
        keep &= value >= threshold
    return row[keep], column[keep], value[keep]


def symmetrize(
    source: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, num_nodes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Union of both directions, one edge per ordered pair: ``(edge_index [2, E], weight [E])``."""
    both_source = torch.cat([source, target])
    both_target = torch.cat([target, source])
    both_weight = torch.cat([weight, weight]).numpy()
    # s_ij and s_ji come from different blocks and may differ in the last bit: one value per pair.
    pair = (torch.minimum(both_source, both_target) * num_nodes + torch.maximum(both_source, both_target)).numpy()
    _, pair_first, pair_of = np.unique(pair, return_index=True, return_inverse=True)
    both_weight = both_weight[pair_first][pair_of]
    unique, first = np.unique((both_source * num_nodes + both_target).numpy(), return_index=True)
    unique = torch.from_numpy(unique)
    edge_index = torch.stack([unique // num_nodes, unique % num_nodes])
    return edge_index, torch.from_numpy(both_weight[first])


def similarity_graph(
    embeddings: np.ndarray | torch.Tensor,
    k: int | None = 10,
    threshold: float | None = None,
    method: str = "exact",
    block_size: int = 2048,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A symmetric cosine-similarity graph over the rows of ``embeddings``.

    Args:
        embeddings: ``[N, d]`` matrix.
        k: neighbours per node (top-k), or ``None`` for threshold only.
        threshold: keep pairs with cosine similarity ``>= threshold`` (NSL semantics).
        method: ``exact`` (blocked torch matmuls), ``faiss_hnsw`` or ``faiss_ivf`` (approximate;
            IVF for a million rows and more).
        block_size: rows per block of the exact search (memory ~ ``block_size x N`` floats).
        progress: show a progress bar.

    Returns:
        ``(edge_index [2, E], edge_weight [E])``, torch-geometric style, sorted by (source,
        target), each undirected edge present in both directions with the same weight.
    """
    check_knn_settings(k, threshold, method)
    check_integer("graph.block_size", block_size, 1)
    x = normalize_rows(embeddings)
    n = x.shape[0]
    if n < 2:
        return torch.zeros(2, 0, dtype=torch.long), torch.zeros(0)
    if k is not None and k >= n:
        raise ConfigError(f"graph.k={k} is not below the number of rows ({n}); allowed: 1 <= graph.k <= {n - 1}",
                          "graph.k")
    if method == "exact":
        source, target, weight = _exact_search(x, k, threshold, int(block_size), progress)
    else:
        source, target, weight = _faiss_search(x, min(int(k), n - 1), threshold, progress, method)
    return symmetrize(source, target, weight, n)


# -- files ------------------------------------------------------------------------------
def save_graph(path: str | Path, edge_index: torch.Tensor, edge_weight: torch.Tensor, num_nodes: int,
               params: Mapping[str, Any] | None = None) -> None:
    """Saves ``edge_index``, ``edge_weight``, ``num_nodes`` and the build parameters (``.pt``)."""
    save_tensors(path, {"edge_index": edge_index.long(), "edge_weight": edge_weight.float(), "num_nodes": int(num_nodes),
                        "params": json.dumps(dict(params or {}), sort_keys=True, default=str)})


def load_graph(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, int, dict[str, Any]]:
    """``(edge_index, edge_weight, num_nodes, params)`` from :func:`save_graph`'s file."""
    stored = torch.load(Path(path), weights_only=True)
    return stored["edge_index"], stored["edge_weight"], int(stored["num_nodes"]), json.loads(stored["params"])


def write_tsv(path: str | Path, edge_index: torch.Tensor, edge_weight: torch.Tensor,
              node_ids: np.ndarray | list[str] | None = None) -> None:
    """NSL's edge list: one ``source<TAB>target<TAB>weight`` line per directed edge."""
    source, target = edge_index.numpy()
    if node_ids is not None:
        node_ids = np.asarray(node_ids).astype(str)
        source, target = node_ids[source], node_ids[target]
    weights = np.char.mod("%.7g", edge_weight.numpy().astype(np.float64))
    lines = np.char.add(np.char.add(np.char.add(np.char.add(source.astype(str), "\t"), target.astype(str)), "\t"), weights)
    write_text(path, "\n".join(lines.tolist()) + ("\n" if len(lines) else ""))  # atomic: no half-written file


def read_tsv(path: str | Path, num_nodes: int | None = None,
             node_ids: np.ndarray | list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads an NSL edge list (``source<TAB>target[<TAB>weight]``, weight 1 when absent).

    Node ids are looked up in ``node_ids`` (row ``r`` has id ``node_ids[r]``) or, without
    them, must be integer rows in ``0 .. num_nodes - 1``. Unknown ids, NaN and negative
    weights stop with a :class:`ConfigError` naming the line.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"graph file {path} does not exist")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    table = [line.split("\t") for line in lines]
    bad = next((i for i, cols in enumerate(table) if len(cols) not in (2, 3)), None)
    if bad is not None:
        raise ConfigError(f"{path}:{bad + 1}: expected 'source<TAB>target[<TAB>weight]', got {lines[bad]!r}")
    ends = np.array([cols[:2] for cols in table], dtype=str).reshape(-1, 2)
    try:
        weight = np.array([float(cols[2]) if len(cols) == 3 else 1.0 for cols in table], dtype=np.float64)
    except ValueError as error:
        raise ConfigError(f"{path}: a weight is not a number ({error})") from None
    for name, bad_rows in [("NaN", np.isnan(weight)), ("negative", weight < 0), ("infinite", np.isinf(weight))]:
        if bad_rows.any():
            row = int(np.flatnonzero(bad_rows)[0])
            raise ConfigError(f"{path}:{row + 1}: {name} edge weight {lines[row].split(chr(9))[2]!r}; weights must be finite and >= 0")
    if node_ids is not None:
        known = np.asarray(node_ids).astype(str)
        order = np.argsort(known)
        sorted_ids = known[order]
        position = np.searchsorted(sorted_ids, ends).clip(max=max(len(known) - 1, 0))
        found = sorted_ids[position] == ends if len(known) else np.zeros(ends.shape, bool)
        rows = order[position] if len(known) else position
    else:
        if num_nodes is None:
            raise ConfigError("read_tsv needs node_ids or num_nodes")
        numeric = np.char.isdigit(ends)
        rows = np.where(numeric, ends, "0").astype(np.int64)
        found = numeric & (rows < num_nodes)
    if not found.all():
        line, column = (int(v) for v in np.argwhere(~found)[0])
        allowed = "the given node ids" if node_ids is not None else f"integer rows 0 .. {num_nodes - 1}"
        raise ConfigError(f"{path}:{line + 1}: unknown node id {str(ends[line, column])!r}; allowed: {allowed}")
    edge_index = torch.from_numpy(rows.T.astype(np.int64).copy()).reshape(2, -1)
    return edge_index, torch.from_numpy(weight.astype(np.float32))


# -- embeddings -------------------------------------------------------------------------
#: part of every cached graph's key: embeddings are computed with one BLAS thread (since issue 12)
EMBEDDING_BUILD = "blas-1-thread"


def one_blas_thread(function: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    """Runs ``function`` with numpy's / scipy's BLAS on one thread: multi-threaded BLAS sums in
    another order, and a randomized SVD then gives other vectors (IMDB's word-vector graph
    differed between OMP_NUM_THREADS=1 and 2), so the graph would depend on the machine."""
    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            return function(*args, **kwargs)

    return wrapped


@one_blas_thread
def text_embeddings(texts: list[str], dim: int = 256, max_features: int = 50000, seed: int = 0) -> np.ndarray:
    """TF-IDF (unigrams + bigrams, sublinear tf) reduced to ``dim`` by truncated SVD (LSA)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(max_features=max_features, sublinear_tf=True, ngram_range=(1, 2), min_df=2,
                            dtype=np.float32)
    matrix = tfidf.fit_transform(texts)
    dim = min(int(dim), matrix.shape[1] - 1, matrix.shape[0] - 1)
    return TruncatedSVD(dim, random_state=seed, algorithm="randomized", n_iter=4).fit_transform(matrix).astype(np.float32)


@one_blas_thread
def word_vector_embeddings(
    documents: list[list[str]], dim: int = 256, window: int = 10, max_vocab: int = 20000, seed: int = 0
) -> np.ndarray:
    r"""Documents as TF-IDF-weighted sums of word vectors learned from the documents themselves.

    Word vectors factorise the positive pointwise mutual information of word pairs within
    ``window`` tokens of each other (Levy & Goldberg 2014: the matrix word2vec's skip-gram
    factorises implicitly), with context counts smoothed by the power 0.75:

    .. math::
        \mathrm{PPMI}_{wc} = \max\Big(0, \log \frac{n_{wc}\, \sum_{c'} n_{c'}^{0.75}}
        {n_w\, n_c^{0.75}}\Big),\quad \mathrm{PPMI} \approx U \Sigma V^T,\quad
        v_w = \frac{(U \Sigma^{1/2})_w}{\|(U \Sigma^{1/2})_w\|},\quad
        e_d = \sum_w \mathrm{tfidf}_{dw}\, v_w

    over the ``max_vocab`` most frequent words (seen at least twice). No labels and no
    pretrained model: the offline counterpart of NSL's graph from pretrained embeddings. On
    IMDB's training reviews the top-10 graph joins same-sentiment reviews more often than
    the ``tfidf_svd`` one (``benchmarks/graph_homophily.py``).
    """
    import scipy.sparse as sparse
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.utils.extmath import randomized_svd

    counts: dict[str, int] = {}
    for tokens in documents:
        for token in tokens:
            counts[token] = counts.get(token, 0) + 1
    frequent = sorted((t for t, c in counts.items() if c >= 2), key=lambda t: (-counts[t], t))[:max_vocab]
    vocabulary = {token: i for i, token in enumerate(frequent)}
    size = len(vocabulary)
    if size < 2:
        raise ConfigError(f"word_vectors needs at least 2 words seen twice in the documents, got {size}")
    ids = [np.fromiter((vocabulary[t] for t in tokens if t in vocabulary), dtype=np.int64) for tokens in documents]
    pairs = [(a[:-d], a[d:]) for a in ids for d in range(1, window + 1) if len(a) > d]
    left = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, np.int64)
    right = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, np.int64)
    cooccurrence = sparse.coo_matrix((np.ones(len(left), np.float32), (left, right)), shape=(size, size)).tocsr()
    cooccurrence = (cooccurrence + cooccurrence.T).tocoo()
    word_counts = np.asarray(cooccurrence.sum(1)).ravel()
    context = word_counts ** 0.75
    pmi = np.log(cooccurrence.data * context.sum() / (word_counts[cooccurrence.row] * context[cooccurrence.col]))
    keep = pmi > 0
    ppmi = sparse.csr_matrix((pmi[keep].astype(np.float32), (cooccurrence.row[keep], cooccurrence.col[keep])),
                             shape=(size, size))
    rank = min(int(dim), size - 1)
    u, sigma, _ = randomized_svd(ppmi, rank, random_state=seed, n_iter=4)
    vectors = u * np.sqrt(sigma)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    tfidf = TfidfVectorizer(vocabulary=vocabulary, sublinear_tf=True, analyzer=lambda tokens: tokens, dtype=np.float32)
    return np.asarray(tfidf.fit_transform(documents) @ vectors, dtype=np.float32)


@one_blas_thread
def dense_embeddings(x: np.ndarray | torch.Tensor, method: str = "pixels", dim: int = 256, seed: int = 0) -> np.ndarray:
    """Rows flattened (``pixels``/``features``) or projected to ``dim`` by PCA (``pca``)."""
    check_choice("graph.embedding", method, ("pixels", "features", "pca"))
    if isinstance(x, torch.Tensor):
        x = (x.to_dense() if x.is_sparse else x).numpy()
    flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    if method != "pca":
        return flat
    from sklearn.decomposition import PCA

    dim = min(int(dim), flat.shape[0], flat.shape[1])
    return PCA(dim, random_state=seed, svd_solver="randomized").fit_transform(flat).astype(np.float32)
