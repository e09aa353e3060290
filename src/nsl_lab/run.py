"""One training run from a composed config: the body of ``scripts/train.py``."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from nsl_lab.errors import ConfigError
from nsl_lab.loggers import finish as finish_logger
from nsl_lab.modules.learner import StructuredLearner
from nsl_lab.sweep import JobClock, resume_path, trainer_arguments

log = logging.getLogger(__name__)


def find_config_error(error: BaseException) -> ConfigError | None:
    """The ConfigError behind ``error`` (Hydra wraps errors raised in constructors)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, ConfigError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def build_regularizers(cfg: DictConfig | None) -> dict[str, Any]:
    if not cfg:
        return {}
    regularizers = {}
    for name, node in cfg.items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"regularizer.{name} must be a config with a _target_, got {node!r}")
        regularizers[str(name)] = instantiate(node)
    return regularizers


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """Test-stage callbacks: robust accuracy when ``eval.attack.eps`` lists epsilons."""
    from nsl_lab.attacks import RobustAccuracy

    attack = cfg.get("eval", {}).get("attack")
    robust = RobustAccuracy.from_config(**OmegaConf.to_container(attack, resolve=True)) if attack else None
    return [robust] if robust is not None else []


def write_json(path: Path, payload: dict[str, Any]) -> None:
    # Write then rename, so a crash never leaves a half-written file behind.
    partial = path.with_suffix(path.suffix + ".partial")
    partial.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    partial.replace(path)


def train(cfg: DictConfig, output_dir: str | Path) -> dict[str, float]:
    """Fits and tests one model; writes ``config_resolved.yaml`` and ``metrics.json``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    backbone = instantiate(cfg.backbone, in_features=datamodule.num_features, num_classes=datamodule.num_classes)
    learner = StructuredLearner(
        backbone,
        build_regularizers(cfg.get("regularizer")),
        num_classes=datamodule.num_classes,
        optimizer=instantiate(cfg.optimizer),
        **cfg.get("learner", {}),
    )
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    if logger:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    extra = trainer_arguments(cfg, output_dir)
    extra["callbacks"] = [*extra["callbacks"], *build_callbacks(cfg)]
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger, **extra)
    # `deterministic` also makes torch fill every new tensor with NaN, a debugging aid that
    # costs a memory pass per allocation (~1.5 ms of a 30 ms Cora step) and changes no result.
    torch.utils.deterministic.fill_uninitialized_memory = False
    log.info("backbone: %r", backbone)
    for regularizer in learner.regularizers.values():
        log.info("regularizer: %r", regularizer)

    start = time.perf_counter()
    trainer.fit(learner, datamodule=datamodule, ckpt_path=resume_path(cfg, output_dir), weights_only=True)
    fit_seconds = time.perf_counter() - start
    tested = trainer.test(learner, datamodule=datamodule, verbose=False)

    metrics: dict[str, float] = {
        "val/acc": float(learner.best_val_acc if learner.best_val_acc is not None else float("nan")),
        "seed": int(cfg.seed),
        "n_labeled": int(getattr(datamodule, "n_labeled", -1)),
        "fit_seconds": round(fit_seconds, 4),
        "epochs": int(trainer.current_epoch),
    }
    clock = next(c for c in trainer.callbacks if isinstance(c, JobClock))
    metrics.update(clock.metrics())
    for key, value in (tested[0] if tested else {}).items():
        metrics[key] = float(value)
    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)
    finish_logger(logger)
    return metrics
