"""What one job of a Hydra multirun needs beyond a plain run: one torch thread per job, a GPU
of its own, and DDP that stays inside the job."""
from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO

from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)

# A GPU lock held for the life of this process (CUDA cannot switch devices once initialised).
_gpu_lock: IO | None = None


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_name() -> str | None:
    """The sweep directory's name in a Hydra multirun, else None."""
    if not in_multirun():
        return None
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().sweep.dir).name


def default_threads(cfg: DictConfig) -> None:
    """In a multirun, ``num_threads: null`` means one torch thread per job: parallel workers on
    one machine then never oversubscribe its cores."""
    if cfg.get("num_threads") is None and in_multirun():
        with open_dict(cfg):
            cfg.num_threads = 1


def visible_gpus() -> list[str]:
    """GPU ids this process may use, found without initialising CUDA."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def claim_gpu(lock_dir: str | Path, gpus: list[str] | None = None, wait_s: float = 0.5) -> str | None:
    """Takes one GPU for the rest of this process and makes it the only one CUDA sees.

    Each GPU has a lock file; a job waits until one is free, so several workers on a
    multi-GPU host (joblib, or submitit_local which starts every job at once) each train on
    their own device. The lock is released when the process exits.
    """
    global _gpu_lock
    if _gpu_lock is not None:
        return os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible_gpus() if gpus is None else gpus
    if len(gpus) <= 1:
        return None
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for gpu in gpus:
            handle = open(lock_dir / f"gpu{gpu}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            _gpu_lock = handle
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
            log.info("this job uses GPU %s only", gpu)
            return gpu
        time.sleep(wait_s)


def one_gpu_per_job(cfg: DictConfig) -> None:
    """In a multirun of single-device jobs, pins this worker to one free GPU (no-op on CPU, on
    one GPU, under DDP and under Slurm, which already hands each job its own GPUs)."""
    if not in_multirun() or not cfg.get("one_gpu_per_job", True) or "SLURM_JOB_ID" in os.environ:
        return
    if "LOCAL_RANK" in os.environ or str(cfg.trainer.get("devices", 1)) not in ("1", "auto"):
        return
    if str(cfg.trainer.get("accelerator", "auto")) not in ("auto", "gpu", "cuda"):
        return
    claim_gpu(Path(cfg.paths.get("cache_dir", ".")) / "gpu_locks")


def ddp_inside_multirun(cfg: DictConfig) -> None:
    """Lightning's ``ddp`` starts each rank by re-running the command line; inside a Hydra
    multirun that command is the whole sweep (a second sweep, or a crash inside a joblib
    worker). ``ddp_spawn`` starts the ranks from this job's own process instead."""
    strategy = cfg.trainer.get("strategy")
    if in_multirun() and isinstance(strategy, str) and strategy == "ddp":
        log.warning("trainer.strategy=ddp inside a multirun: using ddp_spawn so the ranks run this job only")
        with open_dict(cfg):
            cfg.trainer.strategy = "ddp_spawn"
        # A joblib (loky) worker's default start method is "loky", which the spawned ranks
        # cannot restore: make it a standard one before Lightning starts them.
        if multiprocessing.get_start_method(allow_none=True) not in (None, "fork", "spawn", "forkserver"):
            multiprocessing.set_start_method("spawn", force=True)
