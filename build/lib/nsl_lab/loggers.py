"""Weights & Biases without waiting on the network, and a reader for its offline run files."""
from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from nsl_lab.errors import check_choice
from nsl_lab.multirun import sweep_name

Mode = Literal["online", "offline", "disabled"]

# wandb's run file (run-<id>.wandb) is a LevelDB-style log: a 7-byte file header, then 32 KiB
# blocks of chunks, each with a 7-byte header (crc32c, length, type) and a protobuf Record.
FILE_HEADER_SIZE = 7
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_mode(mode: str | None = None) -> str:
    """``mode``, else ``$WANDB_MODE``, else online with ``$WANDB_API_KEY`` and offline without."""
    mode = mode or os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    if mode == "dryrun":
        mode = "offline"
    return check_choice("logger.mode", mode, Mode)


def wandb_logger(
    save_dir: str,
    project: str = "nsl_lab",
    mode: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    name: str | None = None,
    init_timeout: float = 60.0,
    **kwargs: Any,
):
    """A Lightning ``WandbLogger`` that never blocks a run on the network; in a multirun every
    job of the sweep lands in one group, the sweep directory's name.

    Without an API key the run is written offline under ``<save_dir>/wandb`` (upload later with
    ``wandb sync <save_dir>/wandb/offline-run-*``). Online, ``init_timeout`` bounds the wait
    for the service.
    """
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    mode = wandb_mode(mode)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        save_dir=str(save_dir), project=project, name=name, group=group or sweep_name(),
        tags=[str(tag)[:64] for tag in tags if not str(tag).endswith(('=None', '=[]'))], mode=mode,
        settings=wandb.Settings(init_timeout=init_timeout, silent=True, x_disable_stats=True),
        **kwargs,
    )


def read_wandb_records(path: str | Path) -> Iterator[Any]:
    """Every protobuf ``Record`` of a wandb run file (``run-<id>.wandb``), in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    position, pending = FILE_HEADER_SIZE, b""
    while position + CHUNK_HEADER.size <= len(data):
        left_in_block = BLOCK_SIZE - (position % BLOCK_SIZE)
        if left_in_block < CHUNK_HEADER.size:  # a block's tail too short for a header is padding
            position += left_in_block
            continue
        _, length, kind = CHUNK_HEADER.unpack_from(data, position)
        start = position + CHUNK_HEADER.size
        if start + length > len(data):  # still being written
            return
        chunk, position = data[start:start + length], start + length
        if kind == 0 and length == 0:  # zero padding
            position += BLOCK_SIZE - (position % BLOCK_SIZE) if position % BLOCK_SIZE else 0
            continue
        if kind in (FULL, FIRST):
            pending = chunk
        elif kind in (MIDDLE, LAST):
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def offline_run(run_dir: str | Path, wait_s: float = 60.0) -> dict[str, Any]:
    """Config, history rows, summary, tags and group logged into an offline run directory.

    wandb's service may still be writing the file after ``finish()`` returned: this waits up
    to ``wait_s`` seconds for the run's closing ``exit`` record. Nested values come back
    flattened as ``<key>/<field>``.
    """
    deadline = time.monotonic() + wait_s
    while True:
        files = sorted(Path(run_dir).glob("run-*.wandb"))
        records = list(read_wandb_records(files[0])) if files else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")
    run: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "tags": [], "group": "",
                           "complete": any(r.WhichOneof("record_type") == "exit" for r in records)}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["tags"], run["group"] = list(record.run.tags), record.run.run_group
            run["config"].update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            run["config"].update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            run["history"].append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.history.item})
        elif kind == "summary":
            run["summary"].update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.summary.update})
    return run


def finish(logger: Any) -> None:
    """Closes a W&B run at the end of its job: a joblib worker runs many jobs in one process."""
    experiment = getattr(logger, "_experiment", None)
    if experiment is not None and hasattr(experiment, "finish"):
        experiment.finish()
