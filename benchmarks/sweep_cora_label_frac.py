"""Wall time of the whole label-fraction study with the joblib launcher, report included.

    python benchmarks/sweep_cora_label_frac.py            # 2 regularizers x 6 fractions x 3 seeds = 36 runs
    python benchmarks/sweep_cora_label_frac.py --extra trainer.check_val_every_n_epoch=5

Runs ``scripts/train.py -m sweep=cora_label_frac`` then ``scripts/report.py`` on its
directory, each as a subprocess, and times them end to end. Per-job overhead is each job's
``startup_seconds`` (process start, or job start in a reused joblib worker, to the first
training step). Writes benchmarks/results/sweep_cora_label_frac.{json,md}; the sweep itself
stays in benchmarks/results/sweep_cora_label_frac/ (not committed; report.md and plots in report/),
the label-fraction plot is copied to benchmarks/results/sweep_cora_label_frac.png.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from common import HERE, RESULTS, machine, run_main, write

TARGET_WALL_S = 240.0
TARGET_STARTUP_S = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every job")
    parser.add_argument("--name", default="sweep_cora_label_frac")
    args = parser.parse_args()
    sweep_dir = RESULTS / args.name
    shutil.rmtree(sweep_dir, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.setdefault("NSL_LAB_DATA", str(HERE.parent.parent / "shared" / "data"))
    train = [sys.executable, str(HERE.parent / "scripts" / "train.py"), "-m", "sweep=cora_label_frac",
             f"hydra.sweep.dir={sweep_dir}", *args.extra]
    load_before = os.getloadavg()
    start = time.perf_counter()
    subprocess.run(train, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sweep_s = time.perf_counter() - start
    subprocess.run([sys.executable, str(HERE.parent / "scripts" / "report.py"), str(sweep_dir)], check=True,
                   env=env, stdout=subprocess.DEVNULL)
    wall_s = time.perf_counter() - start

    load_after = os.getloadavg()
    jobs = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
    startup = [j["startup_seconds"] for j in jobs]
    startup_cpu = [j["startup_cpu_seconds"] for j in jobs]
    cpu = sum(j["cpu_seconds"] for j in jobs)
    workers = os.cpu_count() or 1
    summary = {
        "jobs_finished": len(jobs), "wall_seconds": wall_s, "sweep_seconds": sweep_s,
        "report_seconds": wall_s - sweep_s,
        "startup_seconds_mean": statistics.fmean(startup), "startup_seconds_max": max(startup),
        "startup_seconds_median": statistics.median(startup),
        "startup_cpu_seconds_median": statistics.median(startup_cpu), "startup_cpu_seconds_max": max(startup_cpu),
        "fit_seconds_mean": statistics.fmean(j["fit_seconds"] for j in jobs),
        "job_cpu_seconds_total": cpu,
        # With the cores to ourselves, the workers run in parallel at full speed.
        "idle_machine_estimate_seconds": cpu / workers + (wall_s - sweep_s),
        "load_average_before_after": [load_before[0], load_after[0]],
        "extra_overrides": args.extra,
    }
    table = (sweep_dir / "report" / "report.md").read_text().split("\n", 2)[2]
    command = " ".join(["python benchmarks/sweep_cora_label_frac.py", *(["--extra", *args.extra] if args.extra else [])])
    markdown = "\n".join([
        "# Sweep benchmark: sweep=cora_label_frac (joblib launcher)", "",
        f"Reproduce: `{command}`", "",
        f"- Jobs finished: {len(jobs)} of 36",
        f"- Wall time, sweep + report: {wall_s:.0f} s (target <= {TARGET_WALL_S:.0f} s); sweep alone {sweep_s:.0f} s",
        f"- Load average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f} on {workers} cores "
        "(other programs shared the machine when this is above the core count)",
        f"- Sum of the jobs' CPU seconds: {cpu:.0f} s; on an idle machine the {workers} workers would need about "
        f"{summary['idle_machine_estimate_seconds']:.0f} s including the report",
        f"- Per-job overhead, start to first training step: wall median {summary['startup_seconds_median']:.2f} s, "
        f"mean {summary['startup_seconds_mean']:.2f} s, max {summary['startup_seconds_max']:.2f} s; CPU median "
        f"{summary['startup_cpu_seconds_median']:.2f} s, max {summary['startup_cpu_seconds_max']:.2f} s "
        f"(target < {TARGET_STARTUP_S:.0f} s; the max is a worker's first job, which pays the imports)",
        f"- Mean fit time per job (wall): {summary['fit_seconds_mean']:.1f} s",
        f"- Machine: {machine()}", "",
        "## The sweep's report", "", table,
    ])
    shutil.copy(sweep_dir / "report" / "accuracy_vs_label_frac.png", RESULTS / f"{args.name}.png")
    # The report's own image links point into the sweep folder; link the copy kept here instead.
    markdown = markdown.replace("![accuracy_vs_label_frac.png](accuracy_vs_label_frac.png)", f"![accuracy]({args.name}.png)")
    write(args.name, {"summary": summary, "machine": machine()}, markdown)


if __name__ == "__main__":
    run_main(main)
