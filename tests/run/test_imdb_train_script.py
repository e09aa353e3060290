"""Short end-to-end IMDB runs (a small subset) through the nsl-train entry point, in this process."""
import csv

from conftest import run_train

SMALL = ["experiment=imdb_label_frac", "data.train_size=240", "data.test_size=100", "data.max_len=40",
         "data.vocab_size=2000", "trainer.max_steps=6", "trainer.val_check_interval=3", "trainer.log_every_n_steps=1", "data.batch_size=16",
         "logger=none"]


def test_imdb_graph_regularized_run(tmp_path, data_root, cache_dir):
    run_dir = tmp_path / "run"
    _, metrics = run_train([*SMALL, "data.label_frac=0.5", "regularizer=graph_nsl", "logger=csv"], run_dir, cache_dir, data_root,
                           in_process=True)
    assert metrics["seed"] == 0
    # 90% of 240 reviews train, half of them keep labels (stratified per class)
    assert 106 <= metrics["n_labeled"] <= 110
    resolved = (run_dir / "config_resolved.yaml").read_text()
    assert "RNNClassifier" in resolved and "kind: knn" in resolved
    # the packed neighbours reached the regularizer: a graph loss was logged and is non-zero
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    graph_losses = [float(r["train/graph_loss"]) for r in rows if r.get("train/graph_loss")]
    assert graph_losses and max(graph_losses) > 0
    assert list((cache_dir / "graphs").glob("imdb-*.pt"))


def test_imdb_bad_graph_setting_fails_in_one_line(tmp_path, data_root, cache_dir):
    completed, metrics = run_train([*SMALL, "data.graph.k=0"], tmp_path / "run", cache_dir, data_root, check=False,
                                   in_process=True)
    assert completed.returncode == 2 and metrics is None
    errors = [line for line in completed.stderr.splitlines() if line.startswith("nsl_lab: error:")]
    assert errors == ["nsl_lab: error: data.graph.k=0 is not allowed; it must be an integer >= 1 or null"]


def test_sweep_preset_crosses_regularizers_and_label_fractions():
    from hydra import compose, initialize_config_dir

    from nsl_lab.compose import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["sweep=imdb_label_frac"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params["regularizer"] == "none,graph_nsl_logits"
    assert params["data.label_frac"] == "0.01,0.02,0.05,0.1,1.0"
    assert cfg.backbone._target_ == "nsl_lab.modules.RNNClassifier" and cfg.backbone.bidirectional
    assert cfg.data._target_ == "nsl_lab.datamodules.IMDBDataModule" and cfg.data.graph.kind == "knn"


def test_imdb_propagated_labels_run(tmp_path, data_root, cache_dir):
    """experiment=imdb_propagated: word-vector graph, unlabeled reviews in the batches, pseudo-label loss."""
    run_dir = tmp_path / "run"
    small = [a for a in SMALL if not a.startswith("experiment=")]
    # Both options on: the labels are propagated over the word-vector graph joined with the
    # BiLSTM's own kNN graph from the first epoch, class shares aligned.
    _, metrics = run_train(["experiment=imdb_propagated", *small, "data.label_frac=0.1", "data.graph.dim=16",
                            "regularizer.propagated.feature_graph_from_epoch=0",
                            "regularizer.propagated.align_to_prior=true", "logger=csv"], run_dir, cache_dir, data_root,
                           in_process=True)
    resolved = (run_dir / "config_resolved.yaml").read_text()
    assert "PropagatedLabelRegularizer" in resolved and "embedding: word_vectors" in resolved
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    losses = [float(r["train/propagated_loss"]) for r in rows if r.get("train/propagated_loss")]
    assert losses and max(losses) > 0  # the unlabeled reviews reached the pseudo-label term
    log = (run_dir / "train.log").read_text()
    assert "align_to_prior=True, feature_graph_from_epoch=0, feature_graph_k=10" in log
    assert "propagated: labels propagated over the data graph + a feature graph of" in log


def test_propagated_preset_sweeps_label_fractions_only():
    from hydra import compose, initialize_config_dir

    from nsl_lab.compose import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["sweep=imdb_propagated"], return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == {"data.label_frac": "0.01,0.02,0.05,0.1,1.0"}
    assert list(cfg.regularizer) == ["propagated"]
    assert cfg.data.include_unlabeled and cfg.data.labeled_per_batch == 8
    assert cfg.data.neighbors == 0 and cfg.trainer.max_steps == 2400


def test_imdb_bag_of_ngrams_with_vat_run(tmp_path, data_root, cache_dir):
    """experiment=imdb_bag_vat (here on normalized vectors): whole reviews through word and bigram
    vectors, VAT on them."""
    run_dir = tmp_path / "run"
    small = [a for a in SMALL if not a.startswith(("experiment=", "data.max_len"))]
    _, metrics = run_train(["experiment=imdb_bag_vat", *small, "data.max_len=120", "backbone.buckets=1024",
                            "backbone.normalize=true", "logger=csv"], run_dir, cache_dir, data_root, in_process=True)
    resolved = (run_dir / "config_resolved.yaml").read_text()
    assert "BagOfNgrams" in resolved and "normalize: true" in resolved and "kind: none" in resolved
    assert "max_len: 120" in resolved and "adv_step_size: 1.0" in resolved
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    vat_losses = [float(r["train/vat_loss"]) for r in rows if r.get("train/vat_loss")]
    assert vat_losses and max(vat_losses) > 0
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["n_labeled"] == 216
