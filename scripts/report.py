"""Gather a sweep's jobs into one table (CSV + Markdown) and plots.

    python scripts/report.py multirun/cora_label_frac/2026-11-25_12-00-00
    python scripts/report.py <multirun dir> --out reports/cora --wandb
    python scripts/report.py multirun/cora_representation/<t> --compare multirun/cora_label_frac/<t>

Writes report.csv, report.md, accuracy_vs_label_frac.png (when label_frac varies) and
robust_accuracy_vs_epsilon.png (when jobs logged test/robust_acc/<attack>/eps=<e>) into <dir>/report.
Failed or unfinished jobs are listed in report.md; the others are still reported. A
pretraining sweep (learner=representation) reports its probes as "<regularizer> -> <kind> probe"
lines across label fractions; --compare adds another sweep's jobs (the supervised curves).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
            print(f"report: error: {name}={str(folder)!r} is not a directory", file=sys.stderr)
            return 2
    result = report(args.sweep_dir, args.out, args.compare)
    jobs = result["jobs"]
    if not jobs:
        print(f"report: error: no Hydra jobs (*/.hydra/overrides.yaml) under {args.sweep_dir}", file=sys.stderr)
        return 2
    counts = status_counts(jobs)
    print((result["out_dir"] / "report.md").read_text())
    print(f"{counts['finished']} finished, {counts['failed']} failed, {counts['unfinished']} unfinished; "
          f"wrote {', '.join(str(p) for p in result['files'])}")
    if args.wandb:
        print(f"W&B run: {log_to_wandb(result, args.sweep_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
