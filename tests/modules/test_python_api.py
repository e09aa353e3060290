"""The README's Python API example, on the real Cora, a few epochs."""
import pytorch_lightning as pl
import torch
from torch import nn

from nsl_lab import GraphRegularizer, StructuredLearner
from nsl_lab.datamodules import PlanetoidDataModule


class MyNet(nn.Module):
    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_features, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.to_dense() if x.is_sparse else x)


def test_readme_api_example(data_root, cache_dir):
    pl.seed_everything(0, verbose=False)
    data = PlanetoidDataModule("Cora", data_dir=str(data_root), cache_dir=str(cache_dir), label_frac=0.05)
    data.setup()
    model = MyNet(data.num_features, data.num_classes)
    learner = StructuredLearner(model, [GraphRegularizer(multiplier=0.1, distance="l2", max_neighbors=2)])
    trainer = pl.Trainer(max_epochs=30, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    trainer.fit(learner, datamodule=data)
    assert {"train/graph_loss", "train/supervised_loss", "val/acc"} <= set(trainer.logged_metrics)
    tested = trainer.test(learner, datamodule=data, verbose=False)[0]
    assert learner.best_val_acc is not None and tested["test/acc"] > 0.3  # well above chance (1/7)
