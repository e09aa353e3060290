"""callbacks=ema (nsl_lab.callbacks.WeightAverage): the tested weights are the closed-form
exponential moving average of the trained ones; validation, the best-epoch snapshot and a
resumed run all see the average."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from nsl_lab.batch import Batch
from nsl_lab.callbacks import WeightAverage
from nsl_lab.errors import ConfigError
from nsl_lab.modules import CNN, StructuredLearner


def loader(seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.rand(24, 1, 8, 8, generator=generator), torch.randint(0, 3, (24,), generator=generator),
                         torch.arange(24))
    return DataLoader(data, batch_size=6, collate_fn=lambda items: Batch(*map(torch.stack, zip(*items))))


def learner(restore_best: bool = False) -> StructuredLearner:
    torch.manual_seed(0)
    # Batch norm: its running statistics are buffers, averaged too.
    model = CNN(1, 3, channels=[4], hidden_size=8, batch_norm=True)
    return StructuredLearner(model, num_classes=3, restore_best=restore_best)


def flat(module: torch.nn.Module) -> torch.Tensor:
    # Floating tensors: batch norm's integer step count is averaged with integer rounding, and unused.
    return torch.cat([t.detach().reshape(-1) for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()])


class Recorder(pl.Callback):
    """The raw weights after every optimizer step; the weights each validation ran on."""

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []
        self.validated: list[tuple[torch.Tensor, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(flat(pl_module.backbone))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0:
            self.seen = flat(pl_module.backbone)

    def on_validation_end(self, trainer, pl_module) -> None:
        self.validated.append((self.seen, pl_module.last_val_acc))


def trainer(epochs: int, callbacks: list[pl.Callback], **settings) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, callbacks=callbacks, **settings)


def test_the_trained_model_holds_the_closed_form_average_of_every_step():
    model, recorder = learner(), Recorder()
    trainer(3, [recorder, WeightAverage(decay=0.8)], limit_val_batches=0).fit(model, loader(0))
    average = recorder.steps[0]
    for weights in recorder.steps[1:]:
        average = 0.8 * average + 0.2 * weights
    assert len(recorder.steps) == 12
    assert torch.allclose(flat(model.backbone), average, atol=1e-6)
    assert not torch.allclose(flat(model.backbone), recorder.steps[-1], atol=1e-3)  # not the raw weights


def test_validation_and_the_best_epoch_snapshot_see_the_average():
    model, recorder = learner(restore_best=True), Recorder()
    trainer(4, [recorder, WeightAverage(decay=0.5)]).fit(model, loader(0), loader(1))
    averages, raw = [seen for seen, _ in recorder.validated], recorder.steps[3::4]
    assert all(not torch.allclose(a, r, atol=1e-3) for a, r in zip(averages, raw))
    accuracies = [acc for _, acc in recorder.validated]
    best = accuracies.index(max(accuracies))
    kept = model.backbone.state_dict()
    model.backbone.load_state_dict(model.tested_state())
    assert torch.allclose(flat(model.backbone), averages[best])
    model.backbone.load_state_dict(kept)


def test_a_resumed_run_averages_on_as_an_uninterrupted_one(tmp_path):
    class SaveAfterEpoch(pl.Callback):  # as LastCheckpoint: mid-fit, the raw and the average weights differ
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                trainer.save_checkpoint(tmp_path / "epoch2.ckpt")

    whole = learner()
    trainer(4, [WeightAverage(decay=0.7), SaveAfterEpoch()], limit_val_batches=0).fit(whole, loader(0))
    saved = torch.load(tmp_path / "epoch2.ckpt", weights_only=True)
    assert saved["epoch"] == 1 and "current_model_state" in saved  # raw weights beside the average
    resumed = learner()
    trainer(4, [WeightAverage(decay=0.7)], limit_val_batches=0).fit(resumed, loader(0), ckpt_path=tmp_path / "epoch2.ckpt",
                                                                  weights_only=True)
    assert torch.allclose(flat(resumed.backbone), flat(whole.backbone), atol=1e-6)


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_a_decay_outside_zero_to_one_fails_in_one_line(decay):
    with pytest.raises(ConfigError, match=f"decay={decay}"):
        WeightAverage(decay=decay)
