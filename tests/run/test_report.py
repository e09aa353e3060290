"""scripts/report.py on hand-made sweep directories (no training)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from nsl_lab.report import collect, report


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
    assert completed.returncode == 2 and "is not a directory" in completed.stderr


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
