"""Speed targets of the core on Cora, measured in one run.

    python benchmarks/cora_speed.py

1. The README's main job (`nsl-train data.label_frac=0.01`, run as `scripts/train.py`), process
   start to metrics.json, median of --repeats runs.
2. Fit time of the default graph-regularized FFN and of the NSL-faithful one against the base
   FFN, same epochs, runs interleaved so machine load hits all three alike.
Writes benchmarks/results/cora_speed.{json,md}.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import HERE, machine, positive_int, quiet, run_main, write

MAIN_JOB = ["data.label_frac=0.01"]
FIT_CONFIGS = {"base": ["regularizer=none"], "graph": ["regularizer=graph"], "graph_nsl": ["regularizer=graph_nsl"]}


def main_job_seconds(scratch: Path) -> float:
    run_dir = scratch / f"main{time.perf_counter_ns()}"
    start = time.perf_counter()
    subprocess.run([sys.executable, str(HERE.parent / "scripts" / "train.py"), *MAIN_JOB, f"hydra.run.dir={run_dir}"],
                   check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    if not (run_dir / "metrics.json").exists():
        raise RuntimeError("the main job wrote no metrics.json")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=positive_int, default=3, help="runs of each measure (median)")
    args = parser.parse_args()
    quiet()
    from nsl_lab.compose import run_overrides

    fits: dict[str, list[float]] = {name: [] for name in FIT_CONFIGS}
    main_jobs, epochs = [], set()
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            main_jobs.append(main_job_seconds(Path(scratch)))
            for name, overrides in FIT_CONFIGS.items():
                metrics = run_overrides([*overrides, "data.label_frac=0.01", f"seed={repeat}", "logger=none",
                                         "trainer.enable_progress_bar=false"], Path(scratch) / f"{name}{repeat}")
                fits[name].append(metrics["fit_seconds"])
                epochs.add(int(metrics["epochs"]))
            print(f"repeat {repeat}: main job {main_jobs[-1]:.1f}s, fits " +
                  ", ".join(f"{n} {v[-1]:.2f}s" for n, v in fits.items()), flush=True)
    median = {name: statistics.median(values) for name, values in fits.items()}
    summary = {
        "main_job_seconds_median": statistics.median(main_jobs),
        "main_job_seconds": main_jobs,
        "fit_seconds": fits,
        "graph_over_base": median["graph"] / median["base"],
        "graph_nsl_over_base": median["graph_nsl"] / median["base"],
        "epochs": sorted(epochs),
    }
    same_epochs = "/".join(map(str, sorted(epochs)))
    markdown = "\n".join([
        "# Cora speed (this machine, one run)",
        "",
        "Reproduce: `python benchmarks/cora_speed.py`",
        "",
        "| measure | target | measured |",
        "|---|---|---|",
        f"| README main job, process start to metrics.json (median of {args.repeats}) | <= 10 s | "
        f"{summary['main_job_seconds_median']:.1f} s |",
        f"| fit, default `regularizer=graph` / base, same {same_epochs} epochs | <= 1.5x | {summary['graph_over_base']:.2f}x "
        f"({median['graph']:.2f} s / {median['base']:.2f} s) |",
        f"| fit, `regularizer=graph_nsl` / base, same {same_epochs} epochs | <= 1.5x | {summary['graph_nsl_over_base']:.2f}x "
        f"({median['graph_nsl']:.2f} s / {median['base']:.2f} s) |",
        "",
        f"Machine: {machine()}",
        "",
    ])
    write("cora_speed", {"summary": summary, "machine": machine(), "args": vars(args)}, markdown)


if __name__ == "__main__":
    run_main(main)
