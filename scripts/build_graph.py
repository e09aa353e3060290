#!/usr/bin/env python
"""Builds a similarity graph from an embedding matrix (NSL's ``build_graph`` for PyTorch).

    python scripts/build_graph.py EMBEDDINGS.npy OUTPUT.tsv --k 10
    python scripts/build_graph.py EMBEDDINGS.npy OUTPUT.tsv --threshold 0.9 --pt OUTPUT.pt
    python scripts/build_graph.py EMBEDDINGS.npy --csr GRAPH_DIR --k 10 --method faiss_ivf   # millions of rows

Writes NSL's edge list (``source<TAB>target<TAB>weight``, both directions of every edge);
with ``--pt``, torch-geometric's ``edge_index`` + weights with the build parameters; with
``--csr``, the CSR folder (``indptr.npy``, ``indices.npy``, ``weight.npy``) that
``nsl_lab.graphs.store.load_csr`` and the large-graph datamodules read. The embeddings are
memory-mapped; the search runs in blocks of rows (exact) or through the faiss index.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from nsl_lab.errors import ConfigError
from nsl_lab.graphs.build import METHODS, save_graph, similarity_graph, write_tsv
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.graphs.store import save_csr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("embeddings", type=Path, help="[N, d] float matrix (.npy)")
    parser.add_argument("output", type=Path, nargs="?", default=None, help="TSV edge list to write (optional with --csr)")
    parser.add_argument("--k", type=int, default=None, help="neighbours per node (top-k)")
    parser.add_argument("--threshold", type=float, default=None, help="keep cosine similarity >= threshold")
    parser.add_argument("--method", choices=METHODS, default="exact")
    parser.add_argument("--block-size", type=int, default=2048, help="rows per block of the exact search")
    parser.add_argument("--ids", type=Path, default=None, help="node ids, one per line (default: row numbers)")
    parser.add_argument("--pt", type=Path, default=None, help="also save edge_index, weights and parameters here")
    parser.add_argument("--csr", type=Path, default=None, help="also write the graph as a CSR folder here")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.k is None and args.threshold is None:
            args.k = 10
        if args.output is None and args.csr is None:
            raise ConfigError("give an output TSV path, --csr GRAPH_DIR, or both")
        if not args.embeddings.is_file():
            raise ConfigError(f"embeddings file {args.embeddings} does not exist")
        embeddings = np.load(args.embeddings, mmap_mode="r", allow_pickle=False)
        ids = args.ids.read_text().splitlines() if args.ids else None
        if ids is not None and len(ids) != len(embeddings):
            raise ConfigError(f"--ids has {len(ids)} lines but the embeddings have {len(embeddings)} rows")
        start = time.perf_counter()
        edge_index, edge_weight = similarity_graph(
            embeddings, args.k, args.threshold, args.method, args.block_size, progress=sys.stderr.isatty()
        )
        seconds = time.perf_counter() - start
        if args.output is not None:
            write_tsv(args.output, edge_index, edge_weight, ids)
        if args.csr is not None:
            save_csr(args.csr, NeighborGraph(edge_index, len(embeddings), edge_weight))
        if args.pt:
            params = {"k": args.k, "threshold": args.threshold, "method": args.method,
                      "embeddings": str(args.embeddings), "similarity": "cosine"}
            save_graph(args.pt, edge_index, edge_weight, len(embeddings), params)
    except ConfigError as error:
        print(f"nsl_lab: error: {error}", file=sys.stderr)
        return 2
    written = " and ".join(str(p) for p in (args.output, args.csr) if p is not None)
    print(f"{len(embeddings)} nodes, {edge_index.shape[1]} directed edges in {seconds:.1f} s -> {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
