"""scripts/report.py on hand-made sweep directories (no training)."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from conftest import Completed
from nsl_lab.errors import ConfigError
from nsl_lab.report import collect, read_job, report


def fake_job(sweep: Path, num: int, overrides: list[str], regularizer: str, label_frac: float | None,
             metrics: dict | None = None, failed: str | None = None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"regularizer": regularizer}}}}))
    (job / "config_resolved.yaml").write_text(yaml.safe_dump({"data": {"label_frac": label_frac}, "seed": 0}))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if failed is not None:
        (job / "failed.json").write_text(json.dumps({"error": "ValueError", "message": failed}))


def robust(clean: float, eps_acc: dict[float, float], seed: int) -> dict:
    return {"test/acc": clean, "val/acc": clean, "seed": seed,
            **{f"test/robust_acc/pgd/eps={e:g}": a for e, a in eps_acc.items()}}


@pytest.fixture
def epsilon_sweep(tmp_path) -> Path:
    """regularizer x step size x seed with robust accuracies, one failed and one unfinished job."""
    sweep, num = tmp_path / "sweep", 0
    for regularizer in ("adversarial", "adversarial_pgd"):
        for step in (0.05, 0.2):
            for seed in (0, 1):
                overrides = [f"regularizer={regularizer}", f"regularizer.adversarial.adv_step_size={step}", f"seed={seed}"]
                if regularizer == "adversarial_pgd" and step == 0.2 and seed == 1:
                    fake_job(sweep, num, overrides, regularizer, None, failed="CUDA out of memory")
                else:
                    base = 0.9 - step + 0.02 * seed
                    fake_job(sweep, num, overrides, regularizer, None,
                             metrics=robust(base, {0.0: base, 0.1: base - 0.3, 0.3: base - 0.6}, seed))
                num += 1
    fake_job(sweep, num, ["regularizer=adversarial", "regularizer.adversarial.adv_step_size=0.5", "seed=0"],
             "adversarial", None)  # never finished: no metrics.json, no failed.json
    return sweep


def test_epsilon_report_table_plot_and_problems(epsilon_sweep):
    result = report(epsilon_sweep)
    out = result["out_dir"]
    assert (out / "robust_accuracy_vs_epsilon.png").stat().st_size > 1000
    assert not (out / "accuracy_vs_label_frac.png").exists()  # label_frac never varies here
    assert result["keys"][-3:] == ["test/robust_acc/pgd/eps=0", "test/robust_acc/pgd/eps=0.1", "test/robust_acc/pgd/eps=0.3"]
    rows = {(r.regularizer, r.setting): r for r in result["rows"]}
    row = rows[("adversarial", "regularizer.adversarial.adv_step_size=0.05")]
    assert row.seeds == [0, 1]
    mean, std = row.stats["test/robust_acc/pgd/eps=0.1"]
    assert mean == pytest.approx(0.56) and std == pytest.approx(0.0141421, abs=1e-6)  # (0.55, 0.57)
    # The failed job's group keeps its other seed.
    assert rows[("adversarial_pgd", "regularizer.adversarial.adv_step_size=0.2")].seeds == [0]
    md = (out / "report.md").read_text()
    assert "7 of 9 jobs finished" in md
    assert "| 7 | failed |" in md and "CUDA out of memory" in md
    assert "| 8 | unfinished |" in md
    assert "56.0 ± 1.4" in md
    csv = (out / "report.csv").read_text().splitlines()
    assert csv[0].startswith("regularizer,label_frac,setting,n_seeds,test/acc mean,test/acc std")
    assert len(csv) == 1 + 4  # 2 regularizers x 2 step sizes; the unfinished step 0.5 has no row


def test_label_frac_plot_groups_by_regularizer(tmp_path):
    sweep, num = tmp_path / "sweep", 0
    for regularizer, gain in (("none", 0.0), ("graph", 0.1)):
        for frac in (0.01, 0.1, 1.0):
            for seed in (0, 1, 2):
                metrics = {"test/acc": 0.5 + gain + 0.1 * frac + 0.01 * seed, "val/acc": 0.5, "seed": seed,
                           "startup_seconds": 2.0}
                fake_job(sweep, num, [f"regularizer={regularizer}", f"data.label_frac={frac}", f"seed={seed}"],
                         regularizer, frac, metrics)
                num += 1
    result = report(sweep, tmp_path / "out")
    assert (tmp_path / "out" / "accuracy_vs_label_frac.png").stat().st_size > 1000
    assert [(r.regularizer, r.label_frac) for r in result["rows"]] == [
        ("none", 0.01), ("none", 0.1), ("none", 1.0), ("graph", 0.01), ("graph", 0.1), ("graph", 1.0)]
    assert result["rows"][-1].stats["test/acc"][0] == pytest.approx(0.71)
    assert "mean 2.00 s, max 2.00 s over 18 jobs" in (tmp_path / "out" / "report.md").read_text()


def test_collect_orders_jobs_numerically(tmp_path):
    for num in (10, 2, 1):
        fake_job(tmp_path, num, [f"seed={num}"], "none", 0.1, {"test/acc": 0.5, "seed": num})
    assert [j.path.name for j in collect(tmp_path)] == ["1", "2", "10"]


@pytest.mark.slow  # a fresh Python process: ~12 s of imports
def test_report_script_rejects_a_missing_dir(tmp_path):
    completed = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(tmp_path / "nope")],
                               capture_output=True, text=True)
    assert completed.returncode == 2 and completed.stderr == (
        f"nsl_lab: error: sweep_dir={str(tmp_path / 'nope')!r} is not a directory; "
        "allowed: a Hydra multirun or run directory\n")


def test_probe_curves_sit_beside_the_supervised_sweep(tmp_path):
    """A pretraining job per seed, each probing two label settings: its probes become lines of
    their own beside the supervised sweep given with compare."""
    pretrain, supervised = tmp_path / "pretrain", tmp_path / "supervised"
    for seed in (0, 1):
        probes = {f"probe/logreg/label_frac=0.01/seed={seed}/test/acc": 0.60 + 0.02 * seed,
                  f"probe/logreg/label_frac=0.01/seed={seed}/val/acc": 0.61,
                  f"probe/logreg/standard/seed={seed}/test/acc": 0.80,
                  f"probe/logreg/standard/seed={seed}/val/acc": 0.79,
                  "probe/logreg/label_frac=0.01/test/acc": 0.6,  # a mean: not a draw, not a job
                  "test/acc": 0.8, "val/acc": 0.79, "seed": seed}
        fake_job(pretrain, seed, ["experiment=cora_representation", f"seed={seed}"], "neighborhood", None, probes)
        for num, frac in enumerate((0.01, None)):
            fake_job(supervised, 2 * seed + num, ["regularizer=graph", f"seed={seed}"], "graph", frac,
                     {"test/acc": 0.5 if frac else 0.7, "val/acc": 0.5, "seed": seed})
    result = report(pretrain, compare=[supervised])
    rows = {(r.regularizer, r.label_frac): r for r in result["rows"]}
    probe = rows[("neighborhood -> logreg probe", 0.01)]
    assert probe.seeds == [0, 1] and probe.stats["test/acc"] == pytest.approx((0.61, 0.0141421356), rel=1e-5)
    assert rows[("neighborhood -> logreg probe", None)].stats["test/acc"][0] == pytest.approx(0.80)
    assert rows[("graph", 0.01)].stats["test/acc"][0] == pytest.approx(0.5)
    assert (result["out_dir"] / "accuracy_vs_label_frac.png").stat().st_size > 1000
    text = (result["out_dir"] / "report.md").read_text()
    assert "neighborhood -> logreg probe" in text and "6 of 6 jobs finished" in text  # directories, not probe draws


def report_script(*args: object) -> Completed:
    """``scripts/report.py`` in this process (its ``main``); an uncaught exception comes back as
    exit code 1 with its traceback on stderr, as a fresh process would show it."""
    spec = importlib.util.spec_from_file_location("report_script", REPO / "scripts" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main([str(a) for a in args])
        except Exception:  # noqa: BLE001 - the tests assert there is none
            traceback.print_exc()
            code = 1
    return Completed(code, out.getvalue(), err.getvalue())


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


BAD_FILES = [  # (file, content, the reason the report gives)
    ("metrics.json", '{"test/acc": 0.5,',
     "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 18 (char 17))"),
    ("metrics.json", "[1, 2]", "holds a JSON list, not an object of metrics"),
    ("metrics.json", '{"test/acc": "n/a"}', "test/acc='n/a' is not a number"),
    ("failed.json", '{"error": "ValueError", "mess', "not valid JSON (Unterminated string starting at: "
                                                      "line 1 column 25 (char 24))"),
    (".hydra/overrides.yaml", "- seed=0\n- 'regularizer=graph\n",
     "not valid YAML (found unexpected end of stream, line 3)"),
]


@pytest.mark.parametrize("file,content,reason", BAD_FILES, ids=[f"{f}:{c[:12]}" for f, c, _ in BAD_FILES])
def test_an_unreadable_job_is_listed_and_the_others_reported(tmp_path, file, content, reason):
    sweep = tmp_path / "sweep"
    for seed in (0, 1, 2):
        fake_job(sweep, seed, ["regularizer=graph", f"seed={seed}"], "graph", 0.1, {"test/acc": 0.5 + 0.1 * seed,
                                                                                      "seed": seed})
    if file == "failed.json":
        (sweep / "1" / "metrics.json").unlink()
    (sweep / "1" / file).write_text(content)
    completed = report_script(sweep)
    assert completed.returncode == 0 and "Traceback" not in completed.stderr
    assert completed.stderr == (f"nsl_lab: warning: unreadable job {sweep / '1'}/{file}: {reason}; "
                                "the other jobs are reported\n")
    assert "2 finished, 0 failed, 0 unfinished, 1 unreadable; wrote" in completed.stdout
    md = (sweep / "report" / "report.md").read_text()
    assert "2 of 3 jobs finished" in md and f"| 1 | unreadable |" in md and f"| {file}: {reason} |" in md
    assert "| graph | 0.1 |  | 2 | 60.0 ± 14.1 |" in md  # seeds 0 and 2


def test_no_readable_job_is_one_error_and_writes_nothing(tmp_path):
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        fake_job(sweep, seed, [f"seed={seed}"], "none", 0.1)
        (sweep / str(seed) / "metrics.json").write_text("[1, 2]")
    before = files_under(sweep)
    completed = report_script(sweep)
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr == (f"nsl_lab: error: no readable job under {sweep}: {sweep / '0'}/metrics.json: "
                                "holds a JSON list, not an object of metrics (and 1 more)\n")
    assert files_under(sweep) == before


def test_compare_with_a_failed_job_names_it_by_its_path(tmp_path):
    """A single run dir reported beside a sweep with a failed and an unfinished job (used to
    crash: the compared job is not under the reported dir)."""
    sweep_a, sweep_f = tmp_path / "sweepA", tmp_path / "sweepF"
    fake_job(sweep_a, 0, ["seed=0"], "none", 0.1, {"test/acc": 0.5, "seed": 0})
    fake_job(sweep_a, 1, ["seed=1"], "none", 0.1, failed="out of memory")
    fake_job(sweep_f, 0, ["regularizer=graph", "seed=0"], "graph", 0.1, failed="CUDA out of memory")
    fake_job(sweep_f, 1, ["regularizer=graph", "seed=1"], "graph", 0.1)
    completed = report_script(sweep_a / "0", "--compare", sweep_f)
    assert completed.returncode == 0 and completed.stderr == ""
    md = (sweep_a / "0" / "report" / "report.md").read_text()
    assert f"| {sweep_f / '0'} | failed | regularizer=graph seed=0 | CUDA out of memory |" in md
    assert f"| {sweep_f / '1'} | unfinished | regularizer=graph seed=1 |  |" in md
    # Inside the reported sweep a job is named relative to it.
    assert "| 1 | failed | seed=1 | out of memory |" in report(sweep_a)["out_dir"].joinpath("report.md").read_text()


def test_an_unusable_out_is_one_error_naming_it(tmp_path):
    sweep = tmp_path / "sweep"
    fake_job(sweep, 0, ["seed=0"], "none", 0.1, {"test/acc": 0.5, "seed": 0})
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    before = files_under(tmp_path)
    completed = report_script(sweep, "--out", a_file)
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr == (f"nsl_lab: error: --out={str(a_file)!r} is a file, not a folder; "
                                "allowed: a folder that exists or can be created\n")
    completed = report_script(sweep, "--out", a_file / "sub")
    assert completed.returncode == 2 and completed.stderr.startswith(
        f"nsl_lab: error: --out={str(a_file / 'sub')!r} cannot be created (")
    assert completed.stderr.endswith("); allowed: a folder that exists or can be created\n")
    assert files_under(tmp_path) == before and a_file.read_text() == "keep me"
    with pytest.raises(ConfigError, match=r"^out_dir='.*a_file' is a file"):
        report(sweep, a_file)


def test_a_dir_without_jobs_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    completed = report_script(tmp_path / "empty")
    assert completed.returncode == 2 and completed.stdout == ""
    assert completed.stderr == (f"nsl_lab: error: no Hydra jobs (*/.hydra/overrides.yaml) under {tmp_path / 'empty'}; "
                                "allowed: a Hydra multirun or run directory\n")
    assert files_under(tmp_path) == ["empty"]


@pytest.mark.slow  # a fresh Python process: ~12 s of imports
def test_report_script_errors_in_a_fresh_process(tmp_path):
    fake_job(tmp_path / "sweep", 0, ["seed=0"], "none", 0.1)
    (tmp_path / "sweep" / "0" / "metrics.json").write_text('{"test/acc": 0.5,')
    completed = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(tmp_path / "sweep")],
                               capture_output=True, text=True)
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert completed.stderr.startswith("nsl_lab: error: no readable job under ")
    assert len(completed.stderr.splitlines()) == 1 and not (tmp_path / "sweep" / "report").exists()


def test_a_failed_rerun_does_not_relabel_the_finished_run(tmp_path):
    """Job 0 finished (adversarial_pgd, step 0.05), then a rerun in its folder with other
    settings failed before training: Hydra rewrote .hydra/, and nsl_lab left the finished run's
    config_resolved.yaml, overrides.json and metrics.json. The finished run keeps its own labels
    and counts as finished."""
    sweep = tmp_path / "sweep"
    for num, step in enumerate((0.05, 0.2)):
        overrides = ["regularizer=adversarial_pgd", f"regularizer.adversarial.adv_step_size={step}", "seed=0"]
        fake_job(sweep, num, overrides, "adversarial_pgd", 0.1, {"test/acc": 0.6 + step, "seed": 0})
        (sweep / str(num) / "overrides.json").write_text(json.dumps(
            {"overrides": [*overrides, "hydra.job.num=0"], "choices": {"regularizer": "adversarial_pgd", "data": "cora"}}))
    rerun = ["regularizer=adversarial", "regularizer.adversarial.adv_step_size=-1", "data.label_frac=0.5", "seed=0"]
    (sweep / "0" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(rerun))
    (sweep / "0" / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": {"regularizer": "adversarial"}}}}))
    (sweep / "0" / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": {"label_frac": 0.5}, "seed": 0}))
    (sweep / "0" / "failed.json").write_text(json.dumps({"error": "ConfigError", "message": "adv_step_size=-1"}))
    job = read_job(sweep / "0")
    assert job.status == "finished" and job.label_frac == 0.1 and job.regularizer == "adversarial_pgd"
    assert job.overrides == ["regularizer=adversarial_pgd", "regularizer.adversarial.adv_step_size=0.05", "seed=0"]
    result = report(sweep)
    assert [(r.regularizer, r.label_frac, r.setting) for r in result["rows"]] == [
        ("adversarial_pgd", 0.1, "regularizer.adversarial.adv_step_size=0.05"),
        ("adversarial_pgd", 0.1, "regularizer.adversarial.adv_step_size=0.2")]
    assert "2 of 2 jobs finished" in (result["out_dir"] / "report.md").read_text()
    # A record that is not one is named, and the other job is still reported.
    (sweep / "1" / "overrides.json").write_text(json.dumps({"overrides": "seed=0", "choices": {}}))
    job = read_job(sweep / "1")
    assert job.status == "unreadable" and "overrides.json" in job.error
    # A run older than overrides.json is labelled by Hydra's record.
    (sweep / "1" / "overrides.json").unlink()
    assert read_job(sweep / "1").overrides == [
        "regularizer=adversarial_pgd", "regularizer.adversarial.adv_step_size=0.2", "seed=0"]


def test_a_single_label_frac_gives_one_point_per_line(tmp_path):
    """accuracy_vs_label_frac.png comes with any label fraction, as the docstrings say (a run
    on the public split has none)."""
    fake_job(tmp_path / "run", 0, ["seed=0"], "graph", 0.05, {"test/acc": 0.5, "seed": 0})
    result = report(tmp_path / "run" / "0")
    assert [p.name for p in result["files"]] == ["report.csv", "report.md", "accuracy_vs_label_frac.png"]
    assert (result["out_dir"] / "accuracy_vs_label_frac.png").stat().st_size > 1000
    fake_job(tmp_path / "public", 0, ["seed=0"], "graph", None, {"test/acc": 0.5, "seed": 0})
    assert [p.name for p in report(tmp_path / "public")["files"]] == ["report.csv", "report.md"]
