"""PGD-20 against AutoAttack on digits CNNs: base, FGSM-, PGD-7- and TRADES-trained, and the
validation searches' picks (PGD-7-long; PGD-10-EMA, ``experiment=digits_robust``).

    python benchmarks/robust_eval.py --jobs 2                              # 5 seeds, eps 0.05-0.3, L2 eps 1
    python benchmarks/robust_eval.py --configs base PGD-7 PGD-7-long --eps 0.1 0.2 --l2-eps --jobs 2 \
        --name robust_eval_seeds                                           # a partial study, its own files
    python benchmarks/robust_eval.py --configs base PGD-10-EMA --eps 0.1 0.2 --l2-eps 1 --jobs 2 --name robust_eval_ema

Each model trains with ``experiment=digits_cnn`` (8x8 digits in [0, 1], wide CNN, 40 epochs) and
its config's overrides; its
test stage evaluates PGD-20 and AutoAttack (``eval.attacks=[pgd,autoattack]``, standard version:
APGD-CE, APGD-T, Square 5000 queries) in Linf; then ``nsl_lab.evaluate`` (``nsl-eval``) runs the
same pair in L2 on the saved model. Finished runs are cached in
benchmarks/results/robust_eval.runs.jsonl (keyed by a hash of src/ and conf/), so an interrupted
benchmark resumes; a study spread over sessions reuses runs cached under an earlier
fingerprint with ``--carry <fingerprint>``, and its report names the commit they were measured
at. Writes benchmarks/results/robust_eval.{json,md,png}.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import (RESULTS, RunCache, fingerprint, machine, mean_std, non_negative_float, non_negative_int,
                    positive_int, quiet, run_jobs, run_main, write)

DIGITS = ["experiment=digits_cnn"]
CONFIGS = {
    "base": [*DIGITS, "regularizer=none"],
    "FGSM": [*DIGITS, "regularizer=adversarial", "regularizer.adversarial.clip_value_min=0.0",
             "regularizer.adversarial.clip_value_max=1.0"],
    "PGD-7": [*DIGITS, "regularizer=adversarial_pgd"],
    "TRADES": [*DIGITS, "regularizer=trades"],
    # The first validation search's pick (docs/results.md): PGD-7 weighted 3x, trained 100 epochs.
    "PGD-7-long": [*DIGITS, "regularizer=adversarial_pgd", "regularizer.adversarial.multiplier=3.0",
                   "trainer.max_epochs=100"],
    # The second's, with weight averaging: PGD-10 in a ball of 0.25, 100 epochs, EMA weights.
    "PGD-10-EMA": ["experiment=digits_robust"],
}
#: the issue's four models; the searches' picks run when named (--configs)
STUDY = ["base", "FGSM", "PGD-7", "TRADES"]
COMMON = ["logger=none", "trainer.enable_progress_bar=false", "num_threads=1",
          "eval.attacks=[pgd,autoattack]"]
ATTACKS = ("pgd", "autoattack")


def key(attack: str, eps: float) -> str:
    return f"test/robust_acc/{attack}/eps={eps:g}"


def run_one(job: tuple[str, int, list[float], list[float], list[str], str]) -> dict:
    """Trains, tests (Linf) and evaluates in L2 one (config, seed); a worker process with --jobs."""
    name, seed, linf, l2, extra, run_dir = job
    quiet()
    from nsl_lab.compose import run_overrides
    from nsl_lab.evaluate import evaluate

    start = time.perf_counter()
    eps_list = "[" + ",".join(f"{e:g}" for e in linf) + "]"
    metrics = run_overrides([*COMMON, *CONFIGS[name], f"seed={seed}", f"eval.eps={eps_list}", *extra], run_dir)
    linf_seconds = time.perf_counter() - start
    # Model choice on validation: the white-box half of AutoAttack (APGD-CE and APGD-T, a row
    # counts when both leave it correct) at the same radii on the 180 validation images.
    val = evaluate(run_dir, ["eval.attacks=[apgd-ce,apgd-t]", f"eval.eps={eps_list}"], device="cpu",
                   progress=False, split="val")
    row = {"config": name, "seed": seed, "test_acc": metrics["test/acc"], "val_acc": metrics["val/acc"],
           "val_robust": {f"{e:g}": val[f"val/robust_acc/worst/eps={e:g}"] for e in linf},
           "fit_seconds": metrics["fit_seconds"],
           "linf": {a: {f"{e:g}": metrics[key(a, e)] for e in linf} for a in ATTACKS},
           "sanity": {k: v for k, v in metrics.items() if k.startswith("test/sanity/")}}
    if l2:
        start = time.perf_counter()
        l2_list = "[" + ",".join(f"{e:g}" for e in l2) + "]"
        l2_metrics = evaluate(run_dir, ["eval.norm=l2", f"eval.eps={l2_list}", "eval.attacks=[pgd,autoattack]",
                                        *[o for o in extra if o.startswith("eval.")]],
                              out=Path(run_dir) / "eval_l2.json", device="cpu", progress=False)
        row["l2"] = {a: {f"{e:g}": l2_metrics[key(a, e)] for e in l2} for a in ATTACKS}
        row["l2_seconds"] = time.perf_counter() - start
    row["run_seconds"] = linf_seconds
    print(f"{name:7s} seed {seed}: clean {row['test_acc']:.3f} " + " ".join(
        f"{a}@{e}={v:.3f}" for a, cells in row["linf"].items() for e, v in cells.items()), flush=True)
    return row


def plot(rows: list[dict], names: list[str], linf: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4))
    for index, name in enumerate(names):
        color = f"C{index}"
        for attack, style in zip(ATTACKS, ("-", "--")):
            cells = [mean_std([100 * r["linf"][attack][f"{e:g}"] for r in rows if r["config"] == name]) for e in linf]
            axes.errorbar(linf, [c[0] for c in cells], yerr=[c[1] for c in cells], linestyle=style, color=color,
                          marker="o", capsize=3, label=f"{name} ({'PGD-20' if attack == 'pgd' else 'AutoAttack'})")
    axes.set_xlabel("epsilon (Linf, pixels in [0, 1])")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("digits CNN: PGD-20 (solid) against AutoAttack (dashed)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=non_negative_int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--eps", nargs="+", type=non_negative_float, default=[0.05, 0.1, 0.2, 0.3], help="Linf radii")
    parser.add_argument("--l2-eps", nargs="*", type=non_negative_float, default=[1.0], help="L2 radii (none: skip L2)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=STUDY)
    parser.add_argument("--jobs", type=positive_int, default=1, help="runs in parallel processes")
    parser.add_argument("--name", default="robust_eval",
                        help="results (and run cache) file name, so a partial study keeps the full one")
    parser.add_argument("--extra", nargs="*", default=[],
                        help="more overrides for every run, e.g. a smoke test: trainer.max_epochs=1 "
                             "eval.settings.autoattack.version=fast")
    parser.add_argument("--carry", nargs="*", default=[],
                        help="also reuse the runs cached under these earlier src/conf fingerprints (the report "
                             "names the commit each carried run was measured at)")
    args = parser.parse_args()
    quiet()
    cache = RunCache(args.name, fingerprint("src", "conf"), tuple(args.carry))
    settings = {"linf": [f"{e:g}" for e in args.eps], "l2": [f"{e:g}" for e in args.l2_eps], "extra": args.extra}
    stamp = {"settings": settings, "commit": machine()["commit"]}  # what a cached row was run under
    with tempfile.TemporaryDirectory() as scratch:
        todo, rows = [], []
        # Seed by seed (an interrupted study leaves whole seeds), the slowest (adversarially
        # trained) models first, so parallel workers finish together.
        for seed in args.seeds:
            for name in reversed(args.configs):
                row = cache.find(config=name, seed=seed, settings=settings)
                if row is not None:
                    rows.append(row)
                else:
                    todo.append((name, seed, args.eps, args.l2_eps, args.extra, str(Path(scratch) / f"{name}-{seed}")))
        for row in run_jobs(run_one, todo, args.jobs):
            cache.add({**row, **stamp})
            rows.append(row)

    def cell(values: list[float]) -> str:
        mean, std = mean_std([100 * v for v in values])
        return f"{mean:.1f} ± {std:.1f}"

    def values(name: str, norm: str, attack: str, eps: str) -> list[float]:
        return [r[norm][attack][eps] for r in rows if r["config"] == name and norm in r]

    header = ["model", "clean"] + [f"{a} Linf {e}" for e in settings["linf"] for a in ("PGD-20", "AA")]
    header += [f"{a} L2 {e}" for e in settings["l2"] for a in ("PGD-20", "AA")]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    gaps = ["| model | " + " | ".join([f"Linf {e}" for e in settings["linf"]] + [f"L2 {e}" for e in settings["l2"]])
            + " |", "|---" * (1 + len(settings["linf"]) + len(settings["l2"])) + "|"]
    for name in args.configs:
        cells = [cell([r["test_acc"] for r in rows if r["config"] == name])]
        gap_cells = []
        for norm in ("linf", "l2"):
            for e in settings[norm]:
                pgd, aa = values(name, norm, "pgd", e), values(name, norm, "autoattack", e)
                cells += [cell(pgd), cell(aa)]
                gap_cells.append(cell([p - a for p, a in zip(pgd, aa)]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        gaps.append(f"| {name} | " + " | ".join(gap_cells) + " |")

    def mean(name: str, norm: str, attack: str, eps: str) -> float:
        found = values(name, norm, attack, eps)
        return 100 * sum(found) / len(found) if found else float("nan")

    clean = {name: 100 * mean_std([r["test_acc"] for r in rows if r["config"] == name])[0] for name in args.configs}
    adversarial = [n for n in args.configs if n != "base"]
    # The best adversarially regularized model on validation (the test set chooses nothing): the
    # best mean APGD accuracy over the Linf radii among models whose clean validation accuracy is
    # within a point of base's, or among all of them when none is.
    def val_clean(name: str) -> float:
        return 100 * mean_std([r["val_acc"] for r in rows if r["config"] == name])[0]

    def val_robust(name: str) -> float:
        return 100 * mean_std([mean_std(list(r["val_robust"].values()))[0] for r in rows if r["config"] == name])[0]

    candidates = [n for n in adversarial if "base" not in clean or val_clean(n) >= val_clean("base") - 1]
    best = max(candidates or adversarial or args.configs, key=val_robust)
    checks = []
    # The targets for every adversarial model, the validation choice first and named as such.
    for name in sorted(adversarial, key=lambda n: n != best):
        label = f"{name} (chosen on validation)" if name == best else name
        for eps, bound in (("0.1", 90), ("0.2", 72)):
            if eps in settings["linf"]:
                value = mean(name, "linf", "autoattack", eps)
                checks.append((f"{label}: AutoAttack >= {bound}% at Linf {eps}", value >= bound, f"{value:.1f}"))
        if "base" in clean:
            checks.append((f"{label}: clean within 1 point of base", clean[name] >= clean["base"] - 1,
                           f"{clean[name]:.1f} vs {clean['base']:.1f}"))
    for name in args.configs:
        for norm in ("linf", "l2"):
            for e in settings[norm]:
                p, a = mean(name, norm, "pgd", e), mean(name, norm, "autoattack", e)
                checks.append((f"{name} {norm} {e}: AutoAttack never weaker than PGD-20", a <= p, f"{a:.1f} <= {p:.1f}"))
    seconds = {name: mean_std([r["run_seconds"] for r in rows if r["config"] == name])[0] for name in args.configs}
    markdown = "\n".join([
        "# digits CNN: test accuracy (%) under PGD-20 and AutoAttack",
        "",
        f"Mean ± std over seeds {args.seeds}; 360 test images, pixels in [0, 1]; AutoAttack = nsl_lab's standard "
        "version (APGD-CE 100 steps, APGD-T 9 targets x 100 steps, Square 5000 queries; no FAB-T).",
        f"Reproduce: `python benchmarks/robust_eval.py --seeds {' '.join(map(str, args.seeds))} --eps "
        f"{' '.join(settings['linf'])} --l2-eps{''.join(' ' + e for e in settings['l2'])} --jobs {args.jobs}"
        + (f" --configs {' '.join(args.configs)}" if args.configs != STUDY else "")
        + (f" --name {args.name}" if args.name != "robust_eval" else "")
        + (f" --extra {' '.join(args.extra)}" if args.extra else "") + "`",
        "",
        *lines,
        "",
        "PGD-20 minus AutoAttack (points; PGD overstates robustness by this much):",
        "",
        *gaps,
        "",
        f"Validation (180 images; it chooses the best model, {best}): clean and APGD-CE + APGD-T accuracy.",
        "",
        "| model | clean | " + " | ".join(f"APGD Linf {e}" for e in settings["linf"]) + " |",
        "|---" * (2 + len(settings["linf"])) + "|",
        *[f"| {n} | {cell([r['val_acc'] for r in rows if r['config'] == n])} | "
          + " | ".join(cell([r["val_robust"][e] for r in rows if r["config"] == n]) for e in settings["linf"]) + " |"
          for n in args.configs],
        "",
        f"![PGD-20 against AutoAttack]({args.name}.png)",
        "",
        "| target | met | measured |",
        "|---|---|---|",
        *[f"| {text} | {'yes' if ok else 'NO'} | {value} |" for text, ok, value in checks],
        "",
        *[f"- {count} of these runs were measured at commit {commit} (src/ and conf/ fingerprint {key}: "
          "reused with `--carry`)." for (commit, key), count in
          Counter((r.get("commit", "?"), r["fingerprint"]) for r in rows if r.get("fingerprint") in args.carry).items()],
        "- Seconds per run (training + Linf evaluation, 1 thread each, "
        + ", ".join(f"{n} {s:.0f}" for n, s in seconds.items()) + ").",
        f"- Machine: {machine()}",
        "",
    ])
    RESULTS.mkdir(exist_ok=True)
    plot(rows, args.configs, args.eps, RESULTS / f"{args.name}.png")
    write(args.name, {"rows": rows, "checks": [{"target": t, "met": ok, "measured": v} for t, ok, v in checks],
                          "best": best, "machine": machine(), "args": vars(args)}, markdown)


if __name__ == "__main__":
    run_main(main)
