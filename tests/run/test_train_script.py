"""End to end through the nsl-train entry point on the real Cora (a few epochs), in this process;
the one run that needs a fresh process is marked slow."""
import pytest

from conftest import run_train

FAST = ["debug=fast", "logger=none"]
SHORT = ["trainer.max_epochs=30", "logger=none"]
REQUIRED = {"val/acc", "test/acc", "n_labeled", "seed", "fit_seconds"}


def test_graph_run_writes_metrics_and_resolved_config(tmp_path, data_root, cache_dir):
    run_dir = tmp_path / "run"
    _, metrics = run_train(
        ["regularizer=graph", "data.label_frac=0.05", "debug=fast", "logger=csv"], run_dir, cache_dir, data_root,
        in_process=True,
    )
    assert REQUIRED <= set(metrics)
    assert all(isinstance(metrics[k], (int, float)) for k in REQUIRED)
    assert metrics["seed"] == 0 and metrics["epochs"] == 2  # debug=fast: 2 epochs of one full-graph batch
    # 5% of Cora's 1208-node training pool, per class, at least one each.
    assert 55 <= metrics["n_labeled"] <= 65
    resolved = (run_dir / "config_resolved.yaml").read_text()
    assert "label_frac: 0.05" in resolved and "${" not in resolved
    assert (run_dir / "csv" / "metrics.csv").exists()


def test_same_seed_same_metrics(tmp_path, data_root, cache_dir):
    runs = [
        run_train(["regularizer=graph", "data.label_frac=0.02", "seed=3", *SHORT], tmp_path / f"r{i}", cache_dir, data_root,
                  in_process=True)[1]
        for i in range(2)
    ]
    for key in ("val/acc", "test/acc", "n_labeled", "seed"):
        assert runs[0][key] == runs[1][key], key
    other = run_train(["regularizer=graph", "data.label_frac=0.02", "seed=4", *SHORT], tmp_path / "r2", cache_dir, data_root,
                      in_process=True)[1]
    assert other["test/acc"] != runs[0]["test/acc"] or other["val/acc"] != runs[0]["val/acc"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.label_frac=1.5"], "data.label_frac=1.5 is out of range; allowed: 0.0 < data.label_frac <= 1.0"),
        (["regularizer=graph_nsl", "regularizer.graph.max_neighbors=0"],
         "regularizer.graph.max_neighbors=0 is not allowed; it must be an integer >= 1"),
        (["regularizer=graph_nsl", "regularizer.graph.distance=euclid"],
         "regularizer.graph.distance='euclid' is not supported; allowed:"),
        (["backbone.activation=swish"], "backbone.activation='swish' is not supported; allowed: 'relu'"),
    ],
)
def test_bad_values_fail_in_one_line(tmp_path, data_root, cache_dir, overrides, message):
    completed, metrics = run_train([*overrides, *FAST], tmp_path / "run", cache_dir, data_root, check=False,
                                   in_process=True)
    assert completed.returncode == 2 and metrics is None
    errors = [line for line in completed.stderr.splitlines() if line.startswith("nsl_lab: error:")]
    assert len(errors) == 1 and message in errors[0], completed.stderr[-2000:]
    assert "Traceback" not in completed.stderr


@pytest.mark.slow
def test_unknown_group_option_in_a_fresh_process(tmp_path, data_root, cache_dir):
    completed, _ = run_train(["regularizer=grpah", *FAST], tmp_path / "run", cache_dir, data_root, check=False,
                             in_process=False)
    assert completed.returncode == 2
    errors = [line for line in completed.stderr.splitlines() if line.startswith("nsl_lab: error:")]
    assert errors == [line for line in completed.stderr.splitlines() if line.strip()]  # that line only
    assert "regularizer=grpah is not an option of the regularizer group; allowed: " in errors[0]
    assert "graph_nsl" in errors[0] and "graph_kl" in errors[0]
    assert "Traceback" not in completed.stderr


def test_missing_data_root_says_where_files_go(tmp_path, cache_dir):
    missing = tmp_path / "no_such_root"
    completed, _ = run_train(FAST, tmp_path / "run", tmp_path / "empty_cache", missing, check=False, in_process=True)
    assert completed.returncode == 2
    line = next(l for l in completed.stderr.splitlines() if l.startswith("nsl_lab: error:"))
    assert f"{missing}/planetoid/Cora/raw" in line and "ind.cora.x" in line and "NSL_LAB_DATA" in line
