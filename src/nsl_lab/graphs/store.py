"""Features and graphs on disk for graphs too large to copy: a feature store read by rows and a
CSR graph in ``.npy`` files, both memory-mapped."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Literal

import numpy as np
import torch

from nsl_lab.errors import ConfigError, check_choice
from nsl_lab.graphs.neighbors import NeighborGraph

#: how a feature store holds its values
StoreDtype = Literal["float32", "float16"]
CSR_FILES = ("indptr.npy", "indices.npy", "weight.npy")


class FeatureStore:
    """``[N, d]`` features read by rows: a memory-mapped ``.npy`` (``float32`` or ``float16``)
    or an in-memory tensor. Indexing with row ids returns those rows as a float32 tensor;
    only they are read, so a run's memory does not grow with ``N`` beyond the pages touched.

    Args:
        source: a ``.npy`` path (memory-mapped read-only) or a ``[N, d]`` array / tensor.
    """

    def __init__(self, source: str | Path | np.ndarray | torch.Tensor) -> None:
        if isinstance(source, (str, Path)):
            path = Path(source)
            if not path.is_file():
                raise ConfigError(f"feature store {path} does not exist")
            try:
                values = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as error:
                raise ConfigError(f"feature store {path} is not a readable .npy file ({error})") from None
            self.path: Path | None = path
        else:
            values = source.numpy() if isinstance(source, torch.Tensor) else np.asarray(source)
            self.path = None
        if values.ndim != 2:
            raise ConfigError(f"a feature store holds [N, d] rows; got shape {list(values.shape)}")
        if values.dtype not in (np.float32, np.float16):
            raise ConfigError(f"a feature store holds float32 or float16 values; got {values.dtype}")
        self.values = values

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def __getitem__(self, index: torch.Tensor | slice) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        # Fancy indexing copies just these rows out of the map; float16 is widened here. A slice
        # is a read-only view of the map: copied, so the tensor owns writable memory.
        rows = np.ascontiguousarray(self.values[index], dtype=np.float32)
        return torch.from_numpy(rows if rows.flags.writeable else rows.copy())

    def __repr__(self) -> str:
        where = f"path={str(self.path)!r}" if self.path else "in memory"
        return f"{self.__class__.__name__}(shape={list(self.shape)}, dtype={self.values.dtype}, {where})"


def write_features(path: str | Path, num_rows: int, dim: int, dtype: StoreDtype = "float32") -> np.memmap:
    """A writable ``.npy`` memory map of ``[num_rows, dim]`` zeros, to fill in blocks."""
    check_choice("dtype", dtype, StoreDtype)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=(int(num_rows), int(dim)))


def save_csr(folder: str | Path, graph: NeighborGraph) -> None:
    """``indptr.npy``, ``indices.npy`` (int64) and ``weight.npy`` (float32) of ``graph``, each
    written to a temporary name first so a crash leaves no half-written graph."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, values in zip(CSR_FILES, (graph.indptr, graph.indices, graph.weights)):
        partial = folder / f".{name}.partial"
        with open(partial, "wb") as handle:
            np.save(handle, values.cpu().numpy())
        os.replace(partial, folder / name)


def load_csr(folder: str | Path) -> NeighborGraph:
    """The graph in ``folder``'s CSR files (:func:`save_csr`'s, or any with the same layout)."""
    folder = Path(folder)
    missing = [name for name in CSR_FILES if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"CSR graph folder {folder} lacks {', '.join(missing)}; it needs {', '.join(CSR_FILES)}")
    try:
        indptr, indices, weight = (torch.from_numpy(np.load(folder / name, allow_pickle=False)) for name in CSR_FILES)
    except ValueError as error:
        raise ConfigError(f"CSR graph folder {folder} holds a file that is not a readable .npy ({error})") from None
    return NeighborGraph.from_csr(indptr, indices, weight)


def build_once(folder: Path, files: Iterable[str], build: Callable[[Path], None]) -> Path:
    """``folder`` once it holds every one of ``files``: built by ``build(partial)`` into a
    temporary sibling first and renamed when complete, so an interrupted or failed build leaves
    nothing half-written for the next run to trust."""
    if all((folder / name).is_file() for name in files):
        return folder
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        build(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return folder
