"""Digits across label fractions: base CNN vs virtual adversarial training vs labels propagated
over a kNN graph of the pixels vs both.

    python benchmarks/digits_label_frac.py                           # the study (~40 min, 2 jobs)
    python benchmarks/digits_label_frac.py --fractions 0.01 --seeds 0 --lrs 0.001 --steps 300

Every run: ``experiment=digits_label_frac`` (the small CNN on every training image, 16 labeled
ones added to each batch; validation every 100 steps, the best check's weights tested) with
``regularizer=`` none / vat / propagated / [propagated,vat]. Each (config, label fraction) takes
the learning rate of ``--lrs`` with the best mean *validation* accuracy over the seeds; its test
accuracy (clean, and under PGD-20 at Linf eps 0.1) is reported as mean ± std over the seeds.
Targets (issue 13): VAT >= base + 15 points at 1% labels; graph + VAT >= each alone.
Writes benchmarks/results/digits_label_frac.{json,md}; finished runs are kept in
digits_label_frac.runs.jsonl, so an interrupted study resumes.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from common import (RunCache, fingerprint, label_fraction, machine, mean_std, non_negative_int,
                    positive_float_text, positive_int, quiet, run_main, write)

CONFIGS = {
    "base": ("base CNN", "none"),
    "vat": ("VAT", "vat"),
    "graph": ("graph (propagated labels)", "propagated"),
    "graph_vat": ("graph + VAT", "[propagated,vat]"),
}
FRACTIONS = ["0.01", "0.05", "0.1", "1.0"]
NAME = "digits_label_frac"


def overrides(config: str, fraction: str, seed: int, lr: str, steps: int) -> list[str]:
    return ["experiment=digits_label_frac", f"regularizer={CONFIGS[config][1]}", f"data.label_frac={fraction}",
            f"seed={seed}", f"optimizer.lr={lr}", f"trainer.max_steps={steps}", "logger=none",
            "trainer.enable_progress_bar=false"]


def run_one(config: str, fraction: str, seed: int, lr: str, steps: int, run_dir: str) -> dict:
    quiet()
    from nsl_lab.compose import run_overrides

    start = time.perf_counter()
    metrics = run_overrides(overrides(config, fraction, seed, lr, steps), run_dir)
    return {"config": config, "label_frac": fraction, "seed": seed, "lr": lr, "steps": steps,
            "val_acc": metrics["val/acc"], "test_acc": metrics["test/acc"],
            "robust_acc": metrics["test/robust_acc/pgd/eps=0.1"], "n_labeled": metrics["n_labeled"],
            "run_seconds": time.perf_counter() - start}


def chosen(rows: list[dict], config: str, fraction: str, lrs: list[str], seeds: list[int]) -> list[dict]:
    """The runs of the learning rate with the best mean validation accuracy (complete ones only)."""
    best, best_val = [], -1.0
    for lr in lrs:
        runs = [r for r in rows if (r["config"], r["label_frac"], r["lr"]) == (config, fraction, lr)
                and r["seed"] in seeds]
        if runs:
            val = mean_std([r["val_acc"] for r in runs])[0]
            if val > best_val:
                best, best_val = runs, val
    return best


def report(rows: list[dict], args: argparse.Namespace) -> None:
    def cell(runs: list[dict], key: str) -> str:
        if not runs:
            return "not run"
        mean, std = mean_std([100 * r[key] for r in runs])
        return f"{mean:.1f} ± {std:.1f}"

    titles = [CONFIGS[c][0] for c in args.configs]
    head = "| label_frac | labeled images | " + " | ".join(titles) + " |"
    rule = "|---|---:|" + "---:|" * len(titles)
    clean, robust, validation, settings, checks = [head, rule], [head, rule], [head, rule], [head, rule], []
    for fraction in args.fractions:
        picked = {c: chosen(rows, c, fraction, args.lrs, args.seeds) for c in args.configs}
        labeled = next((str(runs[0]["n_labeled"]) for runs in picked.values() if runs), "")
        for table, key in ((clean, "test_acc"), (robust, "robust_acc"), (validation, "val_acc")):
            table.append(f"| {fraction} | {labeled} | " + " | ".join(cell(picked[c], key) for c in args.configs) + " |")
        settings.append(f"| {fraction} | {labeled} | " + " | ".join(
            f"lr {runs[0]['lr']}, {len(runs)} seeds" if runs else "-" for runs in picked.values()) + " |")
        means = {c: mean_std([100 * r["test_acc"] for r in runs])[0] for c, runs in picked.items() if runs}
        if fraction == "0.01" and {"base", "vat"} <= set(means):
            gain = means["vat"] - means["base"]
            checks.append(f"- 1% labels: VAT − base = {gain:+.1f} points (target ≥ +15: {'met' if gain >= 15 else 'NOT met'})")
        if {"graph", "vat", "graph_vat"} <= set(means):
            ok = means["graph_vat"] >= max(means["graph"], means["vat"])
            checks.append(f"- {fraction}: graph + VAT {means['graph_vat']:.1f} vs graph {means['graph']:.1f}, "
                          f"VAT {means['vat']:.1f} (target ≥ each: {'met' if ok else 'NOT met'})")
    options = (f"--fractions {' '.join(args.fractions)} --seeds {' '.join(map(str, args.seeds))} "
               f"--lrs {' '.join(args.lrs)} --steps {args.steps} --configs {' '.join(args.configs)}")
    markdown = "\n".join([
        "# Digits: test accuracy (%) against label fraction, base vs VAT vs graph vs graph + VAT",
        "",
        f"`experiment=digits_label_frac` ({args.steps} optimizer steps, the small CNN, 16 labeled images added to "
        "every batch of 64 training images, one thread), tested on the 360 test images of `data=digits`; mean ± std "
        f"over seeds {', '.join(map(str, args.seeds))} (seed = label draw, validation draw and initialisation). Each "
        f"cell's learning rate is the one of {', '.join(args.lrs)} with the best mean validation accuracy. Configs: "
        + "; ".join(f"{title}: `regularizer={CONFIGS[c][1]}`" for c, title in zip(args.configs, titles)) + ". "
        f"{args.jobs} runs at a time on the shared 2-core machine. Reproduce: "
        f"`python benchmarks/digits_label_frac.py {options} --jobs {args.jobs}`",
        "",
        "Clean test accuracy:",
        "",
        *clean,
        "",
        *checks,
        "",
        "PGD-20 robust accuracy at Linf eps 0.1 (pixels in [0, 1]):",
        "",
        *robust,
        "",
        "Validation accuracy of the weights tested (it chose the learning rate and the checkpoint):",
        "",
        *validation,
        "",
        "Chosen settings:",
        "",
        *settings,
        "",
        f"- Machine: {machine()}",
        "",
    ])
    write(NAME, {"runs": rows, "args": vars(args), "machine": machine()}, markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", nargs="+", type=label_fraction, default=FRACTIONS)
    parser.add_argument("--seeds", nargs="+", type=non_negative_int, default=[0, 1, 2])
    parser.add_argument("--lrs", nargs="+", type=positive_float_text, default=["0.01", "0.001"],
                        help="learning rates chosen from on validation")
    parser.add_argument("--steps", type=positive_int, default=3000, help="optimizer steps per run")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--jobs", type=positive_int, default=2, help="runs in parallel (one thread each)")
    args = parser.parse_args()
    quiet()
    cache = RunCache(NAME, fingerprint("src", "conf"))
    settings = [(c, f, s, lr) for f in args.fractions for c in args.configs for lr in args.lrs for s in args.seeds]
    rows = [row for c, f, s, lr in settings
            if (row := cache.find(config=c, label_frac=f, seed=s, lr=lr, steps=args.steps)) is not None]
    todo = [(c, f, s, lr) for c, f, s, lr in settings
            if cache.find(config=c, label_frac=f, seed=s, lr=lr, steps=args.steps) is None]
    print(f"{len(rows)} runs cached, {len(todo)} to run", flush=True)
    with tempfile.TemporaryDirectory() as scratch, ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_one, c, f, s, lr, args.steps, str(Path(scratch) / str(i)))
                   for i, (c, f, s, lr) in enumerate(todo)]
        for future in futures:
            row = future.result()
            cache.add(row)
            rows.append(row)
            print(f"{row['label_frac']:>5} {row['config']:10s} seed {row['seed']} lr {row['lr']}: val "
                  f"{row['val_acc']:.4f} test {row['test_acc']:.4f} ({row['run_seconds']:.0f} s)", flush=True)
    report(rows, args)


if __name__ == "__main__":
    run_main(main)
