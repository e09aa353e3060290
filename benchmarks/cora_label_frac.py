"""Base FFN versus graph-regularized FFN on Cora (or CiteSeer) across label fractions.

    python benchmarks/cora_label_frac.py            # full grid, ~10 minutes on 2 cores
    python benchmarks/cora_label_frac.py --seeds 0 --fractions 0.01 1.0
    python benchmarks/cora_label_frac.py --dataset citeseer --fractions 0.01 0.05 1.0

Writes benchmarks/results/<dataset>_label_frac.{json,md}. Test accuracy is on Planetoid's 1000
test nodes; ``public`` is the classic 20-labels-per-class split. Finished runs are cached in
benchmarks/results/<dataset>_label_frac.runs.jsonl (keyed by a hash of src/ and conf/), so an
interrupted benchmark resumes, and invocations over different --fractions can run side by side.
The Cora targets apply to Cora only.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import (RunCache, fingerprint, label_fraction, machine, mean_std, non_negative_int, positive_int,
                    quiet, run_main, write)

CONFIGS = {
    "base FFN (regularizer=none)": ["regularizer=none"],
    "NSL-faithful (regularizer=graph_nsl)": ["regularizer=graph_nsl"],
    "nsl_lab default (regularizer=graph)": ["regularizer=graph"],
}
TARGETS = {"0.01": 0.65, "0.05": 0.77, "1.0": 0.86, "public": 0.80}


def setting_overrides(setting: str) -> list[str]:
    return [] if setting == "public" else [f"data.label_frac={setting}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["cora", "citeseer"], default="cora")
    parser.add_argument("--fractions", nargs="*", type=label_fraction,
                        default=["0.01", "0.02", "0.05", "0.1", "0.2", "1.0"])
    parser.add_argument("--seeds", nargs="+", type=non_negative_int, default=[0, 1, 2])
    parser.add_argument("--no-public", action="store_true", help="skip the 20-per-class split")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads per run")
    args = parser.parse_args()
    quiet()
    from nsl_lab.compose import run_overrides

    settings = [*args.fractions, *([] if args.no_public else ["public"])]
    name_of_study = f"{args.dataset}_label_frac"
    title = {"cora": "Cora", "citeseer": "CiteSeer"}[args.dataset]
    targets = TARGETS if args.dataset == "cora" else {}
    cache = RunCache(name_of_study, fingerprint("src", "conf"))
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for setting in settings:
            for seed in args.seeds:
                for name, overrides in CONFIGS.items():
                    row = cache.find(config=name, setting=setting, seed=seed)
                    if row is None:
                        start = time.perf_counter()
                        metrics = run_overrides(
                            [f"data={args.dataset}", *overrides, *setting_overrides(setting), f"seed={seed}",
                             f"num_threads={args.threads}",
                             "logger=none", "trainer.enable_progress_bar=false"],
                            Path(scratch) / f"run{len(rows)}",
                        )
                        row = {"config": name, "setting": setting, "seed": seed,
                               "test_acc": metrics["test/acc"], "val_acc": metrics["val/acc"],
                               "n_labeled": metrics["n_labeled"], "fit_seconds": metrics["fit_seconds"],
                               "run_seconds": time.perf_counter() - start}
                        cache.add(row)
                    rows.append(row)
                    print(f"{setting:>7} seed {seed} {name:40s} test {row['test_acc']:.3f} "
                          f"run {row['run_seconds']:.1f}s", flush=True)

    def cell(config: str, setting: str) -> tuple[float, float]:
        return mean_std([r["test_acc"] for r in rows if r["config"] == config and r["setting"] == setting])

    summary = {
        "accuracy": {c: {s: dict(zip(("mean", "std"), cell(c, s))) for s in settings} for c in CONFIGS},
        "max_run_seconds": max(r["run_seconds"] for r in rows),
    }
    n_labeled = {s: sorted({r["n_labeled"] for r in rows if r["setting"] == s}) for s in settings}
    lines = [
        "| label setting | labeled nodes | " + " | ".join(CONFIGS) + " | target (default) |",
        "|---|---|" + "---|" * len(CONFIGS) + "---|",
    ]
    for s in settings:
        cells = [f"{100 * m:.1f} ± {100 * sd:.1f}" for m, sd in (cell(c, s) for c in CONFIGS)]
        target = f">= {100 * targets[s]:.0f}" if s in targets else ""
        label = "20 per class (public split)" if s == "public" else f"label_frac {s}"
        lines.append(f"| {label} | {'/'.join(map(str, n_labeled[s]))} | " + " | ".join(cells) + f" | {target} |")
    markdown = "\n".join([
        f"# {title}: test accuracy (%) against label fraction",
        "",
        f"Mean ± std over seeds {args.seeds}; test on Planetoid's 1000 test nodes. "
        f"Reproduce: `python benchmarks/cora_label_frac.py{'' if args.dataset == 'cora' else ' --dataset citeseer'}`",
        "",
        *lines,
        "",
        f"- Slowest single run (compose to metrics.json, in-process, {args.threads} torch thread(s)): "
        f"{summary['max_run_seconds']:.1f} s (target <= 30 s; per-run times depend on machine load, "
        "see `benchmarks/results/cora_speed.md` for the speed targets)",
        f"- Machine: {machine()}",
        "",
    ])
    write(name_of_study, {"summary": summary, "runs": rows, "machine": machine(), "args": vars(args)}, markdown)


if __name__ == "__main__":
    run_main(main)
