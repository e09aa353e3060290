"""Every option of every config group, and every preset, composes and instantiates."""
from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nsl_lab.compose import CONF_DIR, compose_config, group_options
from nsl_lab.modules import Backbone, StructuredLearner
from nsl_lab.regularizers import Regularizer
from nsl_lab.run import build_regularizers, learner_class

GROUPS = ["data", "backbone", "regularizer", "learner", "optimizer", "trainer", "callbacks", "logger", "paths", "debug"]
PRESETS = [("experiment", name) for name in group_options(CONF_DIR, "experiment")] + \
          [("sweep", name) for name in group_options(CONF_DIR, "sweep")]
#: the datamodule's input and the backbone that takes it
INPUTS = {"features": ("ffn", 16), "images": ("cnn", 1), "tokens": ("rnn", 50)}


def every_option() -> list[tuple[str, str]]:
    return [(group, option) for group in GROUPS for option in group_options(CONF_DIR, group)]


def compose(overrides: list[str], tmp_path: Path):
    # custom data has two required paths; they are never read when only instantiated
    return compose_config([*overrides, "data.features=x.npy", "data.labels=y.npy"] if "data=custom" in overrides
                          else overrides, tmp_path)


def instantiate_all(cfg) -> None:
    """Every node of a composed config that has a _target_, as the run builds it."""
    data = instantiate(cfg.data)
    assert isinstance(data, pl.LightningDataModule)
    in_features = INPUTS[data.input_kind][1]
    backbone = instantiate(cfg.backbone, in_features=in_features, num_classes=3)
    assert isinstance(backbone, Backbone) and backbone(torch.zeros(2, in_features) if data.input_kind == "features"
                                                       else torch.zeros(2, 1, 8, 8) if data.input_kind == "images"
                                                       else torch.ones(2, 5, dtype=torch.long)).logits.shape == (2, 3)
    regularizers = build_regularizers(cfg.get("regularizer"))
    assert all(isinstance(r, Regularizer) for r in regularizers.values())
    optimizer = instantiate(cfg.optimizer)(backbone.parameters())
    assert isinstance(optimizer, torch.optim.Optimizer)
    learner_type = learner_class(cfg)
    settings = {k: v for k, v in cfg.learner.items() if k != "_target_"}
    assert isinstance(learner_type(backbone, regularizers, num_classes=3, **settings), StructuredLearner)
    callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values()]
    assert all(isinstance(c, pl.Callback) for c in callbacks)
    trainer_settings = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_settings["enable_progress_bar"] = False
    trainer = instantiate(trainer_settings, logger=False, callbacks=callbacks)
    assert isinstance(trainer, pl.Trainer)
    if cfg.get("logger"):
        assert instantiate(cfg.logger) is not None


@pytest.mark.parametrize("group, option", every_option())
def test_every_group_option_composes_and_instantiates(group, option, tmp_path):
    overrides = [f"{group}={option}"]
    if group == "data":
        kind = instantiate(compose(overrides, tmp_path).data).input_kind
        overrides += [f"backbone={INPUTS[kind][0]}", "regularizer=none"]
    if group == "backbone":
        overrides += {"cnn": ["data=digits"], "resnet": ["data=digits"], "rnn": ["data=imdb"], "bag": ["data=imdb"]}.get(option, [])
        overrides += ["regularizer=none"]
    if (group, option) == ("learner", "representation"):
        overrides += ["regularizer=neighborhood"]  # the default bundle reads labels
    if (group, option) == ("logger", "wandb"):
        overrides += ["logger.tags=[]"]  # its tags read Hydra's runtime choices, set by the CLI only
    cfg = compose(overrides, tmp_path)
    instantiate_all(cfg)


@pytest.mark.parametrize("group, option", PRESETS)
def test_every_preset_composes_and_instantiates(group, option, tmp_path):
    cfg = compose([f"{group}={option}"], tmp_path)
    instantiate_all(cfg)


def test_default_graph_bundle_keeps_its_four_terms_in_order(tmp_path):
    cfg = compose([], tmp_path)
    assert list(cfg.regularizer) == ["graph", "graph_unlabeled", "contrastive", "balance"]
    # a bundle is its term files composed: the same as selecting them by hand
    by_hand = compose(["regularizer=[graph_kl,ngm,contrastive,balance]"], tmp_path)
    assert OmegaConf.to_container(by_hand.regularizer) == OmegaConf.to_container(cfg.regularizer)
    assert cfg.regularizer.graph.distance == "kl" and cfg.regularizer.graph_unlabeled.full_graph


def test_citeseer_extends_cora(tmp_path):
    cora, citeseer = compose(["data=cora"], tmp_path).data, compose(["data=citeseer"], tmp_path).data
    assert citeseer.name == "CiteSeer"
    assert {k: v for k, v in OmegaConf.to_container(citeseer).items() if k != "name"} == \
           {k: v for k, v in OmegaConf.to_container(cora).items() if k != "name"}


def test_debug_fast_shortens_any_run(tmp_path):
    cfg = compose(["debug=fast", "experiment=imdb_propagated"], tmp_path)
    assert cfg.trainer.max_steps == 4 and cfg.trainer.limit_train_batches == 2 and cfg.checkpoint.every_n_epochs == 0
    assert cfg.data.train_size == cfg.data.test_size == 512  # IMDB cut to debug_rows reviews per split
    assert compose(["experiment=imdb_propagated"], tmp_path).data.train_size is None
