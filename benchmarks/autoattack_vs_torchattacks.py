"""nsl_lab's AutoAttack against torchattacks' on the same model and the same test images.

    pip install torchattacks==3.5.1 --no-deps    # the reference (imports without torchvision)
    python benchmarks/autoattack_vs_torchattacks.py                        # trains the model once
    python benchmarks/autoattack_vs_torchattacks.py --run outputs/<run dir> --eps 0.1 0.2

The model: ``experiment=digits_cnn regularizer=adversarial_pgd seed=0`` (the PGD-7-trained wide
CNN of benchmarks/robust_eval.py), trained once into ``--run`` unless a ``model.pt`` is there.
Both ensembles run their standard version on the 360 test images, one thread, pixels in [0, 1]:
nsl_lab = APGD-CE, APGD-T (9 targets), Square (5000 queries); torchattacks = APGD-CE, APGD-T,
FAB-T and Square (5000 queries), as Croce & Hein's reference. Target: nsl_lab's robust accuracy
at most 0.5 points above torchattacks' (as strong, within noise), Linf and L2.
Writes benchmarks/results/autoattack_vs_torchattacks.{json,md}.
"""
from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch
from torch import nn

from common import machine, non_negative_float, positive_int, quiet, run_main, write

TRAIN = ["experiment=digits_cnn", "regularizer=adversarial_pgd", "seed=0", "logger=none",
         "trainer.enable_progress_bar=false", "num_threads=1", "eval.eps=[0.1]"]
DEFAULT_RUN = Path.home() / ".cache" / "nsl_lab" / "benchmarks" / "digits_pgd7_seed0"


class Logits(nn.Module):
    """The backbone as torchattacks wants it: inputs in, a logits tensor out."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from nsl_lab.modules.backbone import as_output

        return as_output(self.backbone(x)).logits


def trained_run(run: Path) -> Path:
    if not (run / "model.pt").is_file():
        from nsl_lab.compose import run_overrides

        print(f"training {' '.join(TRAIN)} into {run}", flush=True)
        run_overrides(TRAIN, str(run))
    return run


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="run dir (trained here if it has no model.pt)")
    parser.add_argument("--eps", nargs="*", type=non_negative_float, default=[0.2], help="Linf radii")
    parser.add_argument("--l2-eps", nargs="*", type=non_negative_float, default=[1.0], help="L2 radii")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="attack only the first N test images (smoke runs)")
    args = parser.parse_args()
    if importlib.util.find_spec("torchattacks") is None:
        parser.exit(2, "nsl_lab: error: this benchmark needs torchattacks (a benchmark-only extra): "
                       "pip install torchattacks==3.5.1 --no-deps\n")
    quiet()
    torch.set_num_threads(1)
    import torchattacks

    from nsl_lab.attacks import AutoAttack
    from nsl_lab.evaluate import load_run, saved_config
    from nsl_lab.saved_runs import locate

    run_dir, weights = locate(trained_run(args.run))
    backbone, datamodule = load_run(run_dir, weights, saved_config(run_dir, []), device="cpu")
    batches = list(datamodule.test_dataloader())
    x, y = torch.cat([b.x for b in batches]), torch.cat([b.y for b in batches])
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    model = Logits(backbone).eval()
    clean = accuracy(model, x, y)
    rows = []
    for norm, radii in (("linf", args.eps), ("l2", args.l2_eps)):
        for eps in radii:
            start = time.perf_counter()
            ours = AutoAttack(eps, norm, "standard", clip_min=0.0, clip_max=1.0, seed=0).run(backbone, x, y)
            ours_seconds = time.perf_counter() - start
            reference = torchattacks.AutoAttack(model, norm="Linf" if norm == "linf" else "L2", eps=eps,
                                                version="standard", n_classes=10, seed=0)
            start = time.perf_counter()
            x_ref = reference(x, y)
            ref_seconds = time.perf_counter() - start
            # Both must stay inside the ball and the box, or their accuracies do not compare.
            delta = (x_ref - x).flatten(1)
            size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
            row = {"norm": norm, "eps": eps, "clean": clean, "nsl_lab": ours.robust, "nsl_lab_parts": ours.per_attack,
                   "torchattacks": accuracy(model, x_ref, y), "nsl_lab_seconds": ours_seconds,
                   "torchattacks_seconds": ref_seconds, "torchattacks_max_radius": size.max().item(),
                   "torchattacks_in_box": bool(((x_ref >= 0) & (x_ref <= 1)).all())}
            row["met"] = 100 * row["nsl_lab"] <= 100 * row["torchattacks"] + 0.5
            rows.append(row)
            print(f"{norm} {eps:g}: nsl_lab {100 * row['nsl_lab']:.1f} ({ours_seconds:.0f} s), "
                  f"torchattacks {100 * row['torchattacks']:.1f} ({ref_seconds:.0f} s)", flush=True)
    command = "python benchmarks/autoattack_vs_torchattacks.py" + (
        f" --eps {' '.join(f'{e:g}' for e in args.eps)} --l2-eps {' '.join(f'{e:g}' for e in args.l2_eps)}")
    if args.limit:
        command += f" --limit {args.limit}"
    lines = ["| norm | eps | clean | nsl_lab AA | torchattacks AA | nsl_lab parts (cumulative) | nsl_lab s | "
             "torchattacks s | nsl_lab <= torchattacks + 0.5 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        parts = ", ".join(f"{name} {100 * v:.1f}" for name, v in r["nsl_lab_parts"].items())
        lines.append(f"| {r['norm']} | {r['eps']:g} | {100 * r['clean']:.1f} | {100 * r['nsl_lab']:.1f} | "
                     f"{100 * r['torchattacks']:.1f} | {parts} | {r['nsl_lab_seconds']:.0f} | "
                     f"{r['torchattacks_seconds']:.0f} | {'yes' if r['met'] else 'NO'} |")
    markdown = "\n".join([
        "# AutoAttack: nsl_lab against torchattacks 3.5.1 (same model, same images)",
        "",
        f"PGD-7-trained digits CNN (`{' '.join(TRAIN[:3])}`), {len(y)} test images, one thread; both standard "
        "versions (torchattacks adds FAB-T). Robust accuracy in %; lower = stronger attack.",
        f"Reproduce: `{command}`",
        "",
        *lines,
        "",
        f"- Machine: {machine()}",
        "",
    ])
    write("autoattack_vs_torchattacks", {"rows": rows, "run": str(run_dir), "images": len(y), "machine": machine()},
          markdown)


if __name__ == "__main__":
    run_main(main)
