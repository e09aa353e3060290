from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("NSL_LAB_DATA", REPO.parent / "shared" / "data")).resolve()

# One thread: the suite runs on 2 cores and subprocesses run beside it.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not (DATA_ROOT / "planetoid" / "Cora" / "raw").is_dir():
        pytest.fail(f"Cora raw files are needed under {DATA_ROOT}/planetoid/Cora/raw (set NSL_LAB_DATA)")
    return DATA_ROOT


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@dataclass
class Completed:
    """What a run left: exit code and its output (as ``subprocess.CompletedProcess`` names them)."""

    returncode: int
    stdout: str
    stderr: str


def run_train(args: list[str], run_dir: Path, cache: Path, data: Path | None = None, check: bool = True,
              in_process: bool = False):
    """Runs ``nsl-train`` on ``args`` in this process (or, ``in_process=False``, ``scripts/train.py``
    in a subprocess: for what only a fresh process shows); returns (Completed, metrics or None)."""
    env = {"NSL_LAB_CACHE": str(cache), "OMP_NUM_THREADS": "1", **({"NSL_LAB_DATA": str(data)} if data else {})}
    argv = [f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false", "num_threads=1", *args]
    if in_process:
        completed = _in_process(argv, env)
    else:
        command = [sys.executable, str(REPO / "scripts" / "train.py"), *argv]
        completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, cwd=REPO,
                                   timeout=300)
    if check and completed.returncode != 0:
        raise AssertionError(f"train.py failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    return completed, metrics


def _in_process(argv: list[str], env: dict[str, str]) -> Completed:
    from nsl_lab import cli

    saved_env = {key: os.environ.get(key) for key in env}
    saved_argv, out, err = sys.argv, io.StringIO(), io.StringIO()
    os.environ.update(env)
    sys.argv = ["nsl-train", *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved_argv
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return Completed(code, out.getvalue(), err.getvalue())
