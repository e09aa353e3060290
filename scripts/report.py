"""Gather a sweep's jobs into one table (CSV + Markdown) and plots.

    python scripts/report.py multirun/cora_label_frac/2026-11-25_12-00-00
    python scripts/report.py <multirun dir> --out reports/cora --wandb
    python scripts/report.py multirun/cora_representation/<t> --compare multirun/cora_label_frac/<t>

Writes report.csv, report.md, accuracy_vs_label_frac.png (when jobs trained on a label fraction,
data.label_frac set: one point per line when it does not vary) and robust_accuracy_vs_epsilon.png
(when jobs logged test/robust_acc/<attack>/eps=<e>) into <dir>/report.
Failed, unfinished and unreadable jobs (a corrupt metrics.json, failed.json or .hydra/ file: one
warning line each on stderr) are listed in report.md; the others are still reported. A finished
job is labelled from its own overrides.json and config_resolved.yaml (see nsl_lab.report). A
pretraining sweep (learner=representation) reports its probes as "<regularizer> -> <kind> probe"
lines across label fractions; --compare adds another sweep's jobs (the supervised curves).
Bad input (no jobs, no readable job, an unusable --out) is one "nsl_lab: error:" line, exit
code 2, and nothing is written.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nsl_lab.errors import NslLabError
from nsl_lab.report import log_to_wandb, report, status_counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun directory")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default <sweep_dir>/report)")
    parser.add_argument("--compare", type=Path, nargs="*", default=[],
                        help="other multirun directories reported beside this one (e.g. the supervised study)")
    parser.add_argument("--wandb", action="store_true", help="also log the table and plots to W&B (offline without a key)")
    args = parser.parse_args(argv)
    for name, folder in [("sweep_dir", args.sweep_dir), *(("--compare", c) for c in args.compare)]:
        if not folder.is_dir():
            print(f"nsl_lab: error: {name}={str(folder)!r} is not a directory; allowed: a Hydra multirun "
                  "or run directory", file=sys.stderr)
            return 2
    try:
        result = report(args.sweep_dir, args.out, args.compare, out_setting="--out")
    except NslLabError as error:
        print(f"nsl_lab: error: {error}", file=sys.stderr)
        return 2
    jobs = result["jobs"]
    for job in jobs:
        if job.status == "unreadable":
            print(f"nsl_lab: warning: unreadable job {job.path}/{job.error}; the other jobs are reported",
                  file=sys.stderr)
    counts = status_counts(jobs)
    print((result["out_dir"] / "report.md").read_text())
    unreadable = f", {counts['unreadable']} unreadable" if counts["unreadable"] else ""
    print(f"{counts['finished']} finished, {counts['failed']} failed, {counts['unfinished']} unfinished{unreadable}; "
          f"wrote {', '.join(str(p) for p in result['files'])}")
    if args.wandb:
        print(f"W&B run: {log_to_wandb(result, args.sweep_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
