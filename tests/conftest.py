from __future__ import annotations

import json
import os
import subprocess
import sys
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


def run_train(args: list[str], run_dir: Path, cache: Path, data: Path | None = None, check: bool = True):
    """Runs scripts/train.py in a subprocess; returns (completed process, metrics or None)."""
    env = {**os.environ, "NSL_LAB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    if data is not None:
        env["NSL_LAB_DATA"] = str(data)
    command = [
        sys.executable, str(REPO / "scripts" / "train.py"), f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false", "num_threads=1", *args,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    if check and completed.returncode != 0:
        raise AssertionError(f"train.py failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    return completed, metrics
