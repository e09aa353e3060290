"""BiLSTM base versus graph-regularized on IMDB across label fractions.

    python benchmarks/imdb_label_frac.py                         # base vs NSL-faithful graph loss
    python benchmarks/imdb_label_frac.py --configs base propagated --steps 2400 --name imdb_propagated
    python benchmarks/imdb_label_frac.py --fractions 0.01 1.0 --steps 100 --jobs 1
    python benchmarks/imdb_label_frac.py --configs vat propagated_vat --fractions 0.01 1.0 --steps 2400 \
        --skip-graph-timing --name imdb_vat [--keep-finished: run only what <name>.json lacks]

Configs: ``base`` (``experiment=imdb_label_frac regularizer=none``), ``graph_nsl`` (the same with
NSL's pairwise graph loss on a top-10 TF-IDF + SVD 256 graph), ``propagated``
(``experiment=imdb_propagated``: labels propagated over a word-vector graph train every review)
and two variants of it: ``propagated_aligned`` (class shares aligned with the labeled reviews')
``propagated_feature_graph`` (from epoch 4 on, labels propagated again each epoch over the
graph joined with the network's own kNN graph), ``vat`` (``experiment=imdb_vat``: virtual
adversarial training on the word embeddings of every training review), ``propagated_vat``
(``experiment=imdb_propagated_vat``: both), ``adversarial`` (Miyato et al. 2017's adversarial
training on the labeled reviews' word embeddings, L2 radius 5) and ``vat_adversarial`` (VAT + it).
Each run: each review's last 160 tokens, BiLSTM 2 x 32, a fixed budget of optimizer steps, one
thread; test accuracy on the 25,000 test reviews. The default graph's build time and peak
memory are measured first, in a subprocess.
Writes benchmarks/results/<name>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from common import HERE, label_fraction, machine, non_negative_int, positive_int, quiet, run_main, write

AT_EMBEDDINGS = ["regularizer.adversarial.adv_grad_norm=l2", "regularizer.adversarial.adv_step_size=5.0",
                 "regularizer.adversarial.multiplier=1.0"]
CONFIGS = {
    "base": ("base BiLSTM", ["experiment=imdb_label_frac", "regularizer=none"]),
    "graph_nsl": ("NSL-faithful (graph_nsl)", ["experiment=imdb_label_frac", "regularizer=graph_nsl_logits"]),
    "propagated": ("nsl_lab: propagated labels (experiment=imdb_propagated)", ["experiment=imdb_propagated"]),
    "propagated_aligned": ("propagated, class shares aligned",
                           ["experiment=imdb_propagated", "regularizer.propagated.align_to_prior=true"]),
    "propagated_feature_graph": ("propagated, + feature graph from epoch 4 (Iscen et al.)",
                                 ["experiment=imdb_propagated", "regularizer.propagated.feature_graph_from_epoch=4"]),
    "vat": ("VAT on word embeddings (experiment=imdb_vat)", ["experiment=imdb_vat"]),
    "vat_ema": ("VAT on word embeddings, weights averaged (experiment=imdb_vat callbacks=ema, decay 0.998)",
                ["experiment=imdb_vat", "callbacks=ema", "callbacks.ema.decay=0.998"]),
    "propagated_vat": ("propagated labels + VAT (experiment=imdb_propagated_vat)", ["experiment=imdb_propagated_vat"]),
    # Miyato et al. 2017's AT on the labeled reviews (L2 radius 5 over the embedded review, as VAT's), alone and + VAT
    "adversarial": ("adversarial training on word embeddings (AT)", ["experiment=imdb_vat", "regularizer=adversarial",
                                                                      "~regularizer.vat", *AT_EMBEDDINGS]),
    "vat_adversarial": ("VAT + AT on word embeddings", ["experiment=imdb_vat", "regularizer=[vat,adversarial]",
                                                         *AT_EMBEDDINGS]),
    # fastText-style bag of words and bigrams over each review's first 800 tokens (Joulin et al. 2017)
    "bag": ("bag of words and bigrams (experiment=imdb_bag)", ["experiment=imdb_bag"]),
    "bag_vat": ("bag of words and bigrams + VAT, radius 1 (experiment=imdb_bag_vat)", ["experiment=imdb_bag_vat"]),
    # VAT where it has unlabeled reviews to read: every training review in the batches, 8 labeled ones added
    "bag_vat_unlabeled": ("bag + VAT over every training review (+ 8 labeled a batch)",
                          ["experiment=imdb_bag_vat", "data.include_unlabeled=true", "data.labeled_per_batch=8"]),
    # the same on Miyato et al.'s normalized vectors, VAT radius 5 (theirs) and 20
    "bag_normalized": ("bag, normalized vectors", ["experiment=imdb_bag", "backbone.normalize=true"]),
    "bag_normalized_vat_5": ("bag, normalized vectors + VAT, radius 5",
                             ["experiment=imdb_bag_vat", "backbone.normalize=true", "regularizer.vat.adv_step_size=5.0"]),
    "bag_normalized_vat_20": ("bag, normalized vectors + VAT, radius 20",
                              ["experiment=imdb_bag_vat", "backbone.normalize=true",
                               "regularizer.vat.adv_step_size=20.0"]),
}
#: per results name (``--name``), the target of each label fraction
TARGETS = {
    "imdb_vat": {"1.0": "vat >= 89 (base 87.7)", "0.01": "propagated_vat >= 80 (propagated 78.3)"},
    "imdb_vat_4800": {"1.0": "vat >= 89 (base 87.7 at 2400 steps)"},
    "imdb_vat_ema": {"1.0": "vat_ema >= 89 (base 87.7 at 2400 steps, VAT 88.5 at 4800)"},
    "imdb_vat_adversarial": {"1.0": "VAT (+ AT) >= 89 (base 87.7, VAT 88.1)"},
    "imdb_bag": {"1.0": "VAT >= 89 (BiLSTM base 87.7); the bag's own base beside it"},
    "imdb_bag_1pct": {"0.01": "VAT's gain where it reads unlabeled reviews (no target)"},
    "imdb_bag_normalized": {"1.0": "VAT >= 89 (BiLSTM base 87.7); the bag's own base beside it"},
}
DEFAULT_TARGETS = {"1.0": "base >= 86", "0.01": "graph >= base + 10"}
FRACTIONS = ["0.01", "0.02", "0.05", "0.1", "1.0"]

GRAPH_CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(1)
from nsl_lab.datamodules.imdb import IMDBDataModule
start = time.perf_counter()
data = IMDBDataModule(data_dir=sys.argv[1], cache_dir=sys.argv[2], max_len=160)
data.setup()
print(json.dumps({"seconds": time.perf_counter() - start, "edges": data.graph.num_edges,
                  "nodes": data.num_train_reviews,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure_graph_build(data_dir: str) -> dict:
    """Reads IMDB, embeds the training reviews (TF-IDF + SVD) and builds the graph, uncached."""
    with tempfile.TemporaryDirectory() as cache:
        completed = subprocess.run([sys.executable, "-c", GRAPH_CHILD, data_dir, cache], capture_output=True,
                                   text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_one(fraction: str, name: str, seed: int, steps: int, run_dir: str) -> dict:
    quiet()
    from nsl_lab.compose import run_overrides

    start = time.perf_counter()
    metrics = run_overrides(
        [*CONFIGS[name][1], f"data.label_frac={fraction}", f"seed={seed}", f"trainer.max_steps={steps}",
         "logger=none", "trainer.enable_progress_bar=false"],
        run_dir,
    )
    return {"config": name, "label_frac": fraction, "test_acc": metrics["test/acc"], "val_acc": metrics["val/acc"],
            "n_labeled": metrics["n_labeled"], "fit_seconds": metrics["fit_seconds"],
            "run_seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", nargs="+", type=label_fraction, default=FRACTIONS)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--steps", type=positive_int, default=1200, help="optimizer steps per run")
    parser.add_argument("--jobs", type=positive_int, default=2, help="runs in parallel (one thread each)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=["base", "graph_nsl"],
                        help="the first is the base every other is compared with")
    parser.add_argument("--name", default="imdb_label_frac", help="results file name")
    parser.add_argument("--skip-graph-timing", action="store_true")
    parser.add_argument("--keep-finished", action="store_true",
                        help="keep the runs already in <name>.json (same seed and steps); run only the others")
    parser.add_argument("--report-only", action="store_true", help="rewrite the Markdown from <name>.json, run nothing")
    args = parser.parse_args()
    quiet()
    if args.report_only:
        saved = json.loads((HERE / "results" / f"{args.name}.json").read_text())
        # The saved run's own settings and machine, not this invocation's.
        report(saved["runs"], saved["graph_build"], argparse.Namespace(**saved["args"]), saved["machine"])
        return

    data_dir = os.environ["NSL_LAB_DATA"]
    settings = [(fraction, name) for fraction in args.fractions for name in args.configs]
    finished = finished_runs(args) if args.keep_finished else []
    settings = [(f, n) for f, n in settings if not any((r["label_frac"], r["config"]) == (f, n) for r in finished)]
    # Separate processes: each run has its own one-thread torch and its own peak memory.
    with tempfile.TemporaryDirectory() as scratch, ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        graph_future = None if args.skip_graph_timing else pool.submit(measure_graph_build, data_dir)
        futures = [pool.submit(run_one, fraction, name, args.seed, args.steps, str(Path(scratch) / str(i)))
                   for i, (fraction, name) in enumerate(settings)]
        rows = list(finished)
        for future in futures:
            rows.append(future.result())
            print(f"{rows[-1]['label_frac']:>5} {rows[-1]['config']:32s} test {rows[-1]['test_acc']:.4f} "
                  f"run {rows[-1]['run_seconds']:.0f}s", flush=True)
            # Rewrite the results after every run, so an interrupted grid still leaves its table.
            report(rows, graph_future.result() if graph_future and graph_future.done() else None, args)
        report(rows, graph_future.result() if graph_future else None, args)


def finished_runs(args: argparse.Namespace) -> list[dict]:
    """The runs of an earlier invocation with the same name, seed and steps (``--keep-finished``)."""
    path = HERE / "results" / f"{args.name}.json"
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    if (saved["args"]["seed"], saved["args"]["steps"]) != (args.seed, args.steps):
        return []
    return [r for r in saved["runs"] if r["config"] in args.configs and r["label_frac"] in args.fractions]


def reproduce_options(args: argparse.Namespace) -> str:
    """The command-line options that made this run differ from the defaults (besides configs, steps, jobs, name)."""
    options = ""
    if args.seed != 0:
        options += f" --seed {args.seed}"
    if list(args.fractions) != FRACTIONS:
        options += " --fractions " + " ".join(args.fractions)
    if args.skip_graph_timing:
        options += " --skip-graph-timing"
    return options


def report(rows: list[dict], graph: dict | None, args: argparse.Namespace, machine_info: dict | None = None) -> None:
    machine_info = machine_info or machine()
    def cell(config: str, fraction: str) -> dict | None:
        return next((r for r in rows if r["config"] == config and r["label_frac"] == fraction), None)

    others = args.configs[1:]
    titles = [CONFIGS[name][0] for name in args.configs]
    lines = [
        "| label_frac | labeled reviews | " + " | ".join(titles) + " | " +
        "".join(f"gain of {name} (points) | " for name in others) + "wall time (s) | target |",
        "|---|---:|" + "---:|" * (len(titles) + len(others) + 1) + "---|",
    ]
    validation = ["| label_frac | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(titles)]
    for fraction in args.fractions:
        found = [cell(name, fraction) for name in args.configs]
        accuracy = [f"{100 * r['test_acc']:.1f}" if r else "not run" for r in found]
        gains = [f"{100 * (r['test_acc'] - found[0]['test_acc']):+.1f}" if r and found[0] else "" for r in found[1:]]
        seconds = " / ".join(f"{r['run_seconds']:.0f}" if r else "-" for r in found)
        labeled = next((f"{r['n_labeled']:,}" for r in found if r), "")
        lines.append(f"| {fraction} | {labeled} | {' | '.join(accuracy)} | " + "".join(f"{g} | " for g in gains) +
                     f"{seconds} | {TARGETS.get(args.name, DEFAULT_TARGETS).get(fraction, '')} |")
        validation.append(f"| {fraction} | " + " | ".join(f"{100 * r['val_acc']:.1f}" if r else "not run" for r in found)
                          + " |")
    graph_line = (
        f"- Graph build (read + tokenise + TF-IDF/SVD 256 + exact top-10 over {graph['nodes']:,} reviews, one thread): "
        f"{graph['seconds']:.1f} s, peak RSS {graph['peak_rss_mb']:.0f} MB, {graph['edges']:,} directed edges"
        if graph else "- Graph build: not measured in this run"
    )
    markdown = "\n".join([
        f"# IMDB: test accuracy (%) against label fraction ({', '.join(args.configs)})",
        "",
        f"Seed {args.seed}, test on the 25,000 test reviews, {args.steps} optimizer steps per run, overriding each "
        "config's preset: " + "; ".join(f"{CONFIGS[name][0]}: `{' '.join(CONFIGS[name][1])}`" for name in args.configs) +
        " (batches of 64 training reviews, plus `data.labeled_per_batch` labeled ones where the preset sets it; "
        + "; ".join(reads for reads, family in (("each review's last 160 tokens, BiLSTM 2 x 32", "bi"),
                                                  ("each review's first 800 tokens, bag of words and bigrams", "bag"))
                    if any(name.startswith("bag") == (family == "bag") for name in args.configs))
        + f", one thread; {args.jobs} runs at a time on the "
        "shared 2-core machine, so wall times include contention). "
        f"Reproduce: `python benchmarks/imdb_label_frac.py --configs {' '.join(args.configs)} --steps {args.steps} "
        f"--jobs {args.jobs}{reproduce_options(args)} --name {args.name}`",
        "",
        *lines,
        "",
        "Validation accuracy (%) of the weights tested (the best validation check; it chose every setting):",
        "",
        *validation,
        "",
        graph_line,
        f"- Machine: {machine_info}",
        "",
    ])
    write(args.name, {"runs": rows, "graph_build": graph, "machine": machine_info, "args": vars(args)}, markdown)


if __name__ == "__main__":
    run_main(main)
