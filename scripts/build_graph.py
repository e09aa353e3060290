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

Every argument and output path is checked before any work starts (missing folders of the
outputs are created); a bad one stops the run with one ``nsl_lab: error: ...`` line and
exit code 2.
"""
from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nsl_lab.errors import ConfigError, check_integer
from nsl_lab.graphs.build import METHODS, check_knn_settings, save_graph, similarity_graph, write_tsv
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.graphs.store import CSR_FILES, save_csr

#: the library's setting names (``graph.k``, as Hydra configs spell them) -> this script's options
OPTIONS = {"graph.k": "--k", "graph.threshold": "--threshold", "graph.method": "--method",
           "graph.block_size": "--block-size"}


def as_options(error: ConfigError) -> ConfigError:
    """``error`` naming this script's command-line options instead of the config settings."""
    message = str(error)
    for setting, option in OPTIONS.items():
        message = re.sub(rf"(?<![\w.]){re.escape(setting)}(?![\w])", option, message)
    # No option takes null: "an integer >= 1 or null" becomes "an integer >= 1".
    return ConfigError(message.replace(" or null", ""), OPTIONS.get(error.setting or "", error.setting))


def load_embeddings(path: Path) -> np.ndarray:
    """The ``.npy`` matrix at ``path``, memory-mapped, after checking that it is a 2-d matrix of
    numbers (never unpickled)."""
    if not path.exists():
        raise ConfigError(f"embeddings file {path} does not exist")
    if not path.is_file():
        raise ConfigError(f"embeddings file {path} is not a file")

    def unreadable(reason: str) -> ConfigError:
        return ConfigError(f"embeddings file {path} is not a readable .npy matrix of numbers: {reason}")

    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise unreadable(f"its .npy format version {version} is not supported (1.0, 2.0)")
    except (ValueError, OSError, EOFError, SyntaxError):
        raise unreadable("it is not a .npy file") from None
    if dtype.hasobject:
        raise unreadable(f"it holds Python objects (dtype {dtype}); it needs numbers (int, float or bool)")
    if dtype.kind not in "biuf":
        raise unreadable(f"it holds {dtype} values; it needs numbers (int, float or bool)")
    if len(shape) != 2:
        raise unreadable(f"it has shape {list(shape)}; it needs a 2-d matrix [N, d]")
    if shape[1] == 0:
        raise unreadable(f"it has shape {list(shape)}: rows without columns")
    try:
        embeddings = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise unreadable("it is truncated or damaged") from None
    if not isinstance(embeddings, np.ndarray):  # pragma: no cover - the header said .npy
        raise unreadable("it is not a .npy file")
    return embeddings


def read_ids(path: Path, rows: int) -> list[str]:
    if not path.exists():
        raise ConfigError(f"--ids {path} does not exist; it must be a text file with one node id per line")
    if not path.is_file():
        raise ConfigError(f"--ids {path} is not a file; it must be a text file with one node id per line")
    try:
        ids = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--ids {path} is not a readable text file ({type(error).__name__}); "
                          "it must hold one node id per line") from None
    if len(ids) != rows:
        raise ConfigError(f"--ids has {len(ids)} lines but the embeddings have {rows} rows")
    return ids


def same_path(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(args: argparse.Namespace) -> list[Path]:
    """Checks every output path before any work starts: none is an input or another output, a
    file is not a folder (and the reverse), and its folder can be created and written. Returns
    the folders it created (removed again if the run stops before writing)."""
    inputs = [("the embeddings file", args.embeddings)] + ([("the --ids file", args.ids)] if args.ids else [])
    files = [(name, path) for name, path in (("output", args.output), ("--pt", args.pt)) if path is not None]
    written = list(files)
    if args.csr is not None:
        written += [("--csr", args.csr)] + [(f"--csr's {file}", args.csr / file) for file in CSR_FILES]
    for i, (name, path) in enumerate(written):
        for other_name, other in inputs + written[:i]:
            if not same_path(path, other) or (name.startswith("--csr") and other_name.startswith("--csr")):
                continue
            if other_name.startswith("the "):
                raise ConfigError(f"{name} {path} is {other_name}; writing there would overwrite the input: "
                                  "give another path")
            raise ConfigError(f"{name} {path} is the same file as {other_name} {other}; give each output its own path")
    created: list[Path] = []
    try:
        for name, path in files:
            if path.is_dir():
                raise ConfigError(f"{name} {path} is a folder; it must be a file path")
            writable_folder(name, path, path.parent, created)
            if path.exists():
                try:
                    open(path, "ab").close()  # appends nothing: the file is left as it is
                except OSError as error:
                    raise ConfigError(f"{name} {path} cannot be written{why(error)}") from None
        if args.csr is not None:
            if args.csr.exists() and not args.csr.is_dir():
                raise ConfigError(f"--csr {args.csr} is a file; it must be a folder (for {', '.join(CSR_FILES)})")
            writable_folder("--csr", args.csr, args.csr, created)
    except ConfigError:
        remove_created(created)
        raise
    return created


def writable_folder(name: str, path: Path, folder: Path, created: list[Path]) -> None:
    """Creates ``folder`` (and its missing parents) and checks that a file can be made in it."""
    missing = []
    parent = folder
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():  # a dangling link
            raise ConfigError(f"{name} {path} cannot be written: {parent} is a broken link")
        missing.append(parent)
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"{name} {path} cannot be written: {parent} is a file, not a folder")
    for step in reversed(missing):
        try:
            step.mkdir()
        except OSError as error:
            raise ConfigError(f"{name} {path} cannot be written: folder {step} cannot be created{why(error)}") from None
        created.append(step)
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".build_graph.", suffix=".probe"):
            pass
    except OSError as error:
        raise ConfigError(f"{name} {path} cannot be written: folder {folder} is not writable{why(error)}") from None


def why(error: OSError) -> str:
    """`` (Permission denied)``; nothing for errors that would mislead (``/proc`` says ENOENT)."""
    return f" ({error.strerror})" if error.strerror and error.errno != errno.ENOENT else ""


def remove_created(created: list[Path]) -> None:
    for folder in reversed(created):
        try:
            folder.rmdir()  # only if still empty
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("embeddings", type=Path, help="[N, d] float matrix (.npy)")
    parser.add_argument("output", type=Path, nargs="?", default=None, help="TSV edge list to write (optional with --csr)")
    parser.add_argument("--k", type=int, default=None, help="neighbours per node (top-k), 1 .. rows - 1")
    parser.add_argument("--threshold", type=float, default=None, help="keep cosine similarity >= threshold")
    parser.add_argument("--method", choices=METHODS, default="exact")
    parser.add_argument("--block-size", type=int, default=2048, help="rows per block of the exact search")
    parser.add_argument("--ids", type=Path, default=None, help="node ids, one per line (default: row numbers)")
    parser.add_argument("--pt", type=Path, default=None, help="also save edge_index, weights and parameters here")
    parser.add_argument("--csr", type=Path, default=None, help="also write the graph as a CSR folder here")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (>= 1)")
    args = parser.parse_args(argv)
    created: list[Path] = []
    try:
        if args.k is None and args.threshold is None:
            args.k = 10
        try:
            check_knn_settings(args.k, args.threshold, args.method)
            check_integer("graph.block_size", args.block_size, 1)
        except ConfigError as error:
            raise as_options(error) from None
        if args.threads is not None:
            check_integer("--threads", args.threads, 1)
        if args.output is None and args.csr is None:
            raise ConfigError("give an output TSV path, --csr GRAPH_DIR, or both")
        embeddings = load_embeddings(args.embeddings)
        rows = len(embeddings)
        if rows < 2:
            raise ConfigError(f"embeddings file {args.embeddings} has {rows} row{'' if rows == 1 else 's'}; "
                              "a graph needs at least 2 (a node's neighbours are the other rows)")
        if args.k is not None and args.k >= rows:
            raise ConfigError(f"--k={args.k} is not below the number of rows ({rows}); allowed: 1 <= --k <= {rows - 1}",
                              "--k")
        ids = read_ids(args.ids, rows) if args.ids else None
        created = check_outputs(args)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        start = time.perf_counter()
        try:
            edge_index, edge_weight = similarity_graph(
                embeddings, args.k, args.threshold, args.method, args.block_size, progress=sys.stderr.isatty()
            )
        except ConfigError as error:
            raise as_options(error) from None
        seconds = time.perf_counter() - start
        created = []  # from here on the folders hold what this run writes
        if args.output is not None:
            write_tsv(args.output, edge_index, edge_weight, ids)
        if args.csr is not None:
            save_csr(args.csr, NeighborGraph(edge_index, rows, edge_weight))
        if args.pt:
            params = {"k": args.k, "threshold": args.threshold, "method": args.method,
                      "embeddings": str(args.embeddings), "similarity": "cosine"}
            save_graph(args.pt, edge_index, edge_weight, rows, params)
    except ConfigError as error:
        remove_created(created)
        print(f"nsl_lab: error: {error}", file=sys.stderr)
        return 2
    written = " and ".join(str(p) for p in (args.output, args.csr, args.pt) if p is not None)
    print(f"{rows} nodes, {edge_index.shape[1]} directed edges in {seconds:.1f} s -> {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
