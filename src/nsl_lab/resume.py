"""Resuming an interrupted run: where its checkpoint lives, which one to load, and the logged
history to keep."""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parameter import is_lazy

from nsl_lab.errors import ConfigError
from nsl_lab.files import METRICS_FILE, RESOLVED_CONFIG_FILE, read_json

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
#: the checkpoint's copy of the CSV log's rows up to its epoch
LOGGED_HISTORY_KEY = "nsl_lab_logged_history"


def checkpoint_dir(cfg: DictConfig, output_dir: str | Path) -> Path:
    """``<run dir>/checkpoints/<digest of the resolved config>``: a run resumes only its own
    configuration, never a checkpoint another configuration left in the same directory."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.pop("ckpt_path", None)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(output_dir) / CHECKPOINT_DIR / digest


def read_checkpoint(path: str | Path, setting: str = "ckpt_path") -> dict[str, Any]:
    """A Lightning checkpoint loaded with ``weights_only=True``, or one line saying why not."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{setting}={str(path)!r}: no such file; give a checkpoint written by nsl_lab "
                          "(<run dir>/checkpoints/<digest>/last.ckpt), 'last' or null", setting)
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same bad input
        raise ConfigError(f"{setting}={str(path)!r} is not a checkpoint nsl_lab can read "
                          f"({type(error).__name__}); give a last.ckpt written by nsl_lab", setting) from None
    if not isinstance(stored, dict) or "state_dict" not in stored or "epoch" not in stored:
        raise ConfigError(f"{setting}={str(path)!r} is not a Lightning checkpoint (no state_dict / epoch)", setting)
    return stored


def check_checkpoint_fits(path: str, model: torch.nn.Module, max_epochs: int | None) -> None:
    """The checkpoint at ``path`` resumes ``model``: same weight shapes, an epoch within
    ``max_epochs``. Checked before the run writes its files (Lightning finds out only in ``fit``,
    in a traceback)."""
    stored = read_checkpoint(path)
    own = model.state_dict()
    for key, value in stored["state_dict"].items():
        if key not in own or is_lazy(own[key]) or not hasattr(value, "shape"):
            continue  # a lazy module's weights take their shape from the checkpoint
        if tuple(value.shape) != tuple(own[key].shape):
            raise ConfigError(f"ckpt_path={path!r} holds another model's weights ({key}: {list(value.shape)} there, "
                              f"{list(own[key].shape)} here); resume with the settings it was trained with", "ckpt_path")
    epoch = int(stored["epoch"])
    if max_epochs not in (None, -1) and epoch > max_epochs:
        raise ConfigError(f"ckpt_path={path!r} was saved at epoch {epoch}, past trainer.max_epochs={max_epochs}; "
                          "allowed: trainer.max_epochs >= the checkpoint's epoch", "trainer.max_epochs")


def finished_metrics(cfg: DictConfig, output_dir: str | Path) -> dict | None:
    """The metrics of this very configuration when it already finished in ``output_dir``."""
    resolved = Path(output_dir) / RESOLVED_CONFIG_FILE
    if not resolved.is_file() or resolved.read_text() != OmegaConf.to_yaml(cfg, resolve=True):
        return None  # another configuration ran here: train again
    return read_json(Path(output_dir) / METRICS_FILE)


def resume_path(cfg: DictConfig, output_dir: str | Path) -> str | None:
    """``ckpt_path`` for ``Trainer.fit``: a configured path; ``last`` or null: the ``last.ckpt``
    an interrupted run of this same configuration left in this run directory (null: if any;
    not the kept checkpoint of a finished run of it: a rerun of a finished run trains again,
    though one interrupted in turn resumes its own newer checkpoint)."""
    configured = cfg.get("ckpt_path")
    if configured is not None and not isinstance(configured, str):
        raise ConfigError(f"ckpt_path={configured!r} is not allowed; give a checkpoint's path, 'last' or null",
                          "ckpt_path")
    last = checkpoint_dir(cfg, output_dir) / "last.ckpt"
    if configured and configured != "last":
        read_checkpoint(configured)
        return str(configured)
    if last.is_file():
        metrics = Path(output_dir) / METRICS_FILE
        if (configured is None and finished_metrics(cfg, output_dir) is not None
                and last.stat().st_mtime_ns <= metrics.stat().st_mtime_ns):
            log.info("this configuration finished in %s: training again from the start (its kept %s is not "
                     "resumed; ckpt_path=last resumes it)", output_dir, last)
            return None
        log.info("resuming from %s", last)
        return str(last)
    others = [p for p in last.parent.parent.glob("*/last.ckpt") if p != last] if last.parent.parent.is_dir() else []
    if others:
        log.info("not resuming from %s: another configuration's checkpoint (this one's would be %s)", others[0], last)
    if configured == "last":
        raise ConfigError(f"ckpt_path=last but this configuration has no checkpoint yet: {last} does not exist",
                          "ckpt_path")
    return None


def drop_checkpoints(cfg: DictConfig, output_dir: str | Path) -> None:
    """After a job finished (metrics.json written) its checkpoint is never needed again: a
    re-launched sweep skips the job. ``checkpoint.keep=true`` keeps it."""
    if not (cfg.get("checkpoint") or {}).get("keep", False):
        folder = checkpoint_dir(cfg, output_dir)
        shutil.rmtree(folder, ignore_errors=True)
        if folder.parent.is_dir() and not any(folder.parent.iterdir()):
            folder.parent.rmdir()


def logged_history(csv_path: str | Path, last_epoch: int) -> list[dict[str, str]]:
    """The rows of a CSV log up to and including ``last_epoch`` (those a checkpoint covers),
    as written; rows of the epochs after it are logged again by the resumed run."""
    path = Path(csv_path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{key: value for key, value in row.items() if value not in ("", None)}
            for row in rows if float(row.get("epoch") or 0) <= last_epoch]


def restore_logged_history(logger: Any, ckpt_path: str | None) -> None:
    """A resumed run's CSV logger starts from the rows logged before its checkpoint (Lightning's
    CSV writer would otherwise delete them): those the checkpoint holds
    (:class:`~nsl_lab.callbacks.LastCheckpoint` stores them), so that another configuration
    run in the same folder since cannot lend its rows; for an older checkpoint, the log's."""
    from pytorch_lightning.loggers import CSVLogger

    # (no hasattr(logger, "experiment"): reading that property creates the writer, which deletes the file)
    if ckpt_path is None or not isinstance(logger, CSVLogger):
        return
    stored = read_checkpoint(ckpt_path)
    rows = stored.get(LOGGED_HISTORY_KEY)
    if rows is None:
        rows = logged_history(Path(logger.log_dir) / "metrics.csv", int(stored["epoch"]))
    writer = logger.experiment  # creating the writer removes the old file
    writer.metrics.extend(rows)
