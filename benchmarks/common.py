"""Shared plumbing for benchmarks: quiet runs, JSON + Markdown output."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import subprocess
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
Job = TypeVar("Job")
Row = TypeVar("Row")


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "nsl_lab"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("NSL_LAB_DATA", str(HERE.parent.parent / "shared" / "data"))


def run_jobs(function: Callable[[Job], Row], jobs: Sequence[Job], workers: int) -> Iterator[Row]:
    """``function(job)`` for every job, yielded as each finishes (so a cache records it at once):
    in this process when ``workers`` is 1 or there is one job, else in ``workers`` spawned processes."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(function, jobs)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        for future in as_completed([pool.submit(function, job) for job in jobs]):
            yield future.result()


def machine() -> dict[str, str]:
    def git(*command: str) -> str:
        return subprocess.run(["git", *command], capture_output=True, text=True, cwd=HERE).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if commit and git("status", "--porcelain", "--", "../src", "../conf"):
        commit += "-dirty"  # the figures come from code that no commit holds
    return {
        "cpu_count": str(os.cpu_count()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit or "uncommitted",
        # Timings depend on both: a shared machine's load, and torch's threads (OMP_NUM_THREADS).
        "torch_threads": str(torch.get_num_threads()),
        "load_average": " ".join(f"{load:.2f}" for load in os.getloadavg()),
    }


def fingerprint(*folders: str) -> str:
    """A hash of the project's code and configs: cached runs are reused only while it holds."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted((HERE.parent / folder).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".yaml"):
                digest.update(str(path.relative_to(HERE.parent)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class RunCache:
    """Finished runs appended to a JSON Lines file, so an interrupted benchmark resumes
    and several invocations (e.g. one per label setting) can share the work."""

    def __init__(self, name: str, key: str, carry: tuple[str, ...] = ()) -> None:
        """``carry``: earlier keys whose runs are reused too (a study spread over sessions whose
        code changed only where its runs do not read); each row keeps the key it was run under."""
        RESULTS.mkdir(exist_ok=True)
        self.path, self.key = RESULTS / f"{name}.runs.jsonl", key
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        self.rows = [row for row in map(json.loads, lines) if row.get("fingerprint") in (key, *carry)]
        self.rows.sort(key=lambda row: row["fingerprint"] != key)  # a run under today's code wins over a carried one

    def find(self, **match) -> dict | None:
        return next((r for r in self.rows if all(r.get(k) == v for k, v in match.items())), None)

    def add(self, row: dict) -> None:
        row = {**row, "fingerprint": self.key}
        self.rows.append(row)
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)
