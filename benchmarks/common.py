"""Shared plumbing for benchmarks: quiet runs, JSON + Markdown output."""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
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


def _number(text: str, kind: type, allowed: str, fits: Callable[[float], bool]) -> float:
    """``text`` as a ``kind`` (int or float) that ``fits``, else an argparse error naming ``allowed``."""
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or not fits(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed; it must be {allowed}")
    return value


def positive_int(text: str) -> int:
    """argparse ``type=``: an integer >= 1 (counts, jobs, threads, steps, epochs, repeats)."""
    return _number(text, int, "an integer >= 1", lambda v: v >= 1)


def non_negative_int(text: str) -> int:
    """argparse ``type=``: an integer >= 0 (seeds)."""
    return _number(text, int, "an integer >= 0", lambda v: v >= 0)


def non_negative_float(text: str) -> float:
    """argparse ``type=``: a number >= 0 (attack radii, class separations)."""
    return _number(text, float, "a number >= 0", lambda v: v >= 0)


def label_fraction(text: str) -> str:
    """argparse ``type=``: a label fraction in (0, 1], kept as typed (results and caches key on it)."""
    _number(text, float, "a number with 0 < fraction <= 1", lambda v: 0 < v <= 1)
    return text


def positive_float_text(text: str) -> str:
    """argparse ``type=``: a number > 0 (a learning rate), kept as typed (caches key on it)."""
    _number(text, float, "a number > 0", lambda v: v > 0)
    return text


def run_main(main: Callable[[], None]) -> None:
    """Runs a benchmark's ``main``: an nsl_lab error found once work began (a ``ConfigError`` naming
    a setting, raised here or in a worker process) is one ``nsl_lab: error: ...`` line and exit 2."""
    from nsl_lab.errors import one_line_errors

    with one_line_errors():
        main()


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
