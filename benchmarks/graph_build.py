"""Graph building speed and memory: 50,000 x 256 embeddings to a top-10 cosine graph.

    python benchmarks/graph_build.py [--n 50000] [--dim 256] [--k 10]

Each build runs in its own subprocess (one torch thread), so the peak resident memory
(``ru_maxrss``) is the builder's own. Targets: exact build <= 60 s, peak memory <= 2 GB.
Writes benchmarks/results/graph_build.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from common import machine, write

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
torch.set_num_threads(1)
from nsl_lab.graphs.build import similarity_graph
n, dim, k, method = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
embeddings = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
start = time.perf_counter()
edge_index, edge_weight = similarity_graph(embeddings, k=k, method=method)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "edges": int(edge_index.shape[1]),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build(n: int, dim: int, k: int, method: str) -> dict:
    completed = subprocess.run([sys.executable, "-c", CHILD, str(n), str(dim), str(k), method], capture_output=True,
                               text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    rows = {method: build(args.n, args.dim, args.k, method) for method in ("exact", "faiss_hnsw")}
    payload = {"n": args.n, "dim": args.dim, "k": args.k, "targets": {"seconds": 60, "peak_rss_mb": 2048},
               "results": rows, "machine": machine()}
    lines = [
        f"Top-{args.k} cosine graph over {args.n:,} x {args.dim} random embeddings, one thread "
        f"(`python benchmarks/graph_build.py`); target <= 60 s and <= 2 GB.",
        "",
        "| method | seconds | peak RSS (MB) | directed edges |",
        "|---|---:|---:|---:|",
    ]
    for method, row in rows.items():
        lines.append(f"| {method} | {row['seconds']:.1f} | {row['peak_rss_mb']:.0f} | {row['edges']:,} |")
    write("graph_build", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
