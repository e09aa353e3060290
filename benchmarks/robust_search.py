"""The validation search behind robust_eval's PGD-7-long (first round) and PGD-10-EMA
(``experiment=digits_robust``, second round: the ``*_ema*`` recipes): adversarial training
recipes for the digits CNN, each scored on the 180 validation images (the test set chooses nothing).

    python benchmarks/robust_search.py --jobs 2          # every recipe, seed 0 (~45 min on 2 cores)
    python benchmarks/robust_search.py --recipes pgd7_e40 pgd7_m3_e100

Each recipe trains ``experiment=digits_cnn`` with its overrides (seed 0, one thread), then
attacks the validation split: PGD-20 (Linf, random start, global seed 0) and the white-box half
of AutoAttack (APGD-CE then APGD-T on the rows APGD-CE left correct) at eps 0.1 and 0.2. The pick:
the best mean APGD accuracy among recipes whose clean validation accuracy is within a point of
base's. Finished recipes are cached in benchmarks/results/robust_search.runs.jsonl (keyed by a
hash of src/ and conf/). Writes benchmarks/results/robust_search.{json,md}.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import RunCache, fingerprint, machine, positive_int, quiet, run_jobs, run_main, write

PGD = ["regularizer=adversarial_pgd"]


def EMA(decay: float) -> list[str]:
    return ["callbacks=ema", f"callbacks.ema.decay={decay}"]


RECIPES = {
    "base": ["regularizer=none"],
    "pgd7_e40": PGD,  # the shipped regularizer=adversarial_pgd with experiment=digits_cnn
    "pgd7_e100": [*PGD, "trainer.max_epochs=100"],
    "pgd7_e200": [*PGD, "trainer.max_epochs=200"],
    "pgd7_m3_e100": [*PGD, "trainer.max_epochs=100", "regularizer.adversarial.multiplier=3.0"],
    "pgd10_eps25_e100": [*PGD, "trainer.max_epochs=100", "regularizer.adversarial.pgd_iterations=10",
                         "regularizer.adversarial.pgd_epsilon=0.25", "regularizer.adversarial.adv_step_size=0.06"],
    "pgd7_m3_e150": [*PGD, "trainer.max_epochs=150", "regularizer.adversarial.multiplier=3.0"],
    "pgd10_m3_e100": [*PGD, "trainer.max_epochs=100", "regularizer.adversarial.multiplier=3.0",
                      "regularizer.adversarial.pgd_iterations=10", "regularizer.adversarial.adv_step_size=0.075"],
    "trades2_e40": ["regularizer=trades", "regularizer.trades.multiplier=2.0"],
    "pgd_trades1_e40": ["regularizer=[adversarial_pgd,trades]", "regularizer.trades.multiplier=1.0"],
    "pgd_trades1_e100": ["regularizer=[adversarial_pgd,trades]", "regularizer.trades.multiplier=1.0",
                         "trainer.max_epochs=100"],
    # Weight averaging: the tested model is an exponential moving average of the trained one.
    "pgd7_m3_e100_ema995": [*PGD, "trainer.max_epochs=100", "regularizer.adversarial.multiplier=3.0", *EMA(0.995)],
    "pgd7_m3_e100_ema99": [*PGD, "trainer.max_epochs=100", "regularizer.adversarial.multiplier=3.0", *EMA(0.99)],
    "pgd7_e100_ema995": [*PGD, "trainer.max_epochs=100", *EMA(0.995)],
    "pgd7_m3_e150_ema995": [*PGD, "trainer.max_epochs=150", "regularizer.adversarial.multiplier=3.0", *EMA(0.995)],
    "pgd7_m2_e100_ema995": [*PGD, "trainer.max_epochs=100", "regularizer.adversarial.multiplier=2.0", *EMA(0.995)],
    "pgd7_e150_ema995": [*PGD, "trainer.max_epochs=150", *EMA(0.995)],
    "pgd10_eps25_e100_ema995": [*PGD, "trainer.max_epochs=100", "regularizer.adversarial.pgd_iterations=10",
                                "regularizer.adversarial.pgd_epsilon=0.25", "regularizer.adversarial.adv_step_size=0.06",
                                *EMA(0.995)],
    "pgd7_eps25_e100_ema995": [*PGD, "trainer.max_epochs=100", "regularizer.adversarial.pgd_epsilon=0.25",
                               "regularizer.adversarial.adv_step_size=0.08", *EMA(0.995)],
}
COMMON = ["experiment=digits_cnn", "logger=none", "trainer.enable_progress_bar=false", "num_threads=1",
          "eval.attacks=[pgd]", "eval.eps=[0.1]"]
EPS = (0.1, 0.2)


# Its own attack loop rather than nsl-eval --split val (which the robust_eval study uses): these
# rows were first measured by this loop, and nsl-eval's generators differ, so single images may.
def val_accuracy(model, loader, attack) -> float:
    import torch

    correct = total = 0
    for batch in loader:
        x_adv = attack(model, batch.x, batch.y)
        with torch.no_grad():
            correct += (model(x_adv).logits.argmax(-1) == batch.y).sum().item()
        total += len(batch.y)
    return correct / total


def run_recipe(job: tuple[str, str]) -> dict:
    """Trains one recipe and scores it on validation; a worker process with --jobs."""
    name, run_dir = job
    quiet()
    import torch

    from nsl_lab.attacks import PGD as PGDAttack
    from nsl_lab.attacks import AutoAttack
    from nsl_lab.compose import run_overrides
    from nsl_lab.evaluate import load_run, saved_config
    from nsl_lab.saved_runs import locate

    start = time.perf_counter()
    metrics = run_overrides([*COMMON, *RECIPES[name]], run_dir)
    row = {"recipe": name, "overrides": RECIPES[name], "val_acc": metrics["val/acc"],
           "seconds": time.perf_counter() - start}
    found_dir, weights = locate(run_dir)
    model, datamodule = load_run(found_dir, weights, saved_config(found_dir, []), "cpu")
    datamodule.setup("fit")
    torch.manual_seed(0)
    for eps in EPS:
        row[f"val_pgd{eps}"] = val_accuracy(model, datamodule.val_dataloader(),
                                            PGDAttack(eps, "linf", steps=20, clip_min=0.0, clip_max=1.0))
    for eps in EPS:
        apgd = AutoAttack(eps, "linf", clip_min=0.0, clip_max=1.0, attacks=["apgd-ce", "apgd-t"])
        row[f"val_apgd{eps}"] = val_accuracy(model, datamodule.val_dataloader(), apgd)
    print(f"{name}: clean {row['val_acc']:.3f} " + " ".join(
        f"{k}={v:.3f}" for k, v in row.items() if k.startswith("val_") and k != "val_acc"), flush=True)
    return row


def report(rows: list[dict], args: argparse.Namespace) -> None:
    def cell(row: dict, key: str) -> str:
        return f"{100 * row[key]:.1f}" if key in row else "not measured"

    by_name = {r["recipe"]: r for r in rows}
    bound = 100 * by_name["base"]["val_acc"] - 1 if "base" in by_name else float("-inf")
    scored = [r for r in rows if r["recipe"] != "base" and all(f"val_apgd{e}" in r for e in EPS)]
    within = [r for r in scored if 100 * r["val_acc"] >= bound]

    def score(row: dict) -> float:
        return sum(row[f"val_apgd{e}"] for e in EPS) / len(EPS)

    lines = ["| recipe | overrides | clean | PGD-20 0.1 | PGD-20 0.2 | APGD 0.1 | APGD 0.2 | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['recipe']} | `{' '.join(row['overrides'])}` | {cell(row, 'val_acc')} | "
                     + " | ".join(cell(row, f"val_{a}{e}") for a in ("pgd", "apgd") for e in EPS)
                     + f" | {row['seconds']:.0f} |")
    earlier = [r for r in rows if "measured_at" in r]
    best_within = max(within, key=score)["recipe"] if within else "none"
    best_any = max(scored, key=score)["recipe"] if scored else "none"
    markdown = "\n".join([
        "# digits CNN: adversarial training recipes on validation (seed 0)",
        "",
        "180 validation images, pixels in [0, 1], Linf; APGD = APGD-CE then APGD-T (100 steps, 9 targets), "
        "the white-box half of AutoAttack. Every run trains `experiment=digits_cnn` with the overrides.",
        f"Reproduce: `python benchmarks/robust_search.py --recipes {' '.join(r['recipe'] for r in rows)} "
        f"--jobs {args.jobs}`",
        "",
        *lines,
        "",
        f"- Best mean APGD accuracy with clean validation within 1 point of base (>= {bound:.1f}): {best_within}.",
        f"- Best mean APGD accuracy with any clean accuracy: {best_any}.",
        "- train s: training and the test stage (PGD-20 at 0.1), one thread, beside other jobs.",
        *[(f"- Measured at commit {commit} by a scratch copy of this script's computations: " if commit == "60e815a"
           else f"- Measured by this script with src/ and conf/ as at commit {commit}: ") + ", ".join(r["recipe"] for r in earlier if
                                                                           r["measured_at"] == commit) + "."
          for commit in dict.fromkeys(r["measured_at"] for r in earlier)],
        *(["- src/ and conf/ have changed since only by what these recipes do not use (nsl-eval's --split; "
           "`callbacks=ema`, whose `nsl_lab.callbacks.WeightAverage` validates and tests the same weights as "
           "Lightning's `EMAWeightAveraging`, which the `*_ema*` recipes named directly then, when "
           "`learner.restore_best` is false, as in experiment=digits_cnn)."] if earlier else []),
        f"- Machine: {machine()}",
        "",
    ])
    write("robust_search", {"rows": rows, "clean_bound": bound, "best_within_clean_bound": best_within,
                            "best_any": best_any, "machine": machine(), "args": vars(args)}, markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--jobs", type=positive_int, default=1, help="recipes in parallel processes")
    args = parser.parse_args()
    quiet()
    cache = RunCache("robust_search", fingerprint("src", "conf"))
    with tempfile.TemporaryDirectory() as scratch:
        rows = {name: cache.find(recipe=name) for name in args.recipes}
        todo = [(name, str(Path(scratch) / name)) for name, row in rows.items() if row is None]
        for row in run_jobs(run_recipe, todo, args.jobs):
            cache.add(row)
            rows[row["recipe"]] = row
    report([rows[name] for name in args.recipes], args)


if __name__ == "__main__":
    run_main(main)
