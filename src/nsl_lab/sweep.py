"""What one job of a sweep needs beyond a plain run: threads, a GPU of its own, DDP that stays
inside the job, skipping finished work, resuming from a checkpoint and a marker when it fails.

Used by ``scripts/train.py`` (each Hydra job) and ``nsl_lab.run.train`` (callbacks, resume).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any

import psutil
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from nsl_lab.errors import ConfigError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
FAILED_FILE = "failed.json"
METRICS_FILE = "metrics.json"

# Jobs started in this process so far: loky (joblib) workers run many jobs, one after another.
_jobs_started_here = 0
_job_started_at: float | None = None
_job_cpu_at_start = 0.0
# A GPU lock held for the life of this process (CUDA cannot switch devices once initialised).
_gpu_lock: Any = None


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def start_job() -> None:
    """Marks the start of a job: the reference point of ``startup_seconds``."""
    global _jobs_started_here, _job_started_at, _job_cpu_at_start
    _jobs_started_here += 1
    _job_started_at = time.time()
    _job_cpu_at_start = time.process_time() if _jobs_started_here > 1 else 0.0


def startup_reference() -> float:
    """Process start for the first job of a process, else the job's own start (a reused worker)."""
    if _jobs_started_here <= 1 or _job_started_at is None:
        return psutil.Process().create_time()
    return _job_started_at


def job_cpu_seconds() -> float:
    """CPU seconds of this process spent on this job (with the imports for a process's first
    job): unlike wall time, it does not grow when other programs share the cores."""
    return time.process_time() - _job_cpu_at_start


class JobClock(pl.Callback):
    """Records wall (and CPU) seconds from process (or job) start to the first training step,
    the job's CPU seconds, and the epoch training started at (> 0 when it resumed)."""

    def __init__(self) -> None:
        self.startup_seconds: float | None = None
        self.startup_cpu_seconds: float | None = None
        self.start_epoch: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_epoch = int(trainer.current_epoch)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.startup_seconds is None:
            self.startup_seconds = time.time() - startup_reference()
            self.startup_cpu_seconds = job_cpu_seconds()

    def metrics(self) -> dict[str, float]:
        """Flat numbers for metrics.json (none under ddp_spawn, where the ranks hold them)."""
        found = {"startup_seconds": self.startup_seconds, "startup_cpu_seconds": self.startup_cpu_seconds,
                 "start_epoch": self.start_epoch, "cpu_seconds": job_cpu_seconds() if self.start_epoch is not None else None}
        return {key: round(value, 4) for key, value in found.items() if value is not None}


class ReseedOnFit(pl.Callback):
    """Re-seeds every generator from ``seed`` when fitting starts, as Lightning's DDP does in
    each rank: a single-process run then draws the same dropout masks and samples as every DDP
    rank, so ``trainer=ddp`` reproduces the single-process metrics on the same data."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            from lightning_fabric.utilities.seed import reset_seed

            reset_seed()


# -- threads and devices ----------------------------------------------------------------------
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


# -- finished, failed and resumed jobs -------------------------------------------------------------
def finished_metrics(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any] | None:
    """The metrics of this very configuration when it already finished in ``output_dir``."""
    output_dir = Path(output_dir)
    metrics, resolved = output_dir / METRICS_FILE, output_dir / "config_resolved.yaml"
    if not (metrics.is_file() and resolved.is_file()):
        return None
    if resolved.read_text() != OmegaConf.to_yaml(cfg, resolve=True):
        return None  # another configuration ran here: train again
    return json.loads(metrics.read_text())


def write_failure(output_dir: str | Path, error: BaseException, message: str | None = None) -> None:
    """Leaves ``failed.json`` (error and traceback) for scripts/report.py to list."""
    from nsl_lab.run import write_json

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / FAILED_FILE, {
        "error": type(error).__name__,
        "message": message or str(error),
        "traceback": "".join(traceback.format_exception(error)),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    })


def clear_failure(output_dir: str | Path) -> None:
    (Path(output_dir) / FAILED_FILE).unlink(missing_ok=True)


def checkpoint_dir(cfg: DictConfig, output_dir: str | Path) -> Path:
    """``<run dir>/checkpoints/<digest of the resolved config>``: a run resumes only its own
    configuration, never a checkpoint another configuration left in the same directory."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.pop("ckpt_path", None)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(output_dir) / CHECKPOINT_DIR / digest


class LastCheckpoint(pl.Callback):
    """Writes ``<dirpath>/last.ckpt`` every ``every_n_epochs`` epochs, after validation.

    Lightning's ModelCheckpoint with ``save_top_k=0`` writes ``last.ckpt`` only when training
    ends; a job killed before that would lose everything. The file is replaced atomically, so
    a kill while writing leaves the previous checkpoint intact.
    """

    def __init__(self, dirpath: str | Path, every_n_epochs: int) -> None:
        self.dirpath, self.every_n_epochs = Path(dirpath), int(every_n_epochs)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        partial = self.dirpath / "last.ckpt.partial"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            os.replace(partial, self.dirpath / "last.ckpt")


def checkpoint_callbacks(cfg: DictConfig, output_dir: str | Path) -> list[pl.Callback]:
    """``last.ckpt`` every ``checkpoint.every_n_epochs`` epochs (0 or no ``checkpoint``: none)."""
    every = int((cfg.get("checkpoint") or {}).get("every_n_epochs", 0) or 0)
    return [LastCheckpoint(checkpoint_dir(cfg, output_dir), every)] if every > 0 else []


def resume_path(cfg: DictConfig, output_dir: str | Path) -> str | None:
    """``ckpt_path`` for ``Trainer.fit``: a configured path; ``last`` or null: the ``last.ckpt``
    an interrupted run of this same configuration left in this run directory (null: if any)."""
    configured = cfg.get("ckpt_path")
    last = checkpoint_dir(cfg, output_dir) / "last.ckpt"
    if configured and configured != "last":
        return str(configured)
    if last.is_file():
        log.info("resuming from %s", last)
        return str(last)
    if configured == "last":
        raise ConfigError(f"ckpt_path=last but this configuration has no checkpoint yet: {last} does not exist")
    return None


def drop_checkpoints(cfg: DictConfig, output_dir: str | Path) -> None:
    """After a job finished (metrics.json written) its checkpoint is never needed again: a
    re-launched sweep skips the job. ``checkpoint.keep=true`` keeps it."""
    if not (cfg.get("checkpoint") or {}).get("keep", False):
        shutil.rmtree(checkpoint_dir(cfg, output_dir), ignore_errors=True)


def trainer_arguments(cfg: DictConfig, output_dir: str | Path) -> dict[str, Any]:
    """Callbacks and checkpointing switches added to ``cfg.trainer`` for one run."""
    return {"callbacks": [JobClock(), ReseedOnFit(), *checkpoint_callbacks(cfg, output_dir)]}
