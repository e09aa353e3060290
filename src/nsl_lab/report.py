"""One table and a few plots from Hydra multirun directories (``scripts/report.py``).

Every job directory (one with ``.hydra/``) is read: ``metrics.json`` when it finished,
``failed.json`` when it crashed, neither when it never ended. Finished jobs are grouped by
their overrides without ``seed`` and summarised as mean ± std over seeds. A label-free
pretraining job (``learner=representation``) counts once per probe kind, label setting and
draw (its ``probe/<kind>/<setting>/seed=<s>/...`` metrics), so its probe curves sit beside the
supervised curves of another sweep given with ``--compare``.

A job whose files cannot be read (``metrics.json`` that is not a JSON object of numbers, a
corrupt ``failed.json``, ``.hydra/*.yaml``, ``config_resolved.yaml`` or ``overrides.json``) is
*unreadable*: it is listed with the file and the reason, and every other job is still reported.

Labels of a finished job. Hydra rewrites ``.hydra/`` (overrides, choices, composed config)
whenever a job starts, so a later attempt in the same folder (a failed rerun) leaves its own
overrides there. nsl_lab writes ``config_resolved.yaml`` and ``overrides.json`` (the job's
overrides and group choices) only once a run got as far as training, so beside
``metrics.json`` they are the finished run's own: a finished job's overrides, regularizer and
label_frac come from them (``.hydra/`` only for a run older than ``overrides.json``). A
finished job is reported as finished even when a later attempt left ``failed.json``.

``accuracy_vs_label_frac.png`` is made when a finished job trained on a label fraction
(``data.label_frac`` set), even a single one (then one point per line);
``robust_accuracy_vs_epsilon.png`` when jobs logged ``test/robust_acc/<attack>/eps=<e>``.
Nothing is written when the report fails (no job, no readable job, an unusable output folder),
and every file is written atomically.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nsl_lab.attacks.evaluation import ROBUST_KEY
from nsl_lab.errors import ConfigError
from nsl_lab.files import RUN_OVERRIDES_FILE, atomic_write, write_text
from nsl_lab.loggers import wandb_mode

@dataclass
class Job:
    path: Path
    status: str                               # finished, failed, unfinished or unreadable
    overrides: list[str]
    regularizer: str
    label_frac: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""                           # failed: its message; unreadable: "<file>: <reason>"

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


class Unreadable(Exception):
    """A job file that cannot be read: ``file`` (relative to the job) and the reason."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")


def _load(job: Path, file: str) -> Any:
    """The parsed content of ``job/file`` (JSON or YAML by its suffix), ``None`` when it is missing."""
    path = job / file
    if not path.is_file():
        return None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise Unreadable(file, getattr(error, "strerror", None) or str(error)) from None
    try:
        return json.loads(text) if file.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise Unreadable(file, f"not valid JSON ({error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise Unreadable(file, f"not valid YAML ({problem}{where})") from None


def _mapping(job: Path, file: str) -> dict:
    content = _load(job, file)
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise Unreadable(file, f"holds a {type(content).__name__}, not a mapping")
    return content


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_ABSENT = object()


def _at(config: Any, key: str) -> Any:
    """The value at dotted ``key`` in ``config``, or ``_ABSENT``."""
    for part in key.split("."):
        if not isinstance(config, dict) or part not in config:
            return _ABSENT
        config = config[part]
    return config


def _own_labels(record: dict) -> tuple[list[str], str]:
    """``(overrides, regularizer)`` from a run's ``overrides.json``."""
    overrides, choices = record.get("overrides"), record.get("choices")
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides) \
            or not isinstance(choices, dict):
        raise Unreadable(RUN_OVERRIDES_FILE, "not {overrides: [key=value strings], choices: {group: option}}")
    return [o for o in overrides if not o.startswith("hydra")], str(choices.get("regularizer") or "?")


def _read_job(path: Path) -> Job:
    overrides = _load(path, ".hydra/overrides.yaml") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise Unreadable(".hydra/overrides.yaml", "not a list of overrides (key=value strings)")
    overrides = [o for o in overrides if not o.startswith("hydra")]
    hydra = _mapping(path, ".hydra/hydra.yaml")
    resolved = _mapping(path, "config_resolved.yaml")
    composed = _mapping(path, ".hydra/config.yaml") if (path / ".hydra" / "config.yaml").is_file() else None
    config = resolved or composed or {}
    runtime = _at(hydra, "hydra.runtime.choices")
    choices = runtime if isinstance(runtime, dict) else {}
    regularizer = str(choices.get("regularizer") or next(
        (o.split("=", 1)[1] for o in overrides if o.startswith("regularizer=")), "?"))
    label_frac = _at(config, "data.label_frac")
    label_frac = None if label_frac in (None, _ABSENT) else label_frac
    if label_frac is not None and not _number(label_frac):
        raise Unreadable("config_resolved.yaml" if resolved else ".hydra/config.yaml",
                         f"data.label_frac={label_frac!r} is not a number")
    metrics = _load(path, "metrics.json")
    if metrics is not None:
        if not isinstance(metrics, dict):
            raise Unreadable("metrics.json", f"holds a JSON {type(metrics).__name__}, not an object of metrics")
        for key, value in metrics.items():
            if not _number(value):
                raise Unreadable("metrics.json", f"{key}={value!r} is not a number")
        seed = metrics.get("seed", 0)
        if not math.isfinite(seed) or seed != int(seed):
            raise Unreadable("metrics.json", f"seed={seed!r} is not an integer")
        record = _mapping(path, RUN_OVERRIDES_FILE)
        if record:  # the finished run's own record names it, not a later attempt's Hydra record
            overrides, regularizer = _own_labels(record)
        return Job(path, "finished", overrides, regularizer, None if label_frac is None else float(label_frac),
                   metrics)
    job = Job(path, "unfinished", overrides, regularizer, None if label_frac is None else float(label_frac))
    failure = _load(path, "failed.json")
    if failure is not None:
        if not isinstance(failure, dict):
            raise Unreadable("failed.json", f"holds a JSON {type(failure).__name__}, not an object")
        job.status, job.error = "failed", str(failure.get("message") or failure.get("error", ""))
    return job


def read_job(path: Path) -> Job:
    """One job directory; a job with a file that cannot be read comes back ``unreadable``, its
    error naming the file and the reason."""
    try:
        return _read_job(path)
    except Unreadable as error:
        try:
            overrides = [o for o in _load(path, ".hydra/overrides.yaml") or [] if isinstance(o, str)]
        except (Unreadable, TypeError):
            overrides = []
        return Job(path, "unreadable", overrides, "?", None, error=str(error))


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
    return {s: sum(v == s for v in status.values()) for s in ("finished", "failed", "unfinished", "unreadable")}


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


def csv_text(rows: list[Row], keys: list[str]) -> str:
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(["regularizer", "label_frac", "setting", "n_seeds",
                     *[f"{k} {part}" for k in keys for part in ("mean", "std")]])
    for r in rows:
        writer.writerow([r.regularizer, _frac(r.label_frac), r.setting, len(r.seeds),
                         *[f"{v:.6g}" for k in keys for v in r.stats[k]]])
    return handle.getvalue()


def job_name(path: Path, sweep_dir: Path) -> str:
    """A job as the report names it: relative to the reported sweep when inside it, else its
    path as found (a compared sweep's job, or the reported run dir itself)."""
    if path != sweep_dir and path.is_relative_to(sweep_dir):
        return str(path.relative_to(sweep_dir))
    return str(path)


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
        lines += ["", "## Failed, unfinished or unreadable jobs", "", "| job | status | overrides | error |",
                  "|---|---|---|---|"]
        for j in problems:
            error = j.error.replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {job_name(j.path, sweep_dir)} | {j.status} | {' '.join(j.overrides)} | {error} |")
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
    try:
        atomic_write(path, lambda partial: figure.savefig(partial, dpi=120, format="png"))
    finally:
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


def output_dir(out_dir: Path, setting: str = "out_dir") -> Path:
    """``out_dir``, created when missing; a :class:`ConfigError` naming ``setting`` when it
    is a file or cannot be created."""
    allowed = "allowed: a folder that exists or can be created"
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{setting}={str(out_dir)!r} is a file, not a folder; {allowed}", setting)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(f"{setting}={str(out_dir)!r} cannot be created ({reason}); {allowed}", setting) from None
    return out_dir


def report(sweep_dir: str | Path, out_dir: str | Path | None = None, compare: list[str | Path] = (), *,
           out_setting: str = "out_dir") -> dict[str, Any]:
    """Writes ``report.csv``, ``report.md`` and the plots into ``out_dir`` (default
    ``<sweep_dir>/report``), with the jobs of the ``compare`` sweeps beside this one's (e.g.
    the supervised label-fraction study beside a pretraining sweep's probes); returns the jobs
    (unreadable ones included), rows and file paths.

    Raises :class:`ConfigError` (``out_setting`` names the output folder in its message), and
    writes nothing, when there is no job, no readable job, or the output folder is unusable.
    """
    sweep_dir = Path(sweep_dir)
    folders = [sweep_dir, *map(Path, compare)]
    jobs = [job for folder in folders for job in collect(folder)]
    where = ", ".join(str(f) for f in folders)
    if not jobs:
        raise ConfigError(f"no Hydra jobs (*/.hydra/overrides.yaml) under {where}; "
                          "allowed: a Hydra multirun or run directory", "sweep_dir")
    unreadable = [j for j in jobs if j.status == "unreadable"]
    if len(unreadable) == len(jobs):
        more = f" (and {len(jobs) - 1} more)" if len(jobs) > 1 else ""
        raise ConfigError(f"no readable job under {where}: {jobs[0].path}/{jobs[0].error}{more}", "sweep_dir")
    rows, keys = summarise(jobs), metric_keys(jobs)
    out_dir = output_dir(Path(out_dir) if out_dir else sweep_dir / "report", out_setting)
    try:
        plots = [name for name, plot in (("accuracy_vs_label_frac.png", lambda path: plot_label_frac(rows, path)),
                                         ("robust_accuracy_vs_epsilon.png", lambda path: plot_epsilon(rows, keys, path)))
                 if plot(out_dir / name)]
        atomic_write(out_dir / "report.csv", lambda partial: partial.write_text(csv_text(rows, keys), newline=""))
        write_text(out_dir / "report.md", markdown(rows, keys, jobs, sweep_dir, plots))
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(f"{out_setting}={str(out_dir)!r} cannot be written ({reason}); "
                          "allowed: a writable folder", out_setting) from None
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
