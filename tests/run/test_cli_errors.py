"""Bad input ends in one line and exit code 2, in-process through the nsl-train entry point,
and loses nothing already written."""
from __future__ import annotations

import csv
import datetime
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException

from conftest import run_train
from nsl_lab.datamodules import PlanetoidDataModule
from nsl_lab.errors import ConfigError, config_scope

QUICK = ["trainer.max_epochs=2", "logger=none", "data.label_frac=0.05"]


def nsl_train(args: list[str], run_dir: Path, data: Path, cache: Path) -> tuple[int, str, str]:
    """``nsl-train`` in this process: (exit code, stdout, stderr)."""
    completed, _ = run_train(args, run_dir, cache, data, check=False, in_process=True)
    return completed.returncode, completed.stdout, completed.stderr


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("nsl_lab: error:")]


CASES = [
    # a dataset with the default backbone that cannot read it: named before any data is loaded
    (["data=imdb"], "backbone=ffn takes features, but data=imdb gives tokens; choose a backbone for tokens; "
                    "or use experiment=imdb_propagated"),
    (["data=imdb", "backbone=rnn"], "regularizer.graph_unlabeled (GraphRegularizer) needs the whole graph in every "
                                    "training batch"),
    (["data=imdb", "backbone=rnn", "regularizer=propagated"],
     "regularizer.propagated (PropagatedLabelRegularizer) needs unlabeled samples in the training batches"),
    (["seed=-1"], "seed=-1 is not allowed; it must be an integer >= 0"),
    (["regularizer.graph_unlabeled.multiplier=-1"],
     "regularizer.graph_unlabeled.multiplier=-1 is out of range; allowed: 0.0 <= regularizer.graph_unlabeled.multiplier"),
    (["data=digits", "backbone=cnn", "regularizer=none", "data.batch_size=2.5"],
     "data.batch_size=2.5 is not allowed; it must be an integer >= 1"),
    (["data.graph.kind=knn", "data.graph.k=5000"], "data.graph.k=5000 is not below the number of rows (2708)"),
    (["ckpt_path=/no/such/last.ckpt"], "ckpt_path='/no/such/last.ckpt': no such file"),
    (["optimizer.lr=1e30"], "the loss is not finite; lower optimizer.lr"),
    (["optimizer.lr=1e6", "trainer.max_epochs=30"], "exploded past 10000 x its first value"),
]


@pytest.mark.parametrize("overrides, message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_ends_in_one_line(overrides, message, tmp_path, data_root, cache_dir):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    code, _, stderr = nsl_train([*QUICK, *overrides], run_dir, data_root, cache_dir)
    assert code == 2, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1 and message in lines[0], stderr[-3000:]
    assert "Traceback" not in stderr
    failure = json.loads((run_dir / "failed.json").read_text())
    assert failure["message"] == lines[0]
    assert (run_dir / "notes.txt").read_text() == "mine" and not (run_dir / "metrics.json").exists()


# Settings torch or Lightning would reject only at fit, in a traceback, and yes/no settings a
# string would silently turn on: all stop before anything is written.
SETTINGS_CASES = [
    (["optimizer.lr=-1"], "optimizer.lr=-1 is out of range; allowed: 0.0 <= optimizer.lr"),
    (["optimizer.weight_decay=abc"], "optimizer.weight_decay='abc' must be a number with 0.0 <= optimizer.weight_decay"),
    (["trainer.max_epochs=0"], "trainer.max_epochs=0 is not allowed; it must be an integer >= 1, or -1 for no limit"),
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc' is not allowed; it must be an integer >= 1, or -1"),
    (["trainer.accelerator=gpu"], "trainer.accelerator='gpu' but torch sees no CUDA GPU here; allowed on this "
                                  "machine: cpu, auto"),
    (["learner.restore_best=off"], "learner.restore_best='off' is not allowed; it must be true or false"),
    (["checkpoint.save_model=no"], "checkpoint.save_model='no' is not allowed; it must be true or false"),
    (["eval.eps=[0.1]", "eval.sanity_checks=maybe"], "eval.sanity_checks='maybe' is not allowed; it must be true"),
    (["eval.eps=[0.1]", "eval.norm=l1"], "eval.norm='l1' is allowed only with attack 'fgsm'; attack 'pgd' takes"),
    (["eval.eps=[0.1]", "eval.clip_min=1", "eval.clip_max=0"], "eval.clip_min=1 must be <= clip_max=0"),
    (["backbone.hidden_sizes=abc"], "backbone.hidden_sizes='abc' is not allowed; it must be a list of integers >= 1"),
    (["+optimizer.betas=[2,3]"], "optimizer: Invalid beta parameter at index 0: 2"),  # torch's own check, up front
    (["+trainer.precision=bogus"], "trainer: Precision 'bogus' is invalid. Allowed precision values:"),  # Lightning's
]


@pytest.mark.parametrize("overrides, message", SETTINGS_CASES, ids=[" ".join(c[0]) for c in SETTINGS_CASES])
def test_bad_setting_stops_before_a_finished_run_is_touched(overrides, message, tmp_path, data_root, cache_dir,
                                                            monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same message on a GPU machine
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    finished = {"config_resolved.yaml": "the finished run's config", "metrics.json": "{}", "model.pt": "weights"}
    for name, text in finished.items():
        (run_dir / name).write_text(text)
    code, _, stderr = nsl_train([*QUICK, *overrides], run_dir, data_root, cache_dir)
    lines = error_lines(stderr)
    assert code == 2 and len(lines) == 1 and message in lines[0], stderr[-3000:]
    assert "Traceback" not in stderr
    assert {name: (run_dir / name).read_text() for name in finished} == finished


def test_diverged_run_keeps_its_logged_history(tmp_path, data_root, cache_dir):
    run_dir = tmp_path / "run"
    code, _, stderr = nsl_train(["data.label_frac=0.05", "optimizer.lr=1e30", "logger=csv", "trainer.max_epochs=20",
                                 "trainer.log_every_n_steps=1"], run_dir, data_root, cache_dir)
    assert code == 2 and "not finite" in error_lines(stderr)[0]
    assert (run_dir / "config_resolved.yaml").is_file()
    assert len((run_dir / "csv" / "metrics.csv").read_text().splitlines()) >= 2  # header + the steps before


def test_unreadable_checkpoint_is_named(tmp_path, data_root, cache_dir):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    code, _, stderr = nsl_train([*QUICK, f"ckpt_path={bad}"], tmp_path / "run", data_root,
                                cache_dir)
    assert code == 2 and error_lines(stderr) == [
        f"nsl_lab: error: ckpt_path='{bad}' is not a checkpoint nsl_lab can read (UnpicklingError); "
        "give a last.ckpt written by nsl_lab"]


def test_unknown_group_option_lists_the_options(tmp_path, data_root, cache_dir):
    code, _, stderr = nsl_train(["regularizer=grpah"], tmp_path / "run", data_root, cache_dir)
    (line,) = error_lines(stderr)
    assert code == 2 and line.startswith("nsl_lab: error: regularizer=grpah is not an option of the regularizer "
                                         "group; allowed: adversarial, adversarial_pgd, balance, contrastive, distill, graph")
    assert not (tmp_path / "run").exists()  # stopped before Hydra made the run directory


@pytest.mark.parametrize("overrides, message", [
    (["foo=1"], "Could not override 'foo'. To append to your config use +foo=1"),
    (["regularizer=none", "regularizer.graph.multiplier=0.5"], "Could not override 'regularizer.graph.multiplier'."),
    (["regularizer=none", "~regularizer.balance"], "'regularizer.balance' does not exist"),
    (["data.label_frac=["], "override 'data.label_frac=[' cannot be parsed: no viable alternative at input '['"),
    (["-m", "seed=0,1", "data.lable_frac=0.1"], "Could not override 'data.lable_frac'."),  # a sweep: its first job
    (["-m", "sweep=cora_label_frac,digits_base"], "sweep=cora_label_frac,digits_base picks several sweep presets"),
])
def test_an_override_hydra_cannot_apply_ends_in_one_line(overrides, message, tmp_path, data_root, cache_dir):
    code, _, stderr = nsl_train(overrides, tmp_path / "run", data_root, cache_dir)
    (line,) = error_lines(stderr)
    assert code == 2 and message in line, stderr[-2000:]
    assert "HYDRA_FULL_ERROR" not in stderr and not (tmp_path / "run").exists()


def test_a_run_ends_with_one_summary_line_and_keeps_its_model(tmp_path, data_root, cache_dir):
    run_dir = tmp_path / "run"
    code, stdout, stderr = nsl_train(["debug=fast", "logger=none", "data.label_frac=0.05"], run_dir, data_root,
                                     cache_dir)
    assert code == 0, stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert stdout.strip().splitlines()[-1] == (f"nsl_lab: test/acc={metrics['test/acc']:.4f} "
                                               f"val/acc={metrics['val/acc']:.4f} -> {run_dir}")
    for notice in ("GPU available", "TPU available", "litlogger", "LeafSpec"):
        assert notice not in stdout + stderr
    assert metrics["val/acc"] == metrics["val/acc"]  # never NaN
    weights = torch.load(run_dir / "model.pt", weights_only=True)
    assert "classifier.weight" in weights


def copy_cora(root: Path, data_root: Path) -> Path:
    raw = root / "planetoid" / "Cora" / "raw"
    shutil.copytree(data_root / "planetoid" / "Cora" / "raw", raw)
    for file in raw.iterdir():
        file.chmod(0o644)
    return raw


def test_truncated_raw_file_is_named_and_never_poisons_the_cache(tmp_path, data_root):
    bad_root, cache = tmp_path / "bad", tmp_path / "cache"
    raw = copy_cora(bad_root, data_root)
    (raw / "ind.cora.x").write_bytes((raw / "ind.cora.x").read_bytes()[:1000])
    code, _, stderr = nsl_train(QUICK, tmp_path / "run", bad_root, cache)
    (line,) = error_lines(stderr)
    assert code == 2 and f"raw file {raw / 'ind.cora.x'} is corrupt or truncated" in line and "re-copy it" in line
    # the good data root, same cache: it works (nothing of the bad read was kept) ...
    good = PlanetoidDataModule("Cora", data_dir=str(data_root), cache_dir=str(cache), label_frac=0.05)
    good.setup()
    assert good.num_nodes == 2708
    # ... and with the cache filled, a changed data root is read, never served the old entry
    with pytest.raises(ConfigError, match="ind.cora.x is corrupt or truncated"):
        PlanetoidDataModule("Cora", data_dir=str(bad_root), cache_dir=str(cache)).setup()


def test_damaged_cache_entry_is_rebuilt(tmp_path, data_root):
    cache = tmp_path / "cache"
    PlanetoidDataModule("Cora", data_dir=str(data_root), cache_dir=str(cache)).setup()
    (entry,) = cache.glob("planetoid/Cora-*/nsl_lab_tensors.pt")
    entry.write_bytes(entry.read_bytes()[:100])
    again = PlanetoidDataModule("Cora", data_dir=str(data_root), cache_dir=str(cache))
    again.setup()
    assert again.num_nodes == 2708 and torch.load(entry, weights_only=True)["x"].shape[0] == 2708


def instantiation_error(function) -> None:
    """What Hydra's ``instantiate`` raises when a constructor fails."""
    try:
        function()
    except (ValueError, TypeError) as error:
        raise InstantiationException("Error in call to target") from error


def test_config_scope_names_a_library_rejection_but_keeps_nsl_lab_bugs():
    with pytest.raises(ConfigError, match=r"^trainer: unsupported type for timedelta days component: str$"):
        with config_scope("trainer."):
            instantiation_error(lambda: datetime.timedelta(days="x"))
    namespace: dict = {}  # a function whose code sits in nsl_lab's own source: its error is a bug, not a setting
    exec(compile("def broken():\n    raise ValueError('bug')\n", os.path.join("src", "nsl_lab", "fake.py"), "exec"),
         namespace)
    with pytest.raises(InstantiationException):
        with config_scope("backbone."):
            instantiation_error(namespace["broken"])


def test_hydra_flags_with_a_value_pass_through(tmp_path, data_root, cache_dir):
    # "job" is --cfg's value, not an override (Hydra's argparse wants the flags after the overrides)
    code, stdout, stderr = nsl_train(["seed=3", "--cfg", "job"], tmp_path / "run", data_root, cache_dir)
    assert code == 0 and "seed: 3" in stdout, stderr[-2000:]


def finish_keeping_the_checkpoint(run_dir: Path, epochs: int, data_root: Path, cache_dir: Path) -> list[str]:
    """Runs a short Cora job to the end with its checkpoint kept; returns its overrides."""
    finished = [f"trainer.max_epochs={epochs}", "logger=none", "data.label_frac=0.05", "checkpoint.every_n_epochs=1",
                "checkpoint.keep=true"]
    code, _, stderr = nsl_train(finished, run_dir, data_root, cache_dir)
    assert code == 0, stderr[-2000:]
    return finished


def test_a_checkpoint_that_cannot_resume_stops_before_the_run_is_touched(tmp_path, data_root, cache_dir):
    run_dir = tmp_path / "run"
    finish_keeping_the_checkpoint(run_dir, 3, data_root, cache_dir)
    (checkpoint,) = run_dir.glob("checkpoints/*/last.ckpt")
    kept = {name: (run_dir / name).read_bytes() for name in ("config_resolved.yaml", "metrics.json", "model.pt")}
    for overrides, message in [
        (["backbone.hidden_sizes=[64]"], "holds another model's weights (backbone.hidden_layers.0.weight: [256, 1433] "
                                         "there, [64, 1433] here)"),
        (["trainer.max_epochs=1"], "was saved at epoch 2, past trainer.max_epochs=1"),
    ]:
        code, _, stderr = nsl_train([*QUICK, f"ckpt_path={checkpoint}", *overrides], run_dir, data_root, cache_dir)
        (line,) = error_lines(stderr)
        assert code == 2 and message in line, stderr[-2000:]
        assert {name: (run_dir / name).read_bytes() for name in kept} == kept
    code, _, stderr = nsl_train([*QUICK, "ckpt_path=123"], tmp_path / "other", data_root, cache_dir)
    assert code == 2 and error_lines(stderr) == [
        "nsl_lab: error: ckpt_path=123 is not allowed; give a checkpoint's path, 'last' or null"]


def test_rerunning_a_finished_run_with_a_kept_checkpoint_trains_again(tmp_path, data_root, cache_dir):
    run_dir = tmp_path / "run"
    finished = finish_keeping_the_checkpoint(run_dir, 2, data_root, cache_dir)
    first = json.loads((run_dir / "metrics.json").read_text())
    code, _, stderr = nsl_train(finished, run_dir, data_root, cache_dir)
    assert code == 0, stderr[-2000:]
    again = json.loads((run_dir / "metrics.json").read_text())
    assert "training again from the start" in (run_dir / "train.log").read_text()
    assert again["start_epoch"] == 0 and "fit_seconds" in again and again["test/acc"] == first["test/acc"]
    # A rerun interrupted in turn leaves a checkpoint newer than the metrics: that one resumes.
    (checkpoint,) = run_dir.glob("checkpoints/*/last.ckpt")
    later = (run_dir / "metrics.json").stat().st_mtime_ns + 10**9
    os.utime(checkpoint, ns=(later, later))
    assert nsl_train(finished, run_dir, data_root, cache_dir)[0] == 0
    assert json.loads((run_dir / "metrics.json").read_text())["start_epoch"] == 2


def test_a_resumed_run_restores_its_own_logged_rows_after_another_config_ran_in_its_folder(tmp_path, data_root,
                                                                                             cache_dir):
    run_dir = tmp_path / "run"
    first = ["trainer.max_epochs=2", "logger=csv", "data.label_frac=0.05", "checkpoint.every_n_epochs=1",
             "checkpoint.keep=true"]
    assert nsl_train(first, run_dir, data_root, cache_dir)[0] == 0
    log_path = run_dir / "csv" / "metrics.csv"

    def rows(epochs: int) -> list[dict]:
        with log_path.open(newline="") as handle:
            return [{k: v for k, v in row.items() if v} for row in csv.DictReader(handle) if float(row["epoch"]) < epochs]

    own = rows(2)
    (checkpoint,) = run_dir.glob("checkpoints/*/last.ckpt")
    assert nsl_train(["trainer.max_epochs=2", "logger=csv", "data.label_frac=0.05", "seed=1"], run_dir, data_root,
                     cache_dir)[0] == 0  # another configuration's log replaces the file
    assert rows(2) != own
    code, _, stderr = nsl_train([*first, "trainer.max_epochs=3", f"ckpt_path={checkpoint}"], run_dir, data_root,
                                cache_dir)
    assert code == 0, stderr[-2000:]
    assert rows(2) == own and rows(3) != own  # its own first two epochs, then the third
