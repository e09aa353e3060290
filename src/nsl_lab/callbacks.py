"""Lightning callbacks of a run: its clock, seeding and RNG state, checkpoints, loss guard,
weight averaging."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import _collect_rng_states, _set_rng_states, reset_seed
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.loggers import CSVLogger

from nsl_lab.errors import TrainingDiverged, check_range
from nsl_lab.resume import LOGGED_HISTORY_KEY, logged_history


class JobClock(pl.Callback):
    """Records wall and CPU seconds from ``started_at`` to the first training step, the job's
    CPU seconds, and the epoch training started at (> 0 when it resumed).

    Args:
        started_at: ``time.perf_counter()`` when the job began (for a process's first job:
            before its imports).
        cpu_started_at: ``time.process_time()`` at the same moment.
    """

    def __init__(self, started_at: float | None = None, cpu_started_at: float = 0.0) -> None:
        self.started_at = time.perf_counter() if started_at is None else started_at
        self.cpu_started_at = cpu_started_at
        self.startup_seconds: float | None = None
        self.startup_cpu_seconds: float | None = None
        self.start_epoch: int | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start_epoch = int(trainer.current_epoch)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.start_epoch is None:  # resumed from a checkpoint at its last epoch: nothing was left to train
            self.start_epoch = int(trainer.current_epoch)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.startup_seconds is None:
            self.startup_seconds = time.perf_counter() - self.started_at
            self.startup_cpu_seconds = time.process_time() - self.cpu_started_at

    def metrics(self) -> dict[str, float]:
        """Flat numbers for metrics.json (none under ddp_spawn, where the ranks hold them)."""
        cpu = time.process_time() - self.cpu_started_at if self.start_epoch is not None else None
        found = {"startup_seconds": self.startup_seconds, "startup_cpu_seconds": self.startup_cpu_seconds,
                 "start_epoch": self.start_epoch, "cpu_seconds": cpu}
        return {key: round(value, 4) for key, value in found.items() if value is not None}


class ReseedOnFit(pl.Callback):
    """Re-seeds every generator from ``seed`` when fitting starts, as Lightning's DDP does in
    each rank: a single-process run then draws the same dropout masks and samples as every DDP
    rank, so ``trainer=ddp`` reproduces the single-process metrics on the same data."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            reset_seed()


class RngState(pl.Callback):
    """Keeps torch's, numpy's and Python's global random states in every checkpoint and puts
    them back on resume (after :class:`ReseedOnFit`), so a resumed run draws the dropout masks
    and samples an uninterrupted one would have drawn."""

    def state_dict(self) -> dict[str, Any]:
        states = _collect_rng_states(include_cuda=torch.cuda.is_available())
        # numpy's and Python's states as tensors and plain values: loadable with weights_only=True.
        kind, keys, position, has_gauss, cached = states["numpy"]
        states["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "position": int(position),
                           "has_gauss": int(has_gauss), "cached": float(cached)}
        version, internal, gauss = states["python"]
        states["python"] = {"version": version, "internal": list(internal), "gauss": gauss}
        return states

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        import numpy as np

        states = dict(state_dict)
        numpy_state = states["numpy"]
        states["numpy"] = (numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                           numpy_state["has_gauss"], numpy_state["cached"])
        python_state = states["python"]
        states["python"] = (python_state["version"], tuple(python_state["internal"]), python_state["gauss"])
        if "torch.cuda" in states and not torch.cuda.is_available():
            states.pop("torch.cuda")
        _set_rng_states(states)


class LossGuard(pl.Callback):
    """Stops a run whose training loss is not finite or grew ``max_ratio`` times past its
    first value (a diverging optimizer), with one line naming the step and the loss.

    Args:
        max_ratio: how many times the first step's loss (at least 1) the loss may reach.
    """

    def __init__(self, max_ratio: float = 1e4) -> None:
        self.max_ratio = float(check_range("max_ratio", max_ratio, 1.0))
        self.first_loss: float | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach())
        if self.first_loss is None and math.isfinite(value):
            self.first_loss = value
        where = f"at epoch {trainer.current_epoch}, step {trainer.global_step}"
        if not math.isfinite(value):
            raise TrainingDiverged(f"train/loss={value} {where}: the loss is not finite; lower optimizer.lr "
                                   "or check the data")
        limit = self.max_ratio * max(abs(self.first_loss or 1.0), 1.0)
        if value > limit:
            raise TrainingDiverged(f"train/loss={value:.4g} {where} exploded past {self.max_ratio:g} x its first "
                                   f"value ({self.first_loss:.4g}); lower optimizer.lr (callbacks.loss_guard.max_ratio "
                                   "sets the limit)")

    def state_dict(self) -> dict[str, Any]:
        return {"first_loss": self.first_loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.first_loss = state_dict.get("first_loss")


class LastCheckpoint(pl.Callback):
    """Writes ``<dirpath>/last.ckpt`` every ``every_n_epochs`` epochs, after validation.

    Lightning's ModelCheckpoint with ``save_top_k=0`` writes ``last.ckpt`` only when training
    ends; a job killed before that would lose everything. The loggers are flushed first, and
    the CSV log's rows so far go into the checkpoint (a resumed run restores them from there,
    whatever ran in the folder since); the file is replaced atomically, so a kill while writing
    leaves the previous checkpoint intact.
    """

    def __init__(self, dirpath: str | Path, every_n_epochs: int) -> None:
        self.dirpath, self.every_n_epochs = Path(dirpath), int(every_n_epochs)
        self._history: list[dict[str, str]] | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        for logger in trainer.loggers:
            logger.save()
        csv_logs = [Path(logger.log_dir) / "metrics.csv" for logger in trainer.loggers if isinstance(logger, CSVLogger)]
        # Rank 0 writes the log and the checkpoint file; the other ranks need not read it.
        self._history = (logged_history(csv_logs[0], trainer.current_epoch)
                         if csv_logs and trainer.is_global_zero else None)
        partial = self.dirpath / "last.ckpt.partial"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            os.replace(partial, self.dirpath / "last.ckpt")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._history is not None:
            checkpoint[LOGGED_HISTORY_KEY] = self._history


class WeightAverage(EMAWeightAveraging):
    r"""Validates, tests and saves an exponential moving average of the weights instead of the
    last ones (Polyak averaging; for adversarial training, Gowal et al. 2020, "Uncovering the
    limits of adversarial training against norm-bounded adversarial examples", where it adds
    robust accuracy):

    .. math:: \bar w_1 = w_1, \qquad \bar w_t = d\,\bar w_{t-1} + (1 - d)\,w_t

    after every optimizer step :math:`t`, over parameters and buffers (batch-norm statistics);
    training itself follows the raw weights. Checkpoints hold both, so a resumed run averages
    on as an uninterrupted one.

    Lightning's ``EMAWeightAveraging``, with the averaged weights in place for the whole
    validation loop: Lightning swaps them back before the learner's epoch-end hook, which keeps
    the best epoch's weights for ``learner.restore_best`` and would keep the raw ones.

    Args:
        decay: :math:`d` in [0, 1), 0.995 by default (the average's half-life: about
            :math:`\ln 2 / (1 - d)` = 138 steps).
    """

    def __init__(self, decay: float = 0.995) -> None:
        decay = float(check_range("decay", decay, 0.0, 1.0, high_inclusive=False))
        super().__init__(decay=decay)
        self.decay = decay

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass  # swapped for the whole loop in on_validation_start / on_validation_end

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(decay={self.decay:g})"
