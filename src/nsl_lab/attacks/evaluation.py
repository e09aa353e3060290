r"""Robust evaluation: clean and adversarial accuracy of a model for every attack x epsilon,
with the sanity checks that catch gradient masking, counted so that DDP ranks add up.

The same :class:`RobustEvaluation` runs in the test stage of training (:class:`RobustAccuracy`,
a Lightning callback, from the ``eval`` config block) and in ``scripts/eval.py`` on a saved
model. Its metric keys are ``test/robust_acc/<attack>/eps=<e>``; with more than one attack also
``test/robust_acc/worst/eps=<e>`` (a row counts only when every attack leaves it correct), and
for AutoAttack its cumulative accuracy after each of its parts
(``test/robust_acc/autoattack.<part>/eps=<e>``).
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Callable, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import Metric

from nsl_lab.attacks.ensemble import AutoAttack, RobustAttackName, make_robust_attack
from nsl_lab.attacks.steepest_ascent import Norm, check_clip, eval_mode
from nsl_lab.batch import Batch
from nsl_lab.errors import ConfigError, check_choice, check_flag, check_integer, check_range, config_scope
from nsl_lab.modules.backbone import as_output

log = logging.getLogger(__name__)

#: ``test/robust_acc/<attack>/eps=<e>``
ROBUST_KEY = re.compile(r"^test/robust_acc/(?P<attack>[^/]+)/eps=(?P<eps>[-+0-9.eE]+)$")
#: attacks that draw random numbers and take a ``generator``
_SEEDED = ("pgd", "apgd-ce", "apgd-t", "square")
#: above this fraction of rows with an all-zero input gradient, the gradients are suspect
ZERO_GRAD_WARNING = 0.05
#: a second forward pass differing by more than this (relative to the logits' scale) is non-deterministic
FORWARD_TOLERANCE = 1e-4

Predict = Callable[[torch.Tensor], torch.Tensor]


def robust_key(attack: str, eps: float) -> str:
    return f"test/robust_acc/{attack}/eps={eps:g}"


class CorrectCounts(Metric):
    """Per key, correct predictions and labeled rows: sums that torchmetrics adds up across
    DDP ranks on :meth:`compute`."""

    full_state_update = False

    def __init__(self, keys: Sequence[str]) -> None:
        super().__init__()
        self.keys = list(keys)
        self.add_state("correct", default=torch.zeros(len(self.keys), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: Mapping[str, torch.Tensor], total: int) -> None:
        self.correct += torch.stack([correct[key].sum().to(self.correct) for key in self.keys])
        self.total += int(total)

    def compute(self) -> dict[str, float]:
        total = int(self.total)
        return {key: (int(c) / total if total else math.nan) for key, c in zip(self.keys, self.correct.tolist())}


def sanity_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, float], list[str]]:
    """The checks that catch a robust accuracy which gradient masking or a broken model inflates,
    on one batch, in eval mode (the model's mode is restored).

    Returns ``test/sanity/...`` values and a warning line per failed check:

    - ``zero_grad_frac``: fraction of labeled rows whose cross-entropy input gradient is exactly
      zero (saturated softmax, non-differentiable layers): gradient attacks see nothing there;
    - ``probability_like``: 1 when every output row is in [0, 1] and sums to 1 (the model ends
      in a softmax: attacks and the cross-entropy need logits);
    - ``forward_max_diff``: largest difference between two forward passes on the same inputs,
      relative to the logits' scale (dropout left on, randomized defences).
    """
    labeled = y >= 0
    with eval_mode(model):
        point = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = as_output(model(point)).logits
            loss = nn.functional.cross_entropy(logits[labeled], y[labeled], reduction="sum")
            (grad,) = torch.autograd.grad(loss, point, allow_unused=True) if bool(labeled.any()) else (None,)
        with torch.no_grad():
            again = as_output(model(x)).logits
    logits = logits.detach()
    rows = grad[labeled].flatten(1) if grad is not None else torch.zeros(0, 1)
    zero = float((rows.abs().amax(dim=1) == 0).float().mean()) if rows.shape[0] else 0.0
    if grad is None and bool(labeled.any()):
        zero = 1.0
    probability_like = bool(((logits >= 0) & (logits <= 1)).all()) and bool(
        torch.allclose(logits.sum(dim=1), torch.ones(logits.shape[0], dtype=logits.dtype), atol=1e-3))
    scale = float(logits.abs().amax().clamp_min(1.0))
    difference = float((again - logits).abs().amax()) / scale if logits.numel() else 0.0
    values = {"test/sanity/zero_grad_frac": zero, "test/sanity/probability_like": float(probability_like),
              "test/sanity/forward_max_diff": difference}
    warnings: list[str] = []
    if zero > ZERO_GRAD_WARNING:
        warnings.append(f"{zero:.1%} of the rows have an all-zero input gradient: gradient attacks see nothing "
                        "there (gradient masking?); trust Square's figure, not PGD's")
    if probability_like:
        warnings.append("the model's outputs look like probabilities (in [0, 1], rows sum to 1): attacks need "
                        "logits; drop the final softmax")
    if difference > FORWARD_TOLERANCE:
        warnings.append(f"two forward passes in eval mode differ by {difference:.2g} (relative): the model is "
                        "not deterministic, robust accuracy is noisy and may be overstated")
    return values, warnings


def consistency_warnings(metrics: Mapping[str, float]) -> list[str]:
    """A PGD accuracy below AutoAttack's at the same epsilon: one of the attacks is broken
    (AutoAttack should never be the weaker)."""
    warnings = []
    for key, value in metrics.items():
        match = ROBUST_KEY.match(key)
        if match and match["attack"] == "pgd":
            strong = metrics.get(f"test/robust_acc/autoattack/eps={match['eps']}")
            if strong is not None and value < strong:
                warnings.append(f"PGD's robust accuracy {value:.4f} is below AutoAttack's {strong:.4f} at "
                                f"eps={match['eps']}: an attack is broken")
    return warnings


class RobustEvaluation:
    r"""Clean accuracy and accuracy under every attack x epsilon, over a stream of batches.

    Each attack perturbs the inputs against ``model`` (white-box, eval mode, ``attack(model,
    x, y) -> x_adv``); ``predict`` scores the perturbed inputs (default: ``model``'s logits).
    Rows with ``y < 0`` are neither attacked nor counted. Sanity checks run on the first batch
    (:func:`sanity_checks`); warnings are logged and kept in :attr:`warnings`.

    Args:
        attacks: attack names (:func:`~nsl_lab.attacks.ensemble.make_robust_attack`).
        eps: radii; 0 leaves the inputs unchanged (the clean accuracy).
        norm: ``linf`` or ``l2`` (``fgsm`` also ``l1``).
        clip_min, clip_max: value range of the inputs (e.g. 0 and 1 for pixels).
        seed: seeds every attack's random numbers (CPU generators), so a run repeats exactly.
        settings: per attack name, its other constructor arguments (e.g. ``{"pgd": {"steps": 20}}``).
        sanity: run the sanity checks.
    """

    def __init__(self, attacks: Sequence[str], eps: Sequence[float], norm: str = "linf",
                 clip_min: float | None = None, clip_max: float | None = None, seed: int = 0,
                 settings: Mapping[str, Mapping[str, Any]] | None = None, sanity: bool = True) -> None:
        if isinstance(attacks, str):
            attacks = [attacks]
        if isinstance(eps, (int, float)):
            eps = [eps]
        check_choice("norm", norm, Norm)
        for name in attacks:
            check_choice("attacks", name, RobustAttackName)
            if norm == "l1" and name != "fgsm":  # checked here: the attack would name its own settings path
                raise ConfigError(f"norm='l1' is allowed only with attack 'fgsm'; attack {name!r} takes 'linf', 'l2'",
                                  "norm")
        check_clip(clip_min, clip_max)
        if len(set(attacks)) != len(attacks):
            raise ConfigError(f"attacks={list(attacks)!r} holds a name twice", "attacks")
        epsilons = [float(check_range("eps", e, 0.0)) for e in eps]
        if len(set(epsilons)) != len(epsilons):
            raise ConfigError(f"eps={list(eps)!r} holds a value twice", "eps")
        check_integer("seed", seed, 0)
        settings = {name: dict(value or {}) for name, value in (settings or {}).items()}
        for name in settings:
            if name not in attacks:
                check_choice("settings", name, RobustAttackName)
        self.names, self.epsilons, self.sanity = list(attacks), epsilons, check_flag("sanity_checks", sanity)
        self.attacks: dict[tuple[str, float], Callable] = {}
        for name in self.names:
            for e in epsilons:
                options = dict(settings.get(name, {}))
                if name in _SEEDED:
                    options["generator"] = torch.Generator().manual_seed(seed)
                elif name == "autoattack":
                    options.setdefault("seed", seed)
                with config_scope(f"settings.{name}."):
                    self.attacks[name, e] = make_robust_attack(name, e, norm, clip_min, clip_max, **options)
        keys = ["test/acc"] + [robust_key(n, e) for n, e in self.attacks]
        if len(self.names) > 1:
            keys += [robust_key("worst", e) for e in epsilons]
        if "autoattack" in self.names:
            parts = self.attacks["autoattack", epsilons[0]].names if epsilons else []
            keys += [robust_key(f"autoattack.{p}", e) for p in parts for e in epsilons]
        self.counts = CorrectCounts(keys)
        self.sanity_values: dict[str, float] = {}
        self.warnings: list[str] = []

    @classmethod
    def from_config(cls, attacks: Sequence[str] = ("pgd",), eps: Sequence[float] = (), norm: str = "linf",
                    clip_min: float | None = None, clip_max: float | None = None, seed: int = 0,
                    sanity_checks: bool = True, settings: Mapping[str, Mapping[str, Any]] | None = None,
                    **unknown: Any) -> "RobustEvaluation | None":
        """From the ``eval`` config block; ``None`` when ``eps`` is empty."""
        for key, value in unknown.items():
            raise ConfigError(f"{key}={value!r} is not a setting of the robust evaluation; allowed: attacks, eps, "
                              "norm, clip_min, clip_max, seed, sanity_checks, settings", key)
        evaluation = cls(attacks, eps, norm, clip_min, clip_max, seed, settings, sanity_checks)
        return evaluation if evaluation.epsilons else None

    def reset(self) -> None:
        self.counts.reset()
        self.sanity_values, self.warnings = {}, []

    def to(self, device: torch.device | str) -> "RobustEvaluation":
        self.counts = self.counts.to(device)
        return self

    def update(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, predict: Predict | None = None) -> None:
        """Attacks one batch and counts; ``predict(x) -> logits`` scores (default ``model``)."""
        if predict is None:
            def predict(inputs: torch.Tensor) -> torch.Tensor:
                return as_output(model(inputs)).logits
        with torch.inference_mode(False), torch.enable_grad():
            x, y = x.clone(), y.clone()  # tensors made under inference mode cannot enter autograd
            if x.is_sparse:
                x = x.to_dense()
            labeled = y >= 0
            if self.sanity and not self.sanity_values:
                self.sanity_values, warnings = sanity_checks(model, x, y)
                self.warn(warnings)
            correct: dict[str, torch.Tensor] = {}
            with torch.no_grad():
                correct["test/acc"] = (predict(x).argmax(-1) == y) & labeled
            worst = {e: correct["test/acc"].clone() for e in self.epsilons}
            for (name, e), attack in self.attacks.items():
                if isinstance(attack, AutoAttack):
                    result = attack.run(model, x, y)
                    x_adv = result.x_adv
                    total = int(labeled.sum())
                    for part, accuracy in result.per_attack.items():  # accuracy = count / total, exactly
                        count = 0 if math.isnan(accuracy) else round(accuracy * total)
                        correct[robust_key(f"autoattack.{part}", e)] = torch.tensor(count)
                else:
                    x_adv = attack(model, x, y)
                with torch.no_grad():
                    hit = (predict(x_adv).argmax(-1) == y) & labeled
                correct[robust_key(name, e)] = hit
                worst[e] &= hit
            if len(self.names) > 1:
                correct.update({robust_key("worst", e): worst[e] for e in self.epsilons})
        # Outside the block: in the test stage the counters were made under inference mode.
        self.counts.update(correct, int(labeled.sum()))

    def compute(self) -> dict[str, float]:
        """Accuracies over every batch so far (summed over DDP ranks) and the sanity values."""
        metrics = dict(self.counts.compute())  # a copy: torchmetrics caches what compute() returned
        metrics.pop("test/acc")
        self.warn(consistency_warnings(metrics))
        return {**metrics, **self.sanity_values}

    def clean_accuracy(self) -> float:
        """Accuracy on the unperturbed inputs (summed over DDP ranks)."""
        return self.counts.compute()["test/acc"]

    def warn(self, warnings: Sequence[str]) -> None:
        for line in warnings:
            if line not in self.warnings:
                self.warnings.append(line)
                log.warning("robust evaluation: %s", line)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({list(self.attacks.values())!r})"


class RobustAccuracy(pl.Callback):
    r"""Robust accuracy in the test stage: a :class:`RobustEvaluation` over the test batches,
    logged as ``test/robust_acc/<attack>/eps=<e>`` (and the sanity values), so it lands in
    ``metrics.json``. Lightning tests under ``torch.inference_mode``; the attacks leave it
    locally, on clones of the batch, to take input gradients.
    """

    def __init__(self, evaluation: RobustEvaluation) -> None:
        self.evaluation = evaluation

    @classmethod
    def from_config(cls, **settings: Any) -> "RobustAccuracy | None":
        evaluation = RobustEvaluation.from_config(**settings)
        return None if evaluation is None else cls(evaluation)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.evaluation.to(pl_module.device).reset()

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                          batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        def predict(x_adv: torch.Tensor) -> torch.Tensor:
            return pl_module(Batch(x_adv, batch.y, batch.index, batch.lengths, batch.graph)).logits

        self.evaluation.update(pl_module.backbone, batch.x, batch.y, predict)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # compute() has already added up the ranks' counts: every rank logs the same value.
        for key, value in self.evaluation.compute().items():
            pl_module.log(key, value)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.evaluation!r})"
