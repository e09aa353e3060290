"""Label-free pretraining: no label is read, label-reading terms are refused, and one run
pretrains, probes every setting and hands its encoder to a fine-tuning run."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import pytorch_lightning as pl
import torch

from conftest import run_train
from nsl_lab.datamodules import PlanetoidDataModule
from nsl_lab.errors import ConfigError
from nsl_lab.evaluate import evaluate
from nsl_lab.files import MODEL_FILE
from nsl_lab.losses import supervised_loss
from nsl_lab.modules import FFN, RepresentationLearner
from nsl_lab.regularizers import (ClassBalanceRegularizer, Regularizer, GraphRegularizer, NeighborContrastiveRegularizer,
                                  NeighborhoodContrastiveRegularizer, PropagatedLabelRegularizer,
                                  VirtualAdversarialRegularizer)
from nsl_lab.saved_runs import initialise_from


class LabelPeeker(Regularizer):
    """Cross-entropy on whatever labels reach it, while declaring that it reads none: only the
    learner's own stripping of labels keeps it from training on them."""

    def loss(self, step):
        return supervised_loss(step.output.logits, step.batch.y)


class NoLabelsPlanetoid(PlanetoidDataModule):
    """Cora with every label, of every stage and of the graph data, replaced by -1."""

    def setup(self, stage=None):
        super().setup(stage)
        self._batches = {name: replace(batch, y=torch.full_like(batch.y, -1)) for name, batch in self._batches.items()}
        self._scored = {}


def pretrained_weights(datamodule: PlanetoidDataModule) -> dict[str, torch.Tensor]:
    pl.seed_everything(0, verbose=False)
    datamodule.setup("fit")
    backbone = FFN(datamodule.num_features, datamodule.num_classes, [32], dropout=0.2, projection_size=16)
    terms = {"neighborhood": NeighborhoodContrastiveRegularizer(hops=2, sample_size=256),
             "contrastive": NeighborContrastiveRegularizer(sample_size=256),
             "graph_unlabeled": GraphRegularizer(distance="l2", full_graph=True, seeds="all"),
             "vat": VirtualAdversarialRegularizer(multiplier=0.5), "peeker": LabelPeeker()}
    learner = RepresentationLearner(backbone, terms, num_classes=datamodule.num_classes)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, deterministic=True)
    trainer.fit(learner, datamodule=datamodule)
    return {key: value.clone() for key, value in backbone.state_dict().items()}


def test_pretraining_never_reads_a_label(data_root, cache_dir):
    """The same Cora with and without its labels trains bit-identical weights, with every kind of
    label-free term in the loss (input and embedding contrast, NGM over all seeds, VAT) and a
    term that would train on any label it were given."""
    settings = dict(data_dir=str(data_root), cache_dir=str(cache_dir), label_frac=0.05, seed=3)
    with_labels = pretrained_weights(PlanetoidDataModule(**settings))
    without = pretrained_weights(NoLabelsPlanetoid(**settings))
    assert with_labels.keys() == without.keys()
    for key in with_labels:
        assert torch.equal(with_labels[key], without[key]), key
    # and it trained: the encoder moved from its initialisation
    pl.seed_everything(0, verbose=False)
    initial = FFN(1433, 7, [32], dropout=0.2, projection_size=16).state_dict()
    assert not torch.equal(initial["hidden_layers.0.weight"], with_labels["hidden_layers.0.weight"])


@pytest.mark.parametrize("term, name", [
    (GraphRegularizer(), "graph"),  # labeled seeds
    (GraphRegularizer(seeds="all", full_graph=True, labeled_labeled=2.0), "graph"),  # weights by label status
    (ClassBalanceRegularizer(prior="labeled"), "balance"),
    (PropagatedLabelRegularizer(), "propagated"),
])
def test_terms_that_read_labels_are_refused(term, name):
    with pytest.raises(ConfigError, match=rf"regularizer\.{name} \({type(term).__name__}\) reads labels"):
        RepresentationLearner(FFN(4, 2), {name: term})
    with pytest.raises(ConfigError, match="none is set"):
        RepresentationLearner(FFN(4, 2), {})
    # label-free settings of the same terms are accepted
    RepresentationLearner(FFN(4, 2), {"ngm": GraphRegularizer(seeds="all", full_graph=True),
                                      "balance": ClassBalanceRegularizer(prior="uniform")})


PRETRAIN = ["learner=representation", "regularizer=neighborhood", "regularizer.neighborhood.sample_size=256",
            "trainer.max_epochs=3", "logger=none", "seed=1"]


def test_one_pretraining_probes_every_setting_and_fine_tunes(tmp_path, data_root, cache_dir):
    probes = ["probe.label_fracs=[0.05,1.0,standard]", "probe.seeds=[0,1]", "probe.kinds=[logreg,knn]"]
    completed, metrics = run_train([*PRETRAIN, *probes], tmp_path / "pretrain", cache_dir, data_root,
                                   in_process=True)
    assert "test/acc=" in completed.stdout
    for kind in ("logreg", "knn"):
        for setting in ("label_frac=0.05", "label_frac=1"):
            for seed in (0, 1):
                assert 0.0 <= metrics[f"probe/{kind}/{setting}/seed={seed}/test/acc"] <= 1.0
            assert f"probe/{kind}/{setting}/test/acc_std" in metrics
        assert f"probe/{kind}/standard/seed=0/test/acc" in metrics
    # the headline figures: the logistic probe on the run's own labels (the public split here)
    assert metrics["test/acc"] == pytest.approx(metrics["probe/logreg/standard/seed=0/test/acc"])
    assert metrics["test/acc"] > 0.3  # well above chance (1/7) after three epochs
    assert metrics["probe/seconds"] > 0

    # fine-tuning starts from exactly the saved encoder
    pretrained = torch.load(tmp_path / "pretrain" / MODEL_FILE, weights_only=True)
    backbone = FFN(1433, 7, [256], dropout=0.6, activation="gelu", layer_norm=True, projection_size=256)
    initialise_from(backbone, tmp_path / "pretrain")
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in pretrained.items())
    with pytest.raises(ConfigError, match="is a label-free pretraining: its classifier was never trained"):
        evaluate(tmp_path / "pretrain", ["eval.eps=[0.1]"])
    _, tuned = run_train([f"init_from={tmp_path / 'pretrain'}", "regularizer=none", "trainer.max_epochs=2",
                          "logger=none", "data.label_frac=0.05"], tmp_path / "tune", cache_dir, data_root,
                         in_process=True)
    assert 0.0 < tuned["test/acc"] <= 1.0 and "probe/seconds" not in tuned


@pytest.mark.parametrize("args, message", [
    (["learner=representation"], "regularizer.graph (GraphRegularizer) reads labels"),
    (["learner=representation", "regularizer=neighborhood", "eval.eps=[0.1]"], "eval.eps=[0.1] needs a trained "
                                                                               "classifier"),
    (["learner=representation", "regularizer=neighborhood", "probe.label_fracs=[2]"],
     "probe.label_fracs=2.0 is out of range"),
    (["learner=representation", "regularizer=neighborhood", "+probe.folds=3"], "probe.folds is not a probe setting"),
    (["init_from=/nonexistent/run"], "init_from='/nonexistent/run' does not exist"),
    (["backbone.hidden_sizes=[8]", "init_from={pretrain}"], "do not fit this backbone (size mismatch for "
                                                            "hidden_layers.0.weight"),
    (["learner=representation", "regularizer=neighborhood", "+learner.restore_best=true"],
     "learner.restore_best is not a setting of RepresentationLearner; allowed: none"),
    (["+learner.patience=3"], "learner.patience is not a setting of StructuredLearner; allowed: restore_best"),
    (["learner=representation", "regularizer=neighborhood", "probe.seeds=[-1]"], "probe.seeds=-1 is not allowed"),
    (["learner=representation", "regularizer=neighborhood", "probe.kinds=[svm]"], "probe.kinds='svm'"),
    (["learner=representation", "regularizer=neighborhood", "+probe.c_grid=[0]"], "probe.c_grid=0 is out of range"),
    (["learner=representation", "regularizer=neighborhood", "regularizer.neighborhood.summary=embeddings",
      "data=imdb", "backbone=rnn", "data.neighbors=2"], "data.include_unlabeled=false trains on the labeled rows only"),
    (["learner=representation", "regularizer=neighborhood", "regularizer.neighborhood.summary=embeddings",
      "data=imdb", "backbone=rnn", "data.neighbors=2", "data.include_unlabeled=true", "data.labeled_per_batch=4"],
     "data.labeled_per_batch=4 adds labeled rows"),
])
def test_bad_representation_settings_fail_in_one_line(args, message, tmp_path, data_root, cache_dir):
    pretrain = tmp_path / "pretrain"
    if any("{pretrain}" in arg for arg in args):
        run_train([*PRETRAIN, "trainer.max_epochs=1"], pretrain, cache_dir, data_root, in_process=True)
    completed, _ = run_train([arg.format(pretrain=pretrain) for arg in args] + ["logger=none", "trainer.max_epochs=1"],
                             tmp_path / "run", cache_dir, data_root, check=False, in_process=True)
    errors = [line for line in completed.stderr.splitlines() if line.startswith("nsl_lab: error:")]
    assert completed.returncode == 2 and len(errors) == 1 and message in errors[0], completed.stderr[-2000:]
    assert not (tmp_path / "run" / "metrics.json").exists()
    failure = json.loads((tmp_path / "run" / "failed.json").read_text())
    assert message in json.dumps(failure)


def test_a_failing_probe_loses_no_pretraining(tmp_path, data_root, cache_dir, monkeypatch):
    import nsl_lab.run

    def broken_probe(*args, **kwargs):
        raise MemoryError("probe ran out of memory")

    monkeypatch.setattr(nsl_lab.run, "probe_encoder", broken_probe)
    completed, metrics = run_train([*PRETRAIN, "trainer.max_epochs=1"], tmp_path / "run", cache_dir, data_root,
                                   check=False, in_process=True)
    assert completed.returncode != 0 and metrics is None
    saved = torch.load(tmp_path / "run" / MODEL_FILE, weights_only=True)
    assert "hidden_layers.0.weight" in saved  # the encoder is there, ready for init_from


@pytest.mark.slow
def test_pretraining_runs_on_two_ddp_processes(tmp_path, data_root, cache_dir):
    """The neighbourhood term sizes its projection W at the first step; under DDP the learner sizes
    it before the model is wrapped (DDP cannot wrap unsized parameters), and the run probes once."""
    args = [*PRETRAIN, "trainer.max_epochs=10", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            "probe.label_fracs=[standard]"]
    _, metrics = run_train(args, tmp_path / "ddp", cache_dir, data_root)
    assert metrics["probe/logreg/standard/seed=0/test/acc"] > 0.5  # chance is 1/7
    assert len(list((tmp_path / "ddp").glob("**/metrics.json"))) == 1
    assert (tmp_path / "ddp" / MODEL_FILE).is_file()


@pytest.mark.slow
def test_a_resumed_pretraining_equals_an_uninterrupted_one(tmp_path, data_root, cache_dir):
    """last.ckpt holds the lazily sized W, its Adam state and every RNG: resuming a 4-epoch
    pretraining to 8 epochs gives the weights of an 8-epoch run, bit for bit."""
    common = [*PRETRAIN, "checkpoint.every_n_epochs=2", "probe.label_fracs=[standard]"]
    run_train([*common, "trainer.max_epochs=4", "checkpoint.keep=true"], tmp_path / "first", cache_dir, data_root,
              in_process=True)
    (last,) = (tmp_path / "first").glob("checkpoints/*/last.ckpt")
    assert any("projection.weight" in key for key in torch.load(last, weights_only=True)["state_dict"])
    _, resumed = run_train([*common, "trainer.max_epochs=8", f"ckpt_path={last}"], tmp_path / "resumed", cache_dir,
                           data_root, in_process=True)
    _, whole = run_train([*common, "trainer.max_epochs=8"], tmp_path / "whole", cache_dir, data_root, in_process=True)
    assert resumed["start_epoch"] == 4 and whole["start_epoch"] == 0
    weights = [torch.load(tmp_path / name / MODEL_FILE, weights_only=True) for name in ("resumed", "whole")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[1])
    assert resumed["test/acc"] == whole["test/acc"]
