"""One training run from a composed config: the body of ``nsl-train`` / ``scripts/train.py``."""
from __future__ import annotations

import inspect
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from nsl_lab.attacks import RobustAccuracy
from nsl_lab.callbacks import JobClock, LastCheckpoint
from nsl_lab.compatibility import check_compatibility
from nsl_lab.context import LabeledSplitsSource
from nsl_lab.errors import ConfigError, check_flag, check_integer, check_range, config_scope
from nsl_lab.files import (METRICS_FILE, MODEL_FILE, RESOLVED_CONFIG_FILE, RUN_OVERRIDES_FILE, save_tensors, write_json,
                           write_text)
from nsl_lab.loggers import finish as finish_logger
from nsl_lab.modules.learner import StructuredLearner
from nsl_lab.probes import check_probe_settings, probe_encoder
from nsl_lab.resume import check_checkpoint_fits, checkpoint_dir, restore_logged_history, resume_path
from nsl_lab.saved_runs import initialise_from, locate

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


def write_run_overrides(output_dir: Path) -> None:
    """Under Hydra, ``overrides.json`` beside the resolved config: this run's command-line
    overrides and group choices, which scripts/report.py labels a finished run by (Hydra
    rewrites ``.hydra/`` whenever a job starts, a failed rerun in the folder too)."""
    if not HydraConfig.initialized():
        return
    hydra = HydraConfig.get()
    write_json(output_dir / RUN_OVERRIDES_FILE, {
        "overrides": [str(o) for o in hydra.overrides.task],
        "choices": {str(group): None if option is None else str(option)
                    for group, option in hydra.runtime.choices.items()},
    })


def quiet_lightning() -> None:
    """Lightning's per-run notices (GPU/TPU availability, tips, deprecations) say nothing
    about the run: keep them out of every log."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (r".*LeafSpec.*", r".*does not have many workers.*", r".*smaller than the logging interval.*"):
        warnings.filterwarnings("ignore", message=message)


#: yes/no settings, checked before any data loads (a string such as 'off' would count as true;
#: the learner and the robust evaluation check theirs again when built, after the data)
RUN_FLAGS = ("checkpoint.save_model", "checkpoint.keep", "eval.sanity_checks", "learner.restore_best")


def check_run_settings(cfg: DictConfig) -> None:
    """Top-level, optimizer and trainer settings, checked before anything is written or loaded
    (torch and Lightning would reject some only at ``fit``, in a traceback)."""
    check_integer("seed", cfg.get("seed"), 0)
    check_integer("num_threads", cfg.get("num_threads"), 1, optional=True)
    for key in RUN_FLAGS:
        if OmegaConf.select(cfg, key) is not None:
            check_flag(key, OmegaConf.select(cfg, key))
    for key in ("lr", "weight_decay"):
        if (cfg.get("optimizer") or {}).get(key) is not None:
            check_range(f"optimizer.{key}", cfg.optimizer[key], 0.0)
    trainer = cfg.get("trainer") or {}
    for key in ("max_epochs", "max_steps"):
        value = trainer.get(key)
        if value is not None and value != -1 and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"trainer.{key}={value!r} is not allowed; it must be an integer >= 1, or -1 for no limit",
                              f"trainer.{key}")
    accelerator = trainer.get("accelerator")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator!r} but torch sees no CUDA GPU here; allowed on this "
                          "machine: cpu, auto", "trainer.accelerator")


def learner_class(cfg: DictConfig) -> type[StructuredLearner]:
    """The class ``learner._target_`` names (a config saved before the learner group: the
    supervised learner)."""
    target = (cfg.get("learner") or {}).get("_target_")
    if target is None:
        return StructuredLearner
    try:
        found = get_class(str(target))
    except Exception:  # noqa: BLE001 - Hydra's import errors, in one line
        raise ConfigError(f"learner._target_={target!r} cannot be imported; allowed: a StructuredLearner "
                          "subclass, e.g. nsl_lab.modules.RepresentationLearner", "learner._target_") from None
    if not (isinstance(found, type) and issubclass(found, StructuredLearner)):
        raise ConfigError(f"learner._target_={target!r} is not a StructuredLearner subclass", "learner._target_")
    return found


LEARNER_ARGUMENTS_FROM_RUN = ("self", "backbone", "regularizers", "num_classes", "optimizer")


def check_learner(cfg: DictConfig, learner_type: type[StructuredLearner], regularizers: dict[str, Any]) -> None:
    """A learner, its regularizers and the run's other settings that cannot work together,
    before any data is loaded."""
    parameters = inspect.signature(learner_type.__init__).parameters
    allowed = [name for name, parameter in parameters.items() if name not in LEARNER_ARGUMENTS_FROM_RUN
               and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]
    takes_any = any(parameter.kind == parameter.VAR_KEYWORD for parameter in parameters.values())
    for name in (cfg.get("learner") or {}):
        if name != "_target_" and name not in allowed and not takes_any:
            raise ConfigError(f"learner.{name} is not a setting of {learner_type.__name__}; allowed: "
                              f"{', '.join(allowed) or 'none'}", f"learner.{name}")
    learner_type.check_regularizers(regularizers)
    if learner_type.validates:
        return
    if list((cfg.get("eval") or {}).get("eps") or []):
        raise ConfigError(f"eval.eps={list(cfg.eval.eps)} needs a trained classifier, and {learner_type.__name__} "
                          "trains none; fine-tune first (init_from=<this run's dir>) and evaluate that run",
                          "eval.eps")
    data_class = get_class(str(cfg.data._target_)) if "_target_" in (cfg.get("data") or {}) else None
    if data_class is not None and not issubclass(data_class, LabeledSplitsSource):
        raise ConfigError(f"{data_class.__name__} gives no labeled splits for probes (labeled_splits()); "
                          f"{learner_type.__name__} needs them after pretraining", "data")
    check_label_free = getattr(data_class, "check_label_free", None)
    if check_label_free is not None:  # settings where labels would choose the pretraining rows
        check_label_free(OmegaConf.to_container(cfg.data, resolve=True))


def probe_settings(cfg: DictConfig) -> dict[str, Any]:
    """The ``probe`` block as :func:`~nsl_lab.probes.probe_encoder` arguments, every value
    checked (before the pretraining they follow)."""
    settings = OmegaConf.to_container(cfg.get("probe") or {}, resolve=True)
    allowed = {"label_fracs", "seeds", "kinds", "layer", "c_grid", "k_grid"}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ConfigError(f"probe.{unknown[0]} is not a probe setting; allowed: {', '.join(sorted(allowed))}",
                          f"probe.{unknown[0]}")
    return check_probe_settings(**settings)


def train(cfg: DictConfig, output_dir: str | Path, started_at: float | None = None,
          cpu_started_at: float = 0.0) -> dict[str, float]:
    """Fits and tests one model; writes ``config_resolved.yaml``, ``model.pt`` (the tested
    weights) and ``metrics.json``; returns the metrics.

    Bad or incompatible settings stop before the run's files are written, most of them before
    any data is loaded; the logger is closed whatever happens.
    """
    output_dir = Path(output_dir)
    quiet_lightning()
    check_run_settings(cfg)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    regularizers = build_regularizers(cfg.get("regularizer"))
    check_compatibility(cfg, regularizers)
    learner_type = learner_class(cfg)
    check_learner(cfg, learner_type, regularizers)
    probes = {} if learner_type.validates else probe_settings(cfg)
    if cfg.get("init_from"):
        locate(cfg.init_from, "init_from")  # a wrong path fails now; the weights' shapes once the backbone exists
    ckpt_path = resume_path(cfg, output_dir)
    clock = JobClock(started_at, cpu_started_at)
    callbacks = build_callbacks(cfg, output_dir, clock)
    with config_scope("optimizer."):
        optimizer = instantiate(cfg.optimizer)
    try:  # built once on a stand-in parameter: a value torch rejects stops now, not at fit
        optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as error:
        raise ConfigError(f"optimizer: {str(error).splitlines()[0]}", "optimizer") from None
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    with config_scope("data."):
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
    with config_scope("backbone."):
        backbone = instantiate(cfg.backbone, in_features=datamodule.num_features, num_classes=datamodule.num_classes)
    if cfg.get("init_from"):
        initialise_from(backbone, cfg.init_from)
    with config_scope("learner."):
        settings = {k: v for k, v in (cfg.get("learner") or {}).items() if k != "_target_"}
        learner = learner_type(backbone, regularizers, num_classes=datamodule.num_classes, optimizer=optimizer,
                               **settings)
    if cfg.get("ckpt_path") not in (None, "last"):  # a named file; this config's own last.ckpt fits by construction
        check_checkpoint_fits(ckpt_path, learner, cfg.trainer.get("max_epochs"))
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    try:
        if logger:
            restore_logged_history(logger, ckpt_path)
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        # "auto": a progress bar on a terminal only, never in a log file.
        progress = cfg.trainer.get("enable_progress_bar", "auto")
        progress = sys.stderr.isatty() if progress == "auto" else bool(progress)
        # A label-free fit has nothing to validate: no validation loop at all.
        no_validation = {} if learner_type.validates else {"limit_val_batches": 0}
        with config_scope("trainer."):
            trainer: pl.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks,
                                              enable_progress_bar=progress, **no_validation)
        # Written once everything is built from the settings: a bad value rerun in a finished
        # run's directory leaves that run's config beside its weights and metrics.
        write_text(output_dir / RESOLVED_CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
        write_run_overrides(output_dir)
        # `deterministic` also makes torch fill every new tensor with NaN, a debugging aid that
        # costs a memory pass per allocation (~1.5 ms of a 30 ms Cora step) and changes no result.
        torch.utils.deterministic.fill_uninitialized_memory = False
        log.info("backbone: %r", learner.backbone)
        for name, regularizer in learner.regularizers.items():
            log.info("regularizer.%s: %r", name, regularizer)

        start = time.perf_counter()
        trainer.fit(learner, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        fit_seconds = time.perf_counter() - start
        metrics: dict[str, float] = {
            "seed": int(cfg.seed),
            "n_labeled": int(getattr(datamodule, "n_labeled", -1)),
            "fit_seconds": round(fit_seconds, 4),
            "epochs": int(trainer.current_epoch),
        }
        save_model = trainer.is_global_zero and (cfg.get("checkpoint") or {}).get("save_model", True)
        if learner_type.validates:
            metrics.update(validate_and_test(trainer, learner, datamodule))
        else:  # the labels come only now, to the probes on the frozen encoder
            if save_model:  # first: a failing probe loses no pretraining
                save_tensors(output_dir / MODEL_FILE, learner.backbone.state_dict())
            # Lightning moved the module back to the CPU at the end of the fit: probe on its device.
            metrics.update(probe_encoder(learner.backbone, datamodule.labeled_splits(), **probes,
                                         own_train=getattr(datamodule, "labeled_index", None),
                                         device=trainer.strategy.root_device, progress=progress))
        metrics.update(clock.metrics())
        if trainer.is_global_zero:
            if save_model and learner_type.validates:  # the tested weights (best epoch's, after the test)
                save_tensors(output_dir / MODEL_FILE, learner.backbone.state_dict())
            write_json(output_dir / METRICS_FILE, metrics)
    finally:
        finish_logger(logger)
    return metrics


def validate_and_test(trainer: pl.Trainer, learner: StructuredLearner, datamodule: pl.LightningDataModule
                      ) -> dict[str, float]:
    """``val/acc`` of the weights the test stage uses (validated now if they never were) and
    the test stage's metrics."""
    val_acc = learner.tested_val_acc()
    if val_acc is None:  # the weights to be tested (the current ones) were never validated
        trainer.validate(learner, datamodule=datamodule, verbose=False)
        val_acc = learner.last_val_acc
    tested = trainer.test(learner, datamodule=datamodule, verbose=False)
    return {"val/acc": float(val_acc), **{key: float(value) for key, value in (tested[0] if tested else {}).items()}}


def summary_line(metrics: dict[str, float], output_dir: str | Path) -> str:
    """The one line a finished run prints."""
    parts = [f"{key}={metrics[key]:.4f}" for key in ("test/acc", "val/acc") if key in metrics]
    robust = sorted(key for key in metrics if key.startswith("test/robust_acc/"))
    parts += [f"{key.removeprefix('test/')}={metrics[key]:.4f}" for key in robust]
    return f"nsl_lab: {' '.join(parts)} -> {output_dir}"
