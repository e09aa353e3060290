"""experiment=large_graph end to end on a small synthetic graph: in this process, and as 2 DDP
processes that each train on their own shard of the seed nodes."""
import os

import pytest
import torch

from conftest import REPO, run_train

SMALL = ["experiment=large_graph", "data.num_nodes=4000", "data.feature_dim=16", "data.batch_size=256",
         "trainer.max_epochs=3", "backbone.hidden_sizes=[32]", "backbone.projection_size=16"]


def test_large_graph_preset_trains_on_sampled_neighbours(tmp_path, cache_dir):
    _, metrics = run_train([*SMALL, "logger=csv", "trainer.log_every_n_steps=1"], tmp_path / "run", cache_dir,
                           in_process=True)
    # The preset's settings for the propagated term go with it (one line says so, and how).
    completed, _ = run_train([*SMALL, "regularizer=none"], tmp_path / "bad", cache_dir, check=False, in_process=True)
    assert completed.returncode == 2 and "~regularizer.propagated" in completed.stderr
    _, base = run_train([*SMALL, "regularizer=none", "~regularizer.propagated", "data.neighbors=0"], tmp_path / "base",
                        cache_dir, in_process=True)
    logged = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/graph_loss" in logged and "train/propagated_loss" in logged
    assert metrics["n_labeled"] == base["n_labeled"] < 40  # 1% of the ~2,880 training nodes
    # Homophily 0.8: the graph terms teach the unlabeled nodes, by a wide margin.
    assert metrics["test/acc"] > base["test/acc"] + 0.05, (metrics["test/acc"], base["test/acc"])


@pytest.mark.slow
def test_two_ddp_processes_train_on_disjoint_shards_to_the_same_accuracy(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    shards = tmp_path / "shards"
    # Each rank takes half the batches of an epoch: twice the epochs, the same optimizer steps,
    # enough of them to converge.
    _, ddp = run_train([*SMALL, "trainer.max_epochs=20", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                        "+callbacks.shards._target_=shard_recorder.ShardRecorder", f"+callbacks.shards.folder={shards}"],
                       tmp_path / "ddp", cache_dir)
    _, single = run_train([*SMALL, "trainer.max_epochs=10"], tmp_path / "single", cache_dir)
    first, second = torch.load(shards / "rank0.pt", weights_only=True), torch.load(shards / "rank1.pt", weights_only=True)
    assert not set(first.tolist()) & set(second.tolist())  # each rank its own seed nodes
    assert abs(len(first) - len(second)) <= 1 and len(first) + len(second) >= 2880  # together: every seed, once
    # 800 test nodes: a standard error of ~1.6 points (the benchmark compares at 100k nodes).
    assert ddp["test/acc"] == pytest.approx(single["test/acc"], abs=0.035)
