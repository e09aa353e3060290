"""Graph building speed and memory: 50,000 x 256 embeddings to a top-10 cosine graph.

    python benchmarks/graph_build.py [--n 50000] [--dim 256] [--k 10] [--threads 1 2] [--methods exact faiss_hnsw]

Each build runs in its own subprocess (``--threads`` torch/OpenMP threads), so the peak resident memory
(``ru_maxrss``) is the builder's own. Targets: exact build <= 60 s, peak memory <= 2 GB.
Writes benchmarks/results/graph_build.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from common import machine, positive_int, run_main, write

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
n, dim, k, method, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
torch.set_num_threads(threads)
from nsl_lab.graphs.build import similarity_graph
embeddings = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
start = time.perf_counter()
edge_index, edge_weight = similarity_graph(embeddings, k=k, method=method)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "edges": int(edge_index.shape[1]),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build(n: int, dim: int, k: int, method: str, threads: int) -> dict:
    completed = subprocess.run([sys.executable, "-c", CHILD, str(n), str(dim), str(k), method, str(threads)],
                               capture_output=True, text=True, check=True,
                               env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    from nsl_lab.graphs.build import METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=positive_int, default=50000, help="rows (embeddings)")
    parser.add_argument("--dim", type=positive_int, default=256, help="embedding dimension")
    parser.add_argument("--k", type=positive_int, default=10, help="neighbours per row (below --n)")
    parser.add_argument("--threads", type=positive_int, nargs="+", default=[1, 2], help="CPU threads of each build")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["exact", "faiss_hnsw"],
                        help="graph builders (faiss_* need faiss-cpu)")
    args = parser.parse_args()
    if args.k >= args.n:
        parser.error(f"argument --k: {args.k} is not allowed; it must be below --n ({args.n})")
    rows = [{"method": method, "threads": threads, **build(args.n, args.dim, args.k, method, threads)}
            for method in args.methods for threads in args.threads]
    payload = {"n": args.n, "dim": args.dim, "k": args.k, "targets": {"seconds": 60, "peak_rss_mb": 2048},
               "results": rows, "machine": machine()}
    lines = [
        f"Top-{args.k} cosine graph over {args.n:,} x {args.dim} random embeddings "
        f"(`python benchmarks/graph_build.py`), each build in its own process on the shared 2-core machine; "
        "target <= 60 s and <= 2 GB.",
        "",
        "| method | threads | seconds | peak RSS (MB) | directed edges |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['method']} | {row['threads']} | {row['seconds']:.1f} | {row['peak_rss_mb']:.0f} | "
                     f"{row['edges']:,} |")
    write("graph_build", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    run_main(main)
