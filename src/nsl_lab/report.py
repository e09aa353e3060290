"""One table and a few plots from Hydra multirun directories (``scripts/report.py``).

Every job directory (one with ``.hydra/``) is read: ``metrics.json`` when it finished,
``failed.json`` when it crashed, neither when it never ended. Finished jobs are grouped by
their overrides without ``seed`` and summarised as mean ± std over seeds. A label-free
pretraining job (``learner=representation``) counts once per probe kind, label setting and
draw (its ``probe/<kind>/<setting>/seed=<s>/...`` metrics), so its probe curves sit beside the
supervised curves of another sweep given with ``--compare``.
"""
from __future__ import annotations

import csv
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nsl_lab.attacks.evaluation import ROBUST_KEY
from nsl_lab.loggers import wandb_mode

@dataclass
class Job:
    path: Path
    status: str                               # finished, failed or unfinished
    overrides: list[str]
    regularizer: str
    label_frac: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""

    def setting(self, varying: set[str]) -> str:
        """This job's values of the swept keys other than regularizer, label_frac and seed."""
        return " ".join(o for o in self.overrides if o.split("=", 1)[0] in varying)


@dataclass
class Row:
    regularizer: str
    label_frac: float | None
    setting: str
    seeds: list[int]
    stats: dict[str, tuple[float, float]]  # metric -> (mean, std)


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def read_job(path: Path) -> Job:
    overrides = [o for o in (_yaml(path / ".hydra" / "overrides.yaml") or []) if not o.startswith("hydra")]
    hydra = _yaml(path / ".hydra" / "hydra.yaml") or {}
    config = _yaml(path / "config_resolved.yaml") or _yaml(path / ".hydra" / "config.yaml") or {}
    choices = ((hydra.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    regularizer = str(choices.get("regularizer") or next(
        (o.split("=", 1)[1] for o in overrides if o.startswith("regularizer=")), "?"))
    label_frac = (config.get("data") or {}).get("label_frac")
    job = Job(path, "unfinished", overrides, regularizer, None if label_frac is None else float(label_frac))
    if (path / "metrics.json").is_file():
        job.status, job.metrics = "finished", json.loads((path / "metrics.json").read_text())
    elif (path / "failed.json").is_file():
        failure = json.loads((path / "failed.json").read_text())
        job.status, job.error = "failed", failure.get("message") or failure.get("error", "")
    return job


#: one probe draw's accuracy in a pretraining job's metrics (nsl_lab.probes)
PROBE_KEY = re.compile(r"^probe/(?P<kind>[^/]+)/(?P<setting>standard|label_frac=[^/]+)/seed=(?P<seed>\d+)/"
                       r"(?P<split>val|test)/acc$")


def probe_jobs(job: Job) -> list[Job]:
    """A finished pretraining job as one job per probe kind, label setting and draw (``test/acc``
    and ``val/acc`` of that probe; ``standard`` is the public split); any other job as itself."""
    draws: dict[tuple[str, str, int], dict[str, float]] = {}
    for key, value in job.metrics.items():
        match = PROBE_KEY.match(key)
        if match:
            draw = (match["kind"], match["setting"], int(match["seed"]))
            draws.setdefault(draw, {"seed": draw[2]})[f"{match['split']}/acc"] = float(value)
    if not draws:
        return [job]
    return [Job(job.path, job.status, job.overrides, f"{job.regularizer} -> {kind} probe",
                None if setting == "standard" else float(setting.removeprefix("label_frac=")), metrics)
            for (kind, setting, _), metrics in draws.items()]


def collect(sweep_dir: str | Path) -> list[Job]:
    """Every job under ``sweep_dir`` (any depth), in job-number order; pretraining jobs expanded
    into their probe draws (:func:`probe_jobs`)."""
    found = sorted({p.parent.parent for p in Path(sweep_dir).glob("**/.hydra/overrides.yaml")},
                   key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))])
    return [expanded for path in found for expanded in probe_jobs(read_job(path))]


def status_counts(jobs: list[Job]) -> dict[str, int]:
    """Job directories per status (a pretraining job's probe draws count once)."""
    status = {job.path: job.status for job in jobs}
    return {s: sum(v == s for v in status.values()) for s in ("finished", "failed", "unfinished")}


def metric_keys(jobs: list[Job]) -> list[str]:
    keys = {k for j in jobs for k, v in j.metrics.items() if k.startswith(("test/", "val/"))
            and isinstance(v, (int, float))}
    robust = sorted((k for k in keys if ROBUST_KEY.match(k)), key=lambda k: (ROBUST_KEY.match(k)["attack"], epsilon(k)))
    return [k for k in ("test/acc", "val/acc") if k in keys] + sorted(keys - set(robust) - {"test/acc", "val/acc"}) + robust


def epsilon(key: str) -> float:
    return float(ROBUST_KEY.match(key)["eps"])


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def varying_keys(jobs: list[Job]) -> set[str]:
    """Override keys that take more than one value across the sweep (its swept axes)."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job.overrides:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    return {k for k, v in values.items() if len(v) > 1} - {"seed", "regularizer", "data.label_frac"}


def summarise(jobs: list[Job]) -> list[Row]:
    groups: dict[tuple, list[Job]] = {}
    varying = varying_keys(jobs)
    for job in jobs:
        if job.status == "finished":
            groups.setdefault((job.regularizer, job.label_frac, job.setting(varying)), []).append(job)
    keys = metric_keys(jobs)
    rows = []
    for (regularizer, label_frac, setting), members in groups.items():
        stats = {k: mean_std([float(j.metrics[k]) for j in members if k in j.metrics]) for k in keys}
        seeds = sorted(int(j.metrics.get("seed", -1)) for j in members)
        rows.append(Row(regularizer, label_frac, setting, seeds, stats))
    order = {r: i for i, r in enumerate(dict.fromkeys(j.regularizer for j in jobs))}
    rows.sort(key=lambda r: (order[r.regularizer], r.setting, -1.0 if r.label_frac is None else r.label_frac))
    return rows


def _frac(value: float | None) -> str:
    return "public" if value is None else f"{value:g}"


def write_csv(rows: list[Row], keys: list[str], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["regularizer", "label_frac", "setting", "n_seeds",
                         *[f"{k} {part}" for k in keys for part in ("mean", "std")]])
        for r in rows:
            writer.writerow([r.regularizer, _frac(r.label_frac), r.setting, len(r.seeds),
                             *[f"{v:.6g}" for k in keys for v in r.stats[k]]])


def markdown(rows: list[Row], keys: list[str], jobs: list[Job], sweep_dir: Path, plots: list[str]) -> str:
    def cell(mean: float, std: float) -> str:
        return "–" if math.isnan(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"

    counts = status_counts(jobs)
    lines = [f"# Sweep report: {sweep_dir}", "",
             f"{counts['finished']} of {sum(counts.values())} jobs finished. Accuracies in %, mean ± std over seeds.", "",
             "| regularizer | label_frac | setting | seeds | " + " | ".join(keys) + " |",
             "|---|---|---|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r.regularizer} | {_frac(r.label_frac)} | {r.setting} | {len(r.seeds)} | "
                     + " | ".join(cell(*r.stats[k]) for k in keys) + " |")
    startup = [j.metrics["startup_seconds"] for j in jobs if "startup_seconds" in j.metrics]
    if startup:
        lines += ["", f"Per-job startup (process or job start to first training step): "
                      f"mean {statistics.fmean(startup):.2f} s, max {max(startup):.2f} s over {len(startup)} jobs."]
    problems = [j for j in jobs if j.status != "finished"]
    if problems:
        lines += ["", "## Failed or unfinished jobs", "", "| job | status | overrides | error |", "|---|---|---|---|"]
        for j in problems:
            error = j.error.replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {j.path.relative_to(sweep_dir)} | {j.status} | {' '.join(j.overrides)} | {error} |")
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)


def _lines(rows: list[Row]) -> dict[str, list[Row]]:
    lines: dict[str, list[Row]] = {}
    for r in rows:
        lines.setdefault(f"{r.regularizer} {r.setting}".strip(), []).append(r)
    return lines


def _errorbar_plot(path: Path, series: list[tuple[str, list[float], list[float], list[float]]], **settings: Any) -> None:
    """One line with error bars per (label, x, mean, std) series, accuracies in %."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for label, xs, means, stds in series:
        axes.errorbar(xs, [100 * m for m in means], yerr=[100 * s for s in stds], marker="o", capsize=3, label=label)
    axes.set(**settings)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_label_frac(rows: list[Row], path: Path) -> bool:
    """Test accuracy against label fraction (log x), one line per regularizer (and setting)."""
    rows = [r for r in rows if r.label_frac is not None and "test/acc" in r.stats]
    if not rows:
        return False
    series = []
    for name, members in _lines(rows).items():
        members = sorted(members, key=lambda r: r.label_frac)
        series.append((name, [r.label_frac for r in members], [r.stats["test/acc"][0] for r in members],
                       [r.stats["test/acc"][1] for r in members]))
    _errorbar_plot(path, series, xscale="log", xlabel="label fraction", ylabel="test accuracy (%)",
                   title="Accuracy against label fraction")
    return True


def plot_epsilon(rows: list[Row], keys: list[str], path: Path) -> bool:
    """Robust test accuracy against epsilon, one line per regularizer (and setting, label_frac)
    and attack: PGD and AutoAttack side by side."""
    robust = [k for k in keys if ROBUST_KEY.match(k)]
    if not robust:
        return False
    attacks = list(dict.fromkeys(ROBUST_KEY.match(k)["attack"] for k in robust))
    series = []
    for name, members in _lines(rows).items():
        for r in members:
            for attack in attacks:
                points = [(epsilon(k), *r.stats[k]) for k in robust
                          if ROBUST_KEY.match(k)["attack"] == attack and not math.isnan(r.stats[k][0])]
                label = name if len(members) == 1 else f"{name} label_frac={_frac(r.label_frac)}"
                label = label if len(attacks) == 1 else f"{label} ({attack})"
                series.append((label, [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]))
    _errorbar_plot(path, series, xlabel="epsilon", ylabel="robust test accuracy (%)",
                   title="Robust accuracy against epsilon")
    return True


def report(sweep_dir: str | Path, out_dir: str | Path | None = None, compare: list[str | Path] = ()) -> dict[str, Any]:
    """Writes ``report.csv``, ``report.md`` and the plots into ``out_dir`` (default
    ``<sweep_dir>/report``), with the jobs of the ``compare`` sweeps beside this one's (e.g.
    the supervised label-fraction study beside a pretraining sweep's probes); returns the jobs,
    rows and file paths."""
    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir) if out_dir else sweep_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [job for folder in (sweep_dir, *compare) for job in collect(folder)]
    rows, keys = summarise(jobs), metric_keys(jobs)
    plots = []
    if plot_label_frac(rows, out_dir / "accuracy_vs_label_frac.png"):
        plots.append("accuracy_vs_label_frac.png")
    if plot_epsilon(rows, keys, out_dir / "robust_accuracy_vs_epsilon.png"):
        plots.append("robust_accuracy_vs_epsilon.png")
    write_csv(rows, keys, out_dir / "report.csv")
    (out_dir / "report.md").write_text(markdown(rows, keys, jobs, sweep_dir, plots))
    return {"jobs": jobs, "rows": rows, "keys": keys, "out_dir": out_dir,
            "files": [out_dir / "report.csv", out_dir / "report.md", *[out_dir / p for p in plots]]}


def log_to_wandb(result: dict[str, Any], sweep_dir: Path, project: str = "nsl_lab", mode: str | None = None) -> Path:
    """Logs the report's table and plots as one W&B run in the sweep's group; returns its dir."""
    import wandb

    keys = result["keys"]
    table = wandb.Table(columns=["regularizer", "label_frac", "setting", "n_seeds",
                                 *[f"{k} {p}" for k in keys for p in ("mean", "std")]])
    for r in result["rows"]:
        table.add_data(r.regularizer, _frac(r.label_frac), r.setting, len(r.seeds),
                       *[v for k in keys for v in r.stats[k]])
    run = wandb.init(project=project, group=sweep_dir.name, job_type="report", name=f"report-{sweep_dir.name}",
                     dir=str(result["out_dir"]), mode=wandb_mode(mode),
                     settings=wandb.Settings(init_timeout=60, silent=True, x_disable_stats=True))
    run.log({"report/table": table, **{f"report/{p.stem}": wandb.Image(str(p)) for p in result["files"]
                                       if p.suffix == ".png"}})
    run_dir = Path(run.dir).parent
    run.finish()
    return run_dir
