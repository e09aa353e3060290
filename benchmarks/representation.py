"""Label-free pretraining, then probes and fine-tuning, on Cora and CiteSeer (no graph at test).

    python benchmarks/representation.py                          # Cora and CiteSeer, seeds 0 1 2
    python benchmarks/representation.py --datasets cora --seeds 0
    python benchmarks/representation.py --timing-only            # one pretraining vs 21 supervised runs

For each dataset and seed: one pretraining (``experiment=<dataset>_representation``) whose probes
draw their labels with that seed at 7 settings (as ``sweep=cora_label_frac`` draws a supervised
run's), then fine-tuning of the whole encoder from its weights (``init_from``) at 1% labels, the
public split and full labels, with two recipes: the default graph regularizer (``fine-tuned``) and
distillation from a GRAND teacher trained over the graph (``regularizer=distill``, 200 epochs:
``experiment=cora_distill``; the ``fine-tuned, distilled`` column, public split and full labels).
The table sets these beside the
supervised columns of ``benchmarks/results/<dataset>_label_frac.json`` (base, NSL-faithful,
default graph; run ``benchmarks/cora_label_frac.py [--dataset citeseer]`` first).

Timing, side by side in one process and one thread: one Cora pretraining probed at 7 settings x
3 seeds against the 21 supervised runs (``regularizer=graph``) of the same grid.

Writes benchmarks/results/representation.{json,md}; finished runs are cached in
representation.runs.jsonl (keyed by a hash of src/ and conf/), so an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import RESULTS, RunCache, fingerprint, machine, mean_std, non_negative_int, quiet, run_main, write

FRACTIONS = ["0.01", "0.02", "0.05", "0.1", "0.2", "1.0"]
SETTINGS = [*FRACTIONS, "public"]
FINE_TUNE_SETTINGS = ["0.01", "public", "1.0"]
#: fine-tuning recipes: column -> the overrides beside init_from
RECIPES = {"fine-tuned": [], "fine-tuned, distilled": ["regularizer=distill", "trainer.max_epochs=200"]}
#: the settings each recipe runs at: the distilled one needs 20 labels per class or more (its GRAND
#: teacher reaches ~37% on Cora at 1%, docs/results.md)
RECIPE_SETTINGS = {"fine-tuned": FINE_TUNE_SETTINGS, "fine-tuned, distilled": ["public", "1.0"]}
TABLE_SETTINGS = ["0.01", "0.05", "1.0", "public"]
TITLES = {"cora": "Cora", "citeseer": "CiteSeer"}
SUPERVISED = {"base FFN (regularizer=none)": "base", "NSL-faithful (regularizer=graph_nsl)": "NSL-faithful",
              "nsl_lab default (regularizer=graph)": "default graph"}
#: the issue's targets: (dataset, column, setting) -> accuracy
TARGETS = {("cora", "probe", "public"): 0.80, ("citeseer", "probe", "public"): 0.70,
           ("cora", "probe", "0.01"): 0.65, ("cora", "fine-tuned", "0.01"): 0.70,
           ("cora", "fine-tuned, distilled", "public"): 0.835, ("cora", "fine-tuned, distilled", "1.0"): 0.885}
COMMON = ["logger=none", "trainer.enable_progress_bar=false", "num_threads=1"]


def probe_key(setting: str, seed: int, kind: str = "logreg") -> str:
    name = "standard" if setting == "public" else f"label_frac={float(setting):g}"
    return f"probe/{kind}/{name}/seed={seed}/test/acc"


def setting_overrides(setting: str) -> list[str]:
    return [] if setting == "public" else [f"data.label_frac={setting}"]


def pretrain(run_overrides, cache: RunCache, dataset: str, seed: int, run_dir: Path) -> dict:
    row = cache.find(kind="pretrain", dataset=dataset, seed=seed)
    if row is None or not (run_dir / "model.pt").is_file():
        start = time.perf_counter()
        metrics = run_overrides([f"experiment={dataset}_representation", f"seed={seed}", f"probe.seeds=[{seed}]",
                                 *COMMON], run_dir)
        row = {"kind": "pretrain", "dataset": dataset, "seed": seed, "run_seconds": time.perf_counter() - start,
               "fit_seconds": metrics["fit_seconds"], "probe_seconds": metrics["probe/seconds"],
               "probes": {s: {k: metrics[probe_key(s, seed, k)] for k in ("logreg", "knn")} for s in SETTINGS},
               "val": {s: metrics[probe_key(s, seed).replace("/test/", "/val/")] for s in SETTINGS}}
        if cache.find(kind="pretrain", dataset=dataset, seed=seed) is None:
            cache.add(row)
    print(f"{dataset} seed {seed} pretrain: probe public {row['probes']['public']['logreg']:.3f}, "
          f"1% {row['probes']['0.01']['logreg']:.3f}", flush=True)
    return row


def fine_tune(run_overrides, cache: RunCache, dataset: str, seed: int, setting: str, recipe: str, pretrained: Path,
              scratch: Path) -> dict:
    row = cache.find(kind="fine-tune", dataset=dataset, seed=seed, setting=setting, recipe=recipe)
    if row is None:
        start = time.perf_counter()
        metrics = run_overrides([f"data={dataset}", f"init_from={pretrained}", "backbone.projection_size=null",
                                 *RECIPES[recipe], *setting_overrides(setting), f"seed={seed}", *COMMON],
                                scratch / f"tune-{dataset}-{seed}-{setting}-{recipe.replace(', ', '-')}")
        row = {"kind": "fine-tune", "dataset": dataset, "seed": seed, "setting": setting, "recipe": recipe,
               "test_acc": metrics["test/acc"], "val_acc": metrics["val/acc"],
               "run_seconds": time.perf_counter() - start}
        cache.add(row)
    print(f"{dataset} seed {seed} {recipe} {setting}: test {row['test_acc']:.3f}", flush=True)
    return row


def timing(run_overrides, scratch: Path) -> dict:
    """One pretraining probed at 7 settings x 3 seeds, then the 21 supervised runs of that grid."""
    start = time.perf_counter()
    run_overrides(["experiment=cora_representation", "probe.seeds=[0,1,2]", *COMMON], scratch / "timing-pretrain")
    pretraining = time.perf_counter() - start
    start = time.perf_counter()
    for setting in SETTINGS:
        for seed in (0, 1, 2):
            run_overrides(["regularizer=graph", *setting_overrides(setting), f"seed={seed}", *COMMON],
                          scratch / f"timing-{setting}-{seed}")
    supervised = time.perf_counter() - start
    print(f"timing: pretraining + 21 probes {pretraining:.1f} s, 21 supervised runs {supervised:.1f} s", flush=True)
    return {"pretrain_and_probes_seconds": pretraining, "supervised_21_runs_seconds": supervised,
            "ratio": supervised / pretraining}


def supervised_columns(dataset: str) -> dict[str, dict[str, dict[str, float]]]:
    path = RESULTS / f"{dataset}_label_frac.json"
    if not path.is_file():
        return {}
    accuracy = json.loads(path.read_text())["summary"]["accuracy"]
    return {SUPERVISED[config]: cells for config, cells in accuracy.items() if config in SUPERVISED}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(TITLES), default=list(TITLES))
    parser.add_argument("--seeds", nargs="+", type=non_negative_int, default=[0, 1, 2])
    parser.add_argument("--timing-only", action="store_true", help="only the side-by-side timing")
    parser.add_argument("--no-timing", action="store_true")
    args = parser.parse_args()
    quiet()
    from nsl_lab.compose import run_overrides

    cache = RunCache("representation", fingerprint("src", "conf"))
    previous = json.loads((RESULTS / "representation.json").read_text()) if (RESULTS / "representation.json").is_file() else {}
    pretrained, tuned = [], []
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        if not args.timing_only:
            for dataset in args.datasets:
                for seed in args.seeds:
                    run_dir = scratch / f"pretrain-{dataset}-{seed}"
                    pretrained.append(pretrain(run_overrides, cache, dataset, seed, run_dir))
                    for setting in FINE_TUNE_SETTINGS:
                        for recipe in (r for r in RECIPES if setting in RECIPE_SETTINGS[r]):
                            if cache.find(kind="fine-tune", dataset=dataset, seed=seed, setting=setting,
                                          recipe=recipe) is None and not (run_dir / "model.pt").is_file():
                                pretrain(run_overrides, RunCache("representation-rerun", "none"), dataset, seed,
                                         run_dir)
                            tuned.append(fine_tune(run_overrides, cache, dataset, seed, setting, recipe, run_dir,
                                                   scratch))
        times = previous.get("timing") if args.no_timing else timing(run_overrides, scratch)

    def cell(values: list[float]) -> dict[str, float]:
        mean, std = mean_std(values)
        return {"mean": mean, "std": std, "n": len(values)}

    summary: dict = {}
    for dataset in {r["dataset"] for r in pretrained}:
        rows = [r for r in pretrained if r["dataset"] == dataset]
        summary[dataset] = {
            "probe": {s: cell([r["probes"][s]["logreg"] for r in rows]) for s in SETTINGS},
            "probe_val": {s: cell([r["val"][s] for r in rows]) for s in SETTINGS},
            "knn probe": {s: cell([r["probes"][s]["knn"] for r in rows]) for s in SETTINGS},
            **{recipe: {s: cell([t["test_acc"] for t in tuned if (t["dataset"], t["setting"], t["recipe"])
                                 == (dataset, s, recipe)]) for s in RECIPE_SETTINGS[recipe]} for recipe in RECIPES},
            **{f"{recipe} val": {s: cell([t["val_acc"] for t in tuned if (t["dataset"], t["setting"], t["recipe"])
                                          == (dataset, s, recipe)]) for s in RECIPE_SETTINGS[recipe]}
               for recipe in RECIPES},
            "pretrain_run_seconds": cell([r["run_seconds"] for r in rows]),
        }

    def pct(c: dict | None) -> str:
        return "–" if not c or not c.get("n", 1) else f"{100 * c['mean']:.1f} ± {100 * c['std']:.1f}"

    lines = []
    for dataset in args.datasets:
        if dataset not in summary:
            continue
        supervised = supervised_columns(dataset)
        columns = [*supervised, "probe", "knn probe", *RECIPES]
        lines += [f"### {TITLES[dataset]}", "", "| label setting | " + " | ".join(columns) + " | targets |",
                  "|---|" + "---|" * (len(columns) + 1)]
        for s in TABLE_SETTINGS:
            cells = [pct(supervised[c].get(s)) for c in supervised]
            cells += [pct(summary[dataset][c].get(s)) for c in ("probe", "knn probe", *RECIPES)]
            targets = ", ".join(f"{c} >= {100 * t:g}" for (d, c, ts), t in TARGETS.items() if d == dataset and ts == s)
            label = "public split (20 per class)" if s == "public" else f"label_frac {s}"
            lines.append(f"| {label} | " + " | ".join(cells) + f" | {targets} |")
        lines += ["", "Probes at every setting (logistic regression, test / validation): " + "; ".join(
            f"{s}: {pct(summary[dataset]['probe'][s])} / {pct(summary[dataset]['probe_val'][s])}" for s in SETTINGS), ""]
        lines += ["Fine-tuning, validation accuracy (the recipes are compared on it): " + "; ".join(
            f"{recipe} ({' '.join(RECIPES[recipe]) or 'regularizer=graph'}): " + ", ".join(
                f"{s} {pct(summary[dataset][recipe + ' val'][s])}" for s in RECIPE_SETTINGS[recipe])
            for recipe in RECIPES), ""]
    if times:
        lines += ["### Time: one pretraining + probes vs the supervised grid", "",
                  f"Cora, one thread, in one process: one pretraining probed at 7 label settings x 3 seeds took "
                  f"{times['pretrain_and_probes_seconds']:.1f} s; the 21 supervised runs of the same grid "
                  f"(regularizer=graph) took {times['supervised_21_runs_seconds']:.1f} s "
                  f"({times['ratio']:.1f}x as long).", ""]
    markdown = "\n".join([
        "# Label-free pretraining + probes, and fine-tuning from it (no graph at test)", "",
        f"Test accuracy (%), mean ± std over seeds {args.seeds} (each seed: its own pretraining and label draw). "
        "Supervised columns from `benchmarks/results/<dataset>_label_frac.json`. "
        "Reproduce: `python benchmarks/representation.py`", "", *lines,
        f"- Machine: {machine()}", ""])
    write("representation", {"summary": summary, "timing": times, "pretrain_runs": pretrained,
                              "fine_tune_runs": tuned, "machine": machine(), "args": vars(args)}, markdown)


if __name__ == "__main__":
    run_main(main)
