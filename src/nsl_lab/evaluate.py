"""Robust evaluation of a saved model: ``nsl-eval`` and ``scripts/eval.py``.

    nsl-eval outputs/2026-12-03/10-00-00 'eval.attacks=[pgd,autoattack]' 'eval.eps=[0.05,0.1,0.2]'
    nsl-eval outputs/.../model.pt eval.norm=l2 'eval.eps=[0.5,1.0]' --out l2.json
    nsl-eval outputs/... 'eval.attacks=[apgd-ce,apgd-t]' 'eval.eps=[0.2]' --split val   # choose on validation

The run directory's ``config_resolved.yaml`` rebuilds the model and its test split; the weights
come from ``model.pt`` (or a Lightning checkpoint), read with ``weights_only=True``. Overrides
(``key=value``, YAML values) change the saved config, most often its ``eval`` block
(``conf/train.yaml``). Writes ``eval.json`` (flat keys ``test/acc``,
``test/robust_acc/<attack>/eps=<e>``, ``test/sanity/...`` and the list of ``warnings``). With
``--split val`` it attacks the validation split instead, for choosing a model or an epsilon
without the test set: keys ``val/...``, default output ``eval_val.json``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Literal, Sequence

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from nsl_lab.attacks.evaluation import RobustEvaluation
from nsl_lab.batch import Batch
from nsl_lab.context import run_backbone
from nsl_lab.errors import ConfigError, check_choice, check_overrides_list, config_scope, one_line_errors
from nsl_lab.files import RESOLVED_CONFIG_FILE, unwritable_reason, write_json
from nsl_lab.run import learner_class
from nsl_lab.saved_runs import load_backbone, load_weights, locate

log = logging.getLogger(__name__)

EVAL_FILE = "eval.json"
Device = Literal["auto", "cpu", "cuda"]
Split = Literal["test", "val"]


#: config nodes whose keys are free (an attack's arguments), so an override may add one
FREE_FORM_SETTINGS = ("eval.settings",)


def check_override_key(cfg: DictConfig, key: str) -> None:
    """A misspelt key (``evl.eps``) stops in one line, as ``nsl-train`` stops it, instead of
    being added to the config and ignored."""
    parts, node = key.split("."), cfg
    if parts[0] == "eval" and "eval" not in cfg:
        return  # a config saved before the eval block: every eval setting is new to it
    for depth, part in enumerate(parts):
        if ".".join(parts[:depth]) in FREE_FORM_SETTINGS:
            return
        if not isinstance(node, DictConfig) or part not in node:
            raise ConfigError(f"{key} is not a setting of the saved config; allowed: its keys, e.g. eval.eps, "
                              "eval.attacks, eval.norm, eval.settings.<attack>.<argument>", key)
        node = node[part]


def saved_config(run_dir: Path, overrides: Sequence[str]) -> DictConfig:
    """The run's resolved config with ``overrides`` (``key=value``) applied."""
    cfg = OmegaConf.load(run_dir / RESOLVED_CONFIG_FILE)
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} is not key=value, e.g. 'eval.eps=[0.1,0.2]'", "overrides")
        check_override_key(cfg, override.split("=", 1)[0].strip())
    try:
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except Exception as error:  # noqa: BLE001 - OmegaConf's grammar errors, in one line
        raise ConfigError(f"overrides {list(overrides)!r} cannot be applied: {error}".splitlines()[0],
                          "overrides") from None


def resolve_device(device: Device) -> str:
    """``cpu`` or ``cuda`` (``auto``: CUDA when available)."""
    check_choice("device", device, Device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but torch sees no CUDA GPU here; allowed on this machine: cpu, auto", "device")
    return device


def load_run(run_dir: Path, weights: Path, cfg: DictConfig,
             device: Device = "auto") -> tuple[nn.Module, pl.LightningDataModule]:
    """The saved run's backbone (weights loaded, in eval mode, on ``device``) and its
    datamodule, set up for the test stage, both rebuilt from ``cfg`` (see :func:`locate` and
    :func:`saved_config`): the pieces ``evaluate`` uses, for scripts that attack a saved model
    with other tools (e.g. ``benchmarks/autoattack_vs_torchattacks.py``)."""
    device = resolve_device(device)
    state = load_weights(weights)
    with config_scope("data."):
        datamodule = instantiate(cfg.data)
        datamodule.setup("test")
    with config_scope("backbone."):
        backbone = instantiate(cfg.backbone, in_features=datamodule.num_features, num_classes=datamodule.num_classes)
    load_backbone(backbone, state, weights)
    return backbone.to(device).eval(), datamodule


def evaluate(run: str | Path, overrides: Sequence[str] = (), out: str | Path | None = None,
             device: Device = "auto", progress: bool | None = None, split: Split = "test") -> dict[str, float]:
    """Clean and robust accuracy of a saved run on its test (or validation) split; writes ``eval.json``.

    Args:
        run: a run directory, its ``model.pt``, or a checkpoint inside it.
        overrides: ``key=value`` changes to the saved config (e.g. ``eval.attacks=[autoattack]``).
        out: where to write the JSON (default ``<run dir>/eval.json``).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        progress: a progress bar over the batches (default: on a terminal).
        split: ``test``, or ``val`` to choose on validation: keys ``val/...``, default output
            ``<run dir>/eval_val.json``.

    Returns:
        the metrics written (warnings are logged and written under ``warnings``).
    """
    check_choice("split", split, Split)
    overrides = check_overrides_list(overrides, "eval.eps=[0.1]")
    device = resolve_device(device)
    run_dir, weights = locate(run)
    target = Path(out) if out else run_dir / (EVAL_FILE if split == "test" else f"eval_{split}.json")
    if (reason := unwritable_reason(target)) is not None:  # before the attacks, not after
        raise ConfigError(f"out={str(target)!r} cannot be written: {reason}", "out")
    cfg = saved_config(run_dir, overrides)
    if not learner_class(cfg).validates:
        raise ConfigError(f"run={str(run)!r} is a label-free pretraining: its classifier was never trained; "
                          "fine-tune it (nsl-train init_from=<this run>) and evaluate that run", "run")
    settings = OmegaConf.to_container(cfg.get("eval") or {}, resolve=True)
    with config_scope("eval."):  # bad settings fail before any data is loaded
        evaluation = RobustEvaluation.from_config(**settings)
    if evaluation is None:
        raise ConfigError("eval.eps=[] gives nothing to evaluate; e.g. 'eval.eps=[0.05,0.1]'", "eval.eps")
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    torch.manual_seed(int(cfg.get("seed", 0)))
    backbone, datamodule = load_run(run_dir, weights, cfg, device)
    evaluation.to(device)
    if split == "val":
        datamodule.setup("fit")
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    show = sys.stderr.isatty() if progress is None else progress
    for batch in tqdm(loader, desc="nsl-eval", disable=not show, unit="batch"):
        batch = batch.to(device) if hasattr(batch, "to") else batch

        def predict(x_adv: torch.Tensor, batch: Batch = batch) -> torch.Tensor:
            with torch.no_grad():
                return run_backbone(backbone, Batch(x_adv, batch.y, batch.index, batch.lengths, batch.graph)).logits

        evaluation.update(backbone, batch.x, batch.y, predict)
    metrics = {"test/acc": evaluation.clean_accuracy(), **evaluation.compute()}
    # The evaluation names its figures test/...; on validation they are val/...
    result = {f"{split}/{k.removeprefix('test/')}": v for k, v in metrics.items()}
    write_json(target, {**result, "warnings": list(evaluation.warnings), "weights": str(weights),
                        "overrides": list(overrides)})
    log.info("wrote %s", target)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """The console command ``nsl-eval``."""
    parser = argparse.ArgumentParser(prog="nsl-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory, its model.pt, or a checkpoint inside it")
    parser.add_argument("overrides", nargs="*", help="key=value changes to the saved config, e.g. 'eval.eps=[0.1]'")
    parser.add_argument("--out", help="output JSON (default <run dir>/eval.json)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a progress bar over the batches (default: on a terminal)")
    parser.add_argument("--split", default="test",
                        help="test, or val to choose a model or an epsilon on validation (keys val/...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with one_line_errors():
        metrics = evaluate(args.run, args.overrides, args.out, args.device, args.progress, args.split)
    prefix = f"{args.split}/"
    print("nsl_lab: " + " ".join(f"{k.removeprefix(prefix)}={v:.4f}" for k, v in metrics.items()
                                 if not k.removeprefix(prefix).startswith(("sanity/", "robust_acc/autoattack."))),
          flush=True)


if __name__ == "__main__":
    main()
