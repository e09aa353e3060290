"""One training run from a composed config: the body of ``nsl-train`` / ``scripts/train.py``."""
from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nsl_lab.attacks import RobustAccuracy
from nsl_lab.callbacks import JobClock, LastCheckpoint
from nsl_lab.compatibility import check_compatibility
from nsl_lab.errors import ConfigError, check_integer, config_scope
from nsl_lab.files import METRICS_FILE, MODEL_FILE, RESOLVED_CONFIG_FILE, save_tensors, write_json, write_text
from nsl_lab.loggers import finish as finish_logger
from nsl_lab.modules.learner import StructuredLearner
from nsl_lab.resume import checkpoint_dir, restore_logged_history, resume_path

log = logging.getLogger(__name__)


def build_regularizers(cfg: DictConfig | None) -> dict[str, Any]:
    """Every ``regularizer.<name>`` node instantiated, errors named by their config path."""
    if not cfg:
        return {}
    regularizers = {}
    for name, node in cfg.items():
        if isinstance(node, DictConfig) and "_target_" not in node:
            # A preset's settings for a term that the chosen regularizer option does not include.
            settings = OmegaConf.to_container(node)
            raise ConfigError(f"regularizer.{name} has settings {settings} but no term: the chosen regularizer leaves "
                              f"'{name}' out; include it (e.g. regularizer='[...,{name}]') or drop the settings "
                              f"with ~regularizer.{name}", f"regularizer.{name}")
        if not isinstance(node, DictConfig):
            raise ConfigError(f"regularizer.{name} must be a config with a _target_, got {node!r}", f"regularizer.{name}")
        with config_scope(f"regularizer.{name}."):
            regularizers[str(name)] = instantiate(node)
    return regularizers


def build_callbacks(cfg: DictConfig, output_dir: Path, clock: JobClock) -> list[pl.Callback]:
    """The run's callbacks: its clock, the ``callbacks`` group, ``last.ckpt`` every
    ``checkpoint.every_n_epochs`` epochs, and robust accuracy when ``eval.eps`` lists
    epsilons."""
    callbacks: list[pl.Callback] = [clock]
    for name, node in (cfg.get("callbacks") or {}).items():
        with config_scope(f"callbacks.{name}."):
            callbacks.append(instantiate(node))
    every = (cfg.get("checkpoint") or {}).get("every_n_epochs", 0) or 0
    check_integer("checkpoint.every_n_epochs", every, 0)
    if every > 0:
        callbacks.append(LastCheckpoint(checkpoint_dir(cfg, output_dir), every))
    evaluation = cfg.get("eval")
    if evaluation:
        with config_scope("eval."):
            robust = RobustAccuracy.from_config(**OmegaConf.to_container(evaluation, resolve=True))
        if robust is not None:
            callbacks.append(robust)
    return callbacks


def quiet_lightning() -> None:
    """Lightning's per-run notices (GPU/TPU availability, tips, deprecations) say nothing
    about the run: keep them out of every log."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (r".*LeafSpec.*", r".*does not have many workers.*", r".*smaller than the logging interval.*"):
        warnings.filterwarnings("ignore", message=message)


def check_run_settings(cfg: DictConfig) -> None:
    """Top-level settings, checked before anything is written or loaded."""
    check_integer("seed", cfg.get("seed"), 0)
    check_integer("num_threads", cfg.get("num_threads"), 1, optional=True)


def train(cfg: DictConfig, output_dir: str | Path, started_at: float | None = None,
          cpu_started_at: float = 0.0) -> dict[str, float]:
    """Fits and tests one model; writes ``config_resolved.yaml``, ``model.pt`` (the tested
    weights) and ``metrics.json``; returns the metrics.

    Incompatible settings stop before any data is loaded; the logger is closed whatever
    happens.
    """
    output_dir = Path(output_dir)
    quiet_lightning()
    check_run_settings(cfg)
    write_text(output_dir / RESOLVED_CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    regularizers = build_regularizers(cfg.get("regularizer"))
    check_compatibility(cfg, regularizers)
    ckpt_path = resume_path(cfg, output_dir)
    clock = JobClock(started_at, cpu_started_at)
    callbacks = build_callbacks(cfg, output_dir, clock)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    with config_scope("data."):
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
    with config_scope("backbone."):
        backbone = instantiate(cfg.backbone, in_features=datamodule.num_features, num_classes=datamodule.num_classes)
    with config_scope("optimizer."):
        optimizer = instantiate(cfg.optimizer)
    with config_scope("learner."):
        learner = StructuredLearner(backbone, regularizers, num_classes=datamodule.num_classes, optimizer=optimizer,
                                    **cfg.get("learner", {}))
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    try:
        if logger:
            restore_logged_history(logger, ckpt_path)
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        # "auto": a progress bar on a terminal only, never in a log file.
        progress = cfg.trainer.get("enable_progress_bar", "auto")
        progress = sys.stderr.isatty() if progress == "auto" else bool(progress)
        with config_scope("trainer."):
            trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks,
                                              enable_progress_bar=progress)
        # `deterministic` also makes torch fill every new tensor with NaN, a debugging aid that
        # costs a memory pass per allocation (~1.5 ms of a 30 ms Cora step) and changes no result.
        torch.utils.deterministic.fill_uninitialized_memory = False
        log.info("backbone: %r", learner.backbone)
        for name, regularizer in learner.regularizers.items():
            log.info("regularizer.%s: %r", name, regularizer)

        start = time.perf_counter()
        trainer.fit(learner, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        fit_seconds = time.perf_counter() - start
        val_acc = learner.tested_val_acc()
        if val_acc is None:  # the weights to be tested (the current ones) were never validated
            trainer.validate(learner, datamodule=datamodule, verbose=False)
            val_acc = learner.last_val_acc
        tested = trainer.test(learner, datamodule=datamodule, verbose=False)

        metrics: dict[str, float] = {
            "val/acc": float(val_acc),
            "seed": int(cfg.seed),
            "n_labeled": int(getattr(datamodule, "n_labeled", -1)),
            "fit_seconds": round(fit_seconds, 4),
            "epochs": int(trainer.current_epoch),
        }
        metrics.update(clock.metrics())
        for key, value in (tested[0] if tested else {}).items():
            metrics[key] = float(value)
        if trainer.is_global_zero:
            if (cfg.get("checkpoint") or {}).get("save_model", True):
                save_tensors(output_dir / MODEL_FILE, learner.backbone.state_dict())
            write_json(output_dir / METRICS_FILE, metrics)
    finally:
        finish_logger(logger)
    return metrics


def summary_line(metrics: dict[str, float], output_dir: str | Path) -> str:
    """The one line a finished run prints."""
    parts = [f"{key}={metrics[key]:.4f}" for key in ("test/acc", "val/acc") if key in metrics]
    robust = sorted(key for key in metrics if key.startswith("test/robust_acc/"))
    parts += [f"{key.removeprefix('test/')}={metrics[key]:.4f}" for key in robust]
    return f"nsl_lab: {' '.join(parts)} -> {output_dir}"
