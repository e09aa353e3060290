"""Multiruns through scripts/train.py: launchers, DDP, W&B offline, failures, resume."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_train
from nsl_lab import multirun
from nsl_lab.loggers import offline_run
from nsl_lab.report import log_to_wandb, report

TINY = ["trainer.max_epochs=4", "trainer.enable_progress_bar=false", "data.label_frac=0.05"]


def run_sweep(args: list[str], sweep_dir: Path, cache: Path, data: Path, timeout: int = 400,
              returncode: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "NSL_LAB_CACHE": str(cache), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.pop("WANDB_API_KEY", None)
    env["NSL_LAB_DATA"] = str(data)
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "-m", f"hydra.sweep.dir={sweep_dir}", *args]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    assert completed.returncode == returncode, completed.stderr[-4000:]
    return completed


def metrics_of(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))}


def check_four_job_sweep(sweep_dir: Path) -> None:
    found = metrics_of(sweep_dir)
    assert sorted(found) == ["0", "1", "2", "3"]
    # Each job ran its own hyper-parameters: regularizer x seed, recorded in its config.
    settings = set()
    for job in found:
        resolved = (sweep_dir / job / "config_resolved.yaml").read_text()
        settings.add(("contrastive:" in resolved, found[job]["seed"]))
        assert "num_threads: 1" in resolved  # one torch thread per parallel job by default
    assert settings == {(False, 0), (False, 1), (True, 0), (True, 1)}
    assert all(m["epochs"] == 4 and 0 < m["startup_seconds"] < 120 for m in found.values())
    result = report(sweep_dir)
    assert len(result["rows"]) == 2 and all(r.seeds == [0, 1] for r in result["rows"])
    assert (result["out_dir"] / "accuracy_vs_label_frac.png").stat().st_size > 1000
    assert "4 of 4 jobs finished" in (result["out_dir"] / "report.md").read_text()
    assert len((result["out_dir"] / "report.csv").read_text().splitlines()) == 3


@pytest.mark.slow
def test_joblib_sweep_two_workers_and_report(tmp_path, data_root, cache_dir):
    sweep_dir = tmp_path / "joblib"
    run_sweep(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "regularizer=none,graph", "seed=0,1",
               "logger=none", *TINY], sweep_dir, cache_dir, data_root)
    check_four_job_sweep(sweep_dir)
    completed = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(sweep_dir)],
                               capture_output=True, text=True, cwd=REPO)
    assert completed.returncode == 0 and "4 finished, 0 failed, 0 unfinished" in completed.stdout


@pytest.mark.slow
def test_submitit_local_sweep(tmp_path, data_root, cache_dir):
    sweep_dir = tmp_path / "submitit"
    run_sweep(["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "regularizer=none,graph",
               "seed=0,1", "logger=none", *TINY], sweep_dir, cache_dir, data_root)
    check_four_job_sweep(sweep_dir)


@pytest.mark.slow
def test_failing_job_wandb_offline_and_relaunch_skips_finished(tmp_path, data_root, cache_dir):
    """One job of the sweep fails: the sweep goes on, ends by naming it and exits 1, and the report
    lists it; the good job logs to W&B offline (group = sweep, tags); a re-launch recomputes
    nothing that finished."""
    sweep_dir = tmp_path / "sweep_2026"
    args = ["data.label_frac=0.05,1.5", "logger=wandb", "trainer.max_epochs=3", "trainer.enable_progress_bar=false"]
    completed = run_sweep(args, sweep_dir, cache_dir, data_root, returncode=1)
    summary = completed.stderr[completed.stderr.index("nsl_lab: error: 1 of 2 jobs failed"):]
    assert f"  {sweep_dir / '1'}: data.label_frac=1.5 is out of range" in summary
    assert sorted(metrics_of(sweep_dir)) == ["0"]
    failure = json.loads((sweep_dir / "1" / "failed.json").read_text())
    assert "data.label_frac=1.5 is out of range" in failure["message"]
    # nsl_lab's own record of a run that got as far as training (report.py labels by it)
    record = json.loads((sweep_dir / "0" / "overrides.json").read_text())
    assert "data.label_frac=0.05" in record["overrides"] and record["choices"]["logger"] == "wandb"
    assert not (sweep_dir / "1" / "overrides.json").exists()
    result = report(sweep_dir)
    md = (result["out_dir"] / "report.md").read_text()
    assert "1 of 2 jobs finished" in md and "| 1 | failed | data.label_frac=1.5" in md

    report_dir = log_to_wandb(result, sweep_dir, mode="offline")
    report_run = offline_run(report_dir)
    assert report_run["complete"] and report_run["group"] == "sweep_2026"
    logged_report = report_run["history"][0]  # nested values come back as "<key>/<field>"
    assert logged_report["report/table/_type"] == "table-file" and logged_report["report/table/nrows"] == 1
    assert (report_dir / "files" / logged_report["report/table/path"]).is_file()
    assert logged_report["report/accuracy_vs_label_frac/_type"] == "image-file"

    metrics = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    (run_dir,) = (sweep_dir / "0" / "wandb").glob("offline-run-*")
    logged = offline_run(run_dir)
    assert logged["complete"] and logged["group"] == "sweep_2026"
    assert {"regularizer=graph", "label_frac=0.05"} <= set(logged["tags"])
    assert logged["config"]["data"]["label_frac"] == 0.05 and logged["config"]["seed"] == 0
    assert logged["summary"]["test/acc"] == pytest.approx(metrics["test/acc"])
    assert [row["val/acc"] for row in logged["history"] if "val/acc" in row][-1] == pytest.approx(
        logged["summary"]["val/acc"])

    finished_at = (sweep_dir / "0" / "metrics.json").stat().st_mtime_ns
    completed = run_sweep(args, sweep_dir, cache_dir, data_root, returncode=1)
    assert (sweep_dir / "0" / "metrics.json").stat().st_mtime_ns == finished_at
    assert "already finished" in completed.stderr + completed.stdout + (sweep_dir / "0" / "train.log").read_text()
    assert (sweep_dir / "1" / "failed.json").exists()


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path, data_root, cache_dir):
    args = ["regularizer=graph", "trainer.max_epochs=6", "logger=csv"]
    _, ddp = run_train([*args, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"],
                       tmp_path / "ddp", cache_dir, data_root)
    _, single = run_train([*args, "logger=tensorboard"], tmp_path / "single", cache_dir, data_root)
    assert list((tmp_path / "single" / "tensorboard").glob("events.out.tfevents.*"))
    # Same full-graph batch in both ranks, same seeds: the averaged gradients equal one rank's.
    for key in ("val/acc", "test/acc"):
        assert ddp[key] == pytest.approx(single[key], abs=0.005), key
    assert (tmp_path / "ddp" / "train_ddp_process_1.log").exists()  # the second rank ran this job
    assert len(list((tmp_path / "ddp").glob("**/metrics.json"))) == 1


@pytest.mark.slow
def test_ddp_inside_a_multirun_runs_each_job_once(tmp_path, data_root, cache_dir):
    """Plain ddp would re-run the sweep's command line in the second rank; the job uses
    ddp_spawn instead and its metrics are the single-process ones for its own settings."""
    sweep_dir = tmp_path / "ddp_sweep"
    completed = run_sweep(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "seed=1", "logger=none",
                           "regularizer=none", *TINY], sweep_dir, cache_dir, data_root)
    assert "using ddp_spawn" in completed.stderr + completed.stdout + (sweep_dir / "0" / "train.log").read_text()
    found = metrics_of(sweep_dir)
    assert sorted(found) == ["0"] and found["0"]["seed"] == 1
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["0", "multirun.yaml"]  # no second sweep
    _, single = run_train(["regularizer=none", "logger=none", *TINY, "seed=1"], tmp_path / "single", cache_dir, data_root)
    for key in ("val/acc", "test/acc"):  # the best-validation state came back from the spawned ranks
        assert found["0"][key] == pytest.approx(single[key], abs=0.005), key


@pytest.mark.slow
def test_killed_run_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path, data_root, cache_dir):
    run_dir = tmp_path / "run"
    # Dropout, the contrastive term's row sample and the graph terms: every generator matters.
    args = ["data.label_frac=0.05", "trainer.max_epochs=60", "checkpoint.every_n_epochs=3", "logger=csv",
            "trainer.log_every_n_steps=1"]
    env = {**os.environ, "NSL_LAB_CACHE": str(cache_dir), "NSL_LAB_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "scripts" / "train.py"), f"hydra.run.dir={run_dir}",
               "trainer.enable_progress_bar=false", "num_threads=1", *args]
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list(run_dir.glob("checkpoints/*/last.ckpt")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "metrics.json").exists(), "the run finished before it could be killed"
    (last,) = run_dir.glob("checkpoints/*/last.ckpt")
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] >= 2 and saved["state_dict"]["_extra_state"]["best_val_acc"] is not None

    _, resumed = run_train(args, run_dir, cache_dir, data_root)
    _, whole = run_train(args, tmp_path / "uninterrupted", cache_dir, data_root)
    assert resumed["start_epoch"] >= saved["epoch"] + 1 and resumed["epochs"] == 60 and whole["start_epoch"] == 0
    for key in ("test/acc", "val/acc", "n_labeled"):
        assert resumed[key] == whole[key], key  # bit for bit: RNG, sampler and best weights restored
    # The logged history survived the kill: the same rows as the uninterrupted run's.
    resumed_log = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    whole_log = (tmp_path / "uninterrupted" / "csv" / "metrics.csv").read_text().splitlines()
    assert resumed_log == whole_log
    assert not list(run_dir.glob("checkpoints/*/last.ckpt"))  # a finished run drops its checkpoint
    tested = torch.load(run_dir / "model.pt", weights_only=True)
    assert set(tested) == set(torch.load(tmp_path / "uninterrupted" / "model.pt", weights_only=True))


def test_claim_gpu_takes_a_free_device(tmp_path, monkeypatch):
    monkeypatch.setattr(multirun, "_gpu_lock", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    held = open(tmp_path / "gpu0.lock", "w")  # another worker holds GPU 0
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        assert multirun.claim_gpu(tmp_path, ["0", "1"]) == "1"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
        assert multirun.claim_gpu(tmp_path, ["0", "1"]) == "1"  # a process keeps its device
    finally:
        multirun._gpu_lock.close()
        held.close()
    monkeypatch.setattr(multirun, "_gpu_lock", None)
    assert multirun.claim_gpu(tmp_path, ["0"]) is None  # one GPU: nothing to split


def test_label_frac_preset_sweeps_36_jobs_with_joblib():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["sweep=cora_label_frac"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    sizes = [len(str(params[key]).split(",")) for key in ("regularizer", "data.label_frac", "seed")]
    assert sizes == [2, 6, 3]
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.logger is None or not cfg.logger  # no logger files in 36 runs: metrics.json is enough
