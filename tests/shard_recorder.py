"""A callback for the DDP tests: each rank writes the sample ids of its first epoch's batches."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch


class ShardRecorder(pl.Callback):
    def __init__(self, folder: str) -> None:
        self.folder, self.seen = Path(folder), []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == 0:
            self.seen.append(batch.index.cpu())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            torch.save(torch.cat(self.seen), self.folder / f"rank{trainer.global_rank}.pt")
