"""The README's Python API example, on the real Cora, a few epochs."""
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from nsl_lab import GraphRegularizer, StructuredLearner
from nsl_lab.compose import compose_config, run_overrides
from nsl_lab.datamodules import PlanetoidDataModule
from nsl_lab.errors import ConfigError
from nsl_lab.evaluate import evaluate
from nsl_lab.probes import parse_label_fracs


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


def test_api_entry_points_reject_wrong_types_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^overrides='trainer.max_epochs=2' must be a list of 'key=value' strings"):
        compose_config("trainer.max_epochs=2", tmp_path)  # a string is not iterated character by character
    with pytest.raises(ConfigError, match=r"^overrides=\[1, 2\] must be a list"):
        compose_config([1, 2], tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^output_dir=.* must be a folder path"):
        compose_config([], tmp_path / "file")
    with pytest.raises(ConfigError, match=r"^overrides='eval.eps=\[0.1\]' must be a list"):
        evaluate(tmp_path, "eval.eps=[0.1]")
    assert parse_label_fracs(0.5) == [0.5] and parse_label_fracs("standard") == ["standard"]


def test_run_overrides_drops_its_checkpoint_as_the_cli_does(tmp_path, data_root, cache_dir, monkeypatch):
    monkeypatch.setenv("NSL_LAB_CACHE", str(cache_dir))
    common = ["data.label_frac=0.05", "trainer.max_epochs=2", "checkpoint.every_n_epochs=1", "logger=none",
              "num_threads=1", "trainer.enable_progress_bar=false"]
    metrics = run_overrides(common, tmp_path / "run")
    assert metrics["epochs"] == 2 and not list((tmp_path / "run").glob("checkpoints/*/last.ckpt"))
    run_overrides([*common, "checkpoint.keep=true"], tmp_path / "kept")
    assert len(list((tmp_path / "kept").glob("checkpoints/*/last.ckpt"))) == 1
