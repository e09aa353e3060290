"""Robust accuracy of base versus adversarially regularized CNNs on scikit-learn's digits.

    python benchmarks/robustness.py --jobs 2        # 3 seeds, ~20 minutes on 2 cores
    python benchmarks/robustness.py --seeds 0 --epochs 5 --timing-steps 10   # a smoke run

Each model trains with ``experiment=digits_cnn`` (8x8 digits in [0, 1], wide CNN, 40 epochs) and
is tested under PGD-20 (Linf, random start, step 2.5 eps / 20) at every epsilon. The training
step cost of each regularizer relative to the base step is timed in this process on the same
batches, interleaved. Writes benchmarks/results/robustness.{json,md,png}.
"""
from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from common import RESULTS, machine, mean_std, non_negative_int, positive_int, quiet, run_main, write

EPSILONS = [0.0, 0.05, 0.1, 0.2, 0.3]
PGD_STEPS = 7
CONFIGS = {
    "base (regularizer=none)": ["regularizer=none"],
    "FGSM-regularized (regularizer=adversarial)": [
        "regularizer=adversarial", "regularizer.adversarial.clip_value_min=0.0",
        "regularizer.adversarial.clip_value_max=1.0",
    ],
    f"PGD-{PGD_STEPS}-regularized (regularizer=adversarial_pgd)": ["regularizer=adversarial_pgd"],
}
#: extra settings for all models in this benchmark
COMMON = ["experiment=digits_cnn", "logger=none", "trainer.enable_progress_bar=false"]


def robust_key(eps: float) -> str:
    return f"test/robust_acc/pgd/eps={eps:g}"


def train_one(job: tuple[int, str, list[str], str]) -> dict:
    """Trains and tests one (seed, config); runs in a worker process with ``--jobs``."""
    seed, name, overrides, run_dir = job
    quiet()
    from nsl_lab.compose import run_overrides

    metrics = run_overrides([*COMMON, *overrides, f"seed={seed}"], run_dir)
    row = {"config": name, "seed": seed, "fit_seconds": metrics["fit_seconds"], "val_acc": metrics["val/acc"],
           "test_acc": metrics["test/acc"], "robust_acc": {str(e): metrics[robust_key(e)] for e in EPSILONS}}
    print(f"seed {seed} {name:50s} " + " ".join(f"{e:g}:{row['robust_acc'][str(e)]:.3f}" for e in EPSILONS),
          flush=True)
    return row


def time_steps(config_overrides: dict[str, list[str]], steps: int, rounds: int, threads: int) -> dict[str, float]:
    """Median seconds per training step (forward, regularizers, backward, Adam step) per config,
    on the same digits batches, rounds interleaved across configs so drift hits all alike."""
    from hydra.utils import instantiate

    from nsl_lab.compose import compose_config
    from nsl_lab.run import build_regularizers
    from nsl_lab.modules.learner import StructuredLearner

    torch.set_num_threads(threads)
    learners, optimizers, batches = {}, {}, None
    with tempfile.TemporaryDirectory() as scratch:
        for name, overrides in config_overrides.items():
            cfg = compose_config([*COMMON, *overrides, "seed=0"], scratch)
            torch.manual_seed(0)
            if batches is None:
                data = instantiate(cfg.data)
                data.setup("fit")
                batches = [batch for _, batch in zip(range(steps), data.train_dataloader())]
            backbone = instantiate(cfg.backbone, in_features=data.num_features, num_classes=data.num_classes)
            learner = StructuredLearner(backbone, build_regularizers(cfg.get("regularizer")),
                                        num_classes=data.num_classes)
            learner.log = lambda *args, **kwargs: None  # no trainer attached
            learner.train()
            learners[name], optimizers[name] = learner, torch.optim.Adam(learner.parameters(), lr=1e-3)
    per_round: dict[str, list[float]] = {name: [] for name in learners}
    for round_index in range(rounds + 1):  # round 0 warms up
        for name, learner in learners.items():
            optimizer = optimizers[name]
            start = time.perf_counter()
            for index, batch in enumerate(batches):
                loss = learner.training_step(batch, index)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if round_index:
                per_round[name].append((time.perf_counter() - start) / len(batches))
    return {name: statistics.median(times) for name, times in per_round.items()}


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for name, cells in summary.items():
        means = [100 * cells[str(e)]["mean"] for e in EPSILONS]
        stds = [100 * cells[str(e)]["std"] for e in EPSILONS]
        axes.errorbar(EPSILONS, means, yerr=stds, marker="o", capsize=3, label=name.split(" (")[0])
    axes.set_xlabel("PGD-20 epsilon (Linf, pixels in [0, 1])")
    axes.set_ylabel("test accuracy (%)")
    axes.set_title("digits, CNN: robust accuracy against epsilon")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=non_negative_int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=positive_int, default=None, help="override trainer.max_epochs (default: preset's)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads per run")
    parser.add_argument("--timing-steps", type=positive_int, default=20, help="batches per timing round")
    parser.add_argument("--timing-rounds", type=positive_int, default=5, help="timing rounds (median)")
    parser.add_argument("--jobs", type=positive_int, default=1, help="runs in parallel processes (timing runs alone after)")
    args = parser.parse_args()
    quiet()

    extra = [f"num_threads={args.threads}"] + ([f"trainer.max_epochs={args.epochs}"] if args.epochs is not None else [])
    with tempfile.TemporaryDirectory() as scratch:
        # Slowest (PGD) runs first so parallel workers finish together.
        jobs = [(seed, name, [*overrides, *extra], str(Path(scratch) / f"{seed}-{i}"))
                for i, (name, overrides) in reversed(list(enumerate(CONFIGS.items()))) for seed in args.seeds]
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                rows = list(pool.map(train_one, jobs))
        else:
            rows = [train_one(job) for job in jobs]
    step_seconds = time_steps(CONFIGS, args.timing_steps, args.timing_rounds, args.threads)
    base, fgsm, pgd = CONFIGS
    ratios = {"fgsm_over_base": step_seconds[fgsm] / step_seconds[base],
              "pgd_over_base": step_seconds[pgd] / step_seconds[base]}

    summary = {
        name: {str(e): dict(zip(("mean", "std"), mean_std([r["robust_acc"][str(e)] for r in rows if r["config"] == name])))
               for e in EPSILONS}
        for name in CONFIGS
    }
    lines = ["| model | " + " | ".join(f"eps {e:g}" for e in EPSILONS) + " |",
             "|---|" + "---|" * len(EPSILONS)]
    for name in CONFIGS:
        lines.append(f"| {name} | " + " | ".join(
            f"{100 * summary[name][str(e)]['mean']:.1f} ± {100 * summary[name][str(e)]['std']:.1f}" for e in EPSILONS) + " |")

    def at(name: str, eps: float) -> float:
        return 100 * summary[name][str(float(eps))]["mean"]

    checks = [
        ("FGSM-regularized clean accuracy within 1.5 points of base", at(fgsm, 0) >= at(base, 0) - 1.5,
         f"{at(fgsm, 0):.1f} vs {at(base, 0):.1f}"),
        (f"PGD-{PGD_STEPS}-regularized clean accuracy within 1.5 points of base", at(pgd, 0) >= at(base, 0) - 1.5,
         f"{at(pgd, 0):.1f} vs {at(base, 0):.1f}"),
        ("PGD-regularized >= 85% at eps 0.1", at(pgd, 0.1) >= 85, f"{at(pgd, 0.1):.1f}"),
        ("PGD-regularized >= 60% at eps 0.2", at(pgd, 0.2) >= 60, f"{at(pgd, 0.2):.1f}"),
        ("base < 60% at eps 0.1", at(base, 0.1) < 60, f"{at(base, 0.1):.1f}"),
        ("base < 5% at eps 0.2", at(base, 0.2) < 5, f"{at(base, 0.2):.1f}"),
        ("FGSM step <= 2.2x base step", ratios["fgsm_over_base"] <= 2.2, f"{ratios['fgsm_over_base']:.2f}x"),
        (f"PGD-{PGD_STEPS} step <= 1.15 x {PGD_STEPS + 1} = {1.15 * (PGD_STEPS + 1):.2f}x base step",
         ratios["pgd_over_base"] <= 1.15 * (PGD_STEPS + 1), f"{ratios['pgd_over_base']:.2f}x"),
    ]
    markdown = "\n".join([
        "# digits (8x8, scikit-learn), CNN: test accuracy (%) under PGD-20 Linf",
        "",
        f"Mean ± std over seeds {args.seeds}; 360 test images; pixels in [0, 1]; eps 0 = clean accuracy. "
        "Reproduce: `python benchmarks/robustness.py --jobs 2`",
        "",
        *lines,
        "",
        "![robust accuracy against epsilon](robustness.png)",
        "",
        "| target | met | measured |",
        "|---|---|---|",
        *[f"| {text} | {'yes' if ok else 'NO'} | {value} |" for text, ok, value in checks],
        "",
        f"- Training step time (median of {args.timing_rounds} interleaved rounds of {args.timing_steps} batches of 64, "
        f"same batches, {args.threads} thread): base {1000 * step_seconds[base]:.1f} ms, FGSM "
        f"{1000 * step_seconds[fgsm]:.1f} ms, PGD-{PGD_STEPS} {1000 * step_seconds[pgd]:.1f} ms.",
        f"- Machine: {machine()}",
        "",
    ])
    RESULTS.mkdir(exist_ok=True)
    plot(summary, RESULTS / "robustness.png")
    write("robustness", {"summary": summary, "step_seconds": step_seconds, "ratios": ratios,
                         "checks": [{"target": t, "met": ok, "measured": v} for t, ok, v in checks],
                         "runs": rows, "machine": machine(), "args": vars(args)}, markdown)


if __name__ == "__main__":
    run_main(main)
