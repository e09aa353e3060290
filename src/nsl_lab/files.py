"""Files a run writes and reads back, written atomically; content digests for caches.

A leaf module: every other part that writes ``metrics.json``, ``failed.json``, a cache entry
or a saved model does so through here, so a crash or a kill never leaves half a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

METRICS_FILE = "metrics.json"
FAILED_FILE = "failed.json"
RESOLVED_CONFIG_FILE = "config_resolved.yaml"
#: a Hydra job's command-line overrides and group choices, written beside the resolved config
#: (Hydra's own record in .hydra/ is rewritten by every later attempt in the folder)
RUN_OVERRIDES_FILE = "overrides.json"
MODEL_FILE = "model.pt"


def default_cache_dir() -> str:
    """Where processed data and graphs go: ``$NSL_LAB_CACHE``, else ``~/.cache/nsl_lab``."""
    return os.environ.get("NSL_LAB_CACHE", str(Path.home() / ".cache" / "nsl_lab"))


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Calls ``write(partial)`` on a sibling file, then renames it over ``path``: a reader
    sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda partial: partial.write_text(text))


def unwritable_reason(path: str | Path) -> str | None:
    """Why a file cannot be written at ``path`` (its folder created if missing), or ``None``:
    checked before long work whose result goes there."""
    path = Path(path)
    if path.is_dir():
        return "it is a folder"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as error:
        return f"its folder cannot be written ({error.strerror or type(error).__name__})"
    return None


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    return write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def save_tensors(path: str | Path, payload: Any) -> Path:
    """``torch.save`` of tensors and plain values, loadable with ``weights_only=True``."""
    import torch

    return atomic_write(path, lambda partial: torch.save(payload, partial))


def write_failure(output_dir: str | Path, error: BaseException, message: str | None = None) -> Path:
    """Leaves ``failed.json`` (error, one-line message, traceback) for scripts/report.py."""
    return write_json(Path(output_dir) / FAILED_FILE, {
        "error": type(error).__name__,
        "message": message or str(error),
        "traceback": "".join(traceback.format_exception(error)),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    })


def clear_failure(output_dir: str | Path) -> None:
    (Path(output_dir) / FAILED_FILE).unlink(missing_ok=True)


def read_json(path: str | Path) -> dict[str, Any] | None:
    """A JSON file's content, or ``None`` when it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def file_digest(paths: Iterable[str | Path]) -> str:
    """A short digest of the files' names, sizes and contents (sha256): a cache key that
    changes whenever a file does, wherever it lives."""
    digest = hashlib.sha256()
    for path in paths:
        path = Path(path)
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]
