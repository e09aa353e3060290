r"""AutoAttack (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"): APGD-CE, APGD-T and Square in sequence, each
on the rows the previous ones left correct; and :func:`make_robust_attack`, one attack by name."""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import nn

from nsl_lab.attacks.apgd import APGD
from nsl_lab.attacks.gradient import make_attack
from nsl_lab.attacks.square import Square
from nsl_lab.attacks.steepest_ascent import BallNorm, check_clip, eval_mode
from nsl_lab.errors import ConfigError, check_choice, check_integer, check_range
from nsl_lab.modules.backbone import as_output

AutoAttackVersion = Literal["standard", "fast"]
#: the attacks AutoAttack can run, in the order it runs them
AutoAttackPart = Literal["apgd-ce", "apgd-t", "square"]
RobustAttackName = Literal["fgsm", "pgd", "apgd-ce", "apgd-t", "square", "autoattack"]
Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

#: per version: APGD steps, APGD-T target classes, Square queries
BUDGETS: dict[str, dict[str, int]] = {
    "standard": {"steps": 100, "n_target_classes": 9, "n_queries": 5000},
    "fast": {"steps": 20, "n_target_classes": 3, "n_queries": 500},
}


@dataclass
class AutoAttackResult:
    """What :meth:`AutoAttack.run` found.

    Attributes:
        x_adv: the adversarial inputs (detached): for each row the first attack's
            misclassified point, the clean input where every attack failed (and for unlabeled
            rows and rows misclassified already).
        clean: accuracy on the clean inputs, over the labeled rows (``nan`` without any).
        per_attack: attack name -> robust accuracy after that attack and all before it (over
            the labeled rows), in the order run; non-increasing.
        robust: the final (worst-case) robust accuracy: the model's accuracy on ``x_adv``.
        correct: per row, whether the model still classifies ``x_adv`` correctly (unlabeled
            rows ``False``).
    """

    x_adv: torch.Tensor = field(repr=False)
    clean: float = math.nan
    per_attack: dict[str, float] = field(default_factory=dict)
    robust: float = math.nan
    correct: torch.Tensor | None = field(default=None, repr=False)


def _accuracy(correct: torch.Tensor, labeled: torch.Tensor) -> float:
    total = int(labeled.sum())
    return int((correct & labeled).sum()) / total if total else math.nan


def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return as_output(model(x)).logits.argmax(dim=1)


class AutoAttack:
    r"""AutoAttack's ensemble, run in sequence: each attack sees only the rows that every
    attack before it left correctly classified, and a row counts as robust only if all of
    them fail. The robust accuracy is therefore the worst case over the attacks, per row.

    ``standard`` (the paper's standard version, without FAB-T):

    1. APGD-CE: untargeted APGD on the cross-entropy, 100 steps;
    2. APGD-T: targeted APGD on the targeted DLR loss, 100 steps for each of the 9 most
       likely non-true classes (models with fewer than 4 classes, where the targeted DLR loss
       is undefined, use the targeted cross-entropy instead);
    3. Square: 5000 queries, ``p_init = 0.8``.

    FAB-T (the paper's third attack, a targeted minimal-norm attack) is omitted: within a
    fixed :math:`\epsilon` its role, finding the nearest targeted decision boundary, is covered
    by APGD-T's targeted margin loss over the same targets, and the paper reports it rarely
    lowers robust accuracy further. ``fast`` is the same sequence on a small budget
    (20 steps, 3 targets, 500 queries), for tests and quick checks; it is weaker.

    Reproducible: each run derives one CPU generator per attack from ``seed`` (fresh at every
    :meth:`run`), so the same model and inputs give the same ``x_adv`` every time.

    Args:
        eps: :math:`\epsilon`, the radius of the ball.
        norm: ``linf`` or ``l2``.
        version: ``standard`` or ``fast``.
        clip_min, clip_max: value range of the inputs (``None`` = unbounded).
        seed: seed of the attacks' random starts and searches.
        attacks: which attacks to run, a subset of ``apgd-ce``, ``apgd-t``, ``square`` (run in
            the given order), or a mapping name -> ``attack(model, x, y) -> x_adv`` of custom
            ones; ``None`` = the three above.
    """

    def __init__(self, eps: float, norm: BallNorm = "linf", version: AutoAttackVersion = "standard",
                 clip_min: float | None = None, clip_max: float | None = None, seed: int = 0,
                 attacks: Sequence[str] | Mapping[str, Attack] | None = None) -> None:
        check_range("eps", eps, 0.0)
        check_choice("norm", norm, BallNorm)
        check_choice("version", version, AutoAttackVersion)
        check_clip(clip_min, clip_max)
        check_integer("seed", seed, 0)
        self.eps, self.norm, self.version = float(eps), norm, version
        self.clip_min, self.clip_max, self.seed = clip_min, clip_max, seed
        self.custom: dict[str, Attack] | None = None
        if attacks is None:
            self.names: list[str] = list(AutoAttackPart.__args__)
        elif isinstance(attacks, Mapping):
            if not attacks:
                raise ConfigError("attacks={} is empty; give at least one attack", "attacks")
            for name, attack in attacks.items():
                if not callable(attack):
                    raise ConfigError(f"attacks[{name!r}]={attack!r} is not an attack(model, x, y)", "attacks")
            self.custom = dict(attacks)
            self.names = list(attacks)
        else:
            if isinstance(attacks, str):
                attacks = [attacks]
            self.names = [check_choice("attacks", name, AutoAttackPart) for name in attacks]
            if not self.names:
                raise ConfigError("attacks=[] is empty; allowed: 'apgd-ce', 'apgd-t', 'square'", "attacks")
            if len(set(self.names)) != len(self.names):
                raise ConfigError(f"attacks={list(attacks)!r} names an attack twice", "attacks")

    def generators(self) -> list[torch.Generator]:
        """One fresh CPU generator per attack, seeded from ``seed`` and the attack's position."""
        root = torch.Generator().manual_seed(self.seed)
        seeds = torch.randint(0, 2 ** 62, (len(self.names),), generator=root).tolist()
        return [torch.Generator().manual_seed(int(s)) for s in seeds]

    def build(self, num_classes: int) -> dict[str, Attack]:
        """The attacks of one run, each with its own generator."""
        if self.custom is not None:
            return dict(self.custom)
        budget = BUDGETS[self.version]
        common = {"eps": self.eps, "norm": self.norm, "clip_min": self.clip_min, "clip_max": self.clip_max}
        built: dict[str, Attack] = {}
        for name, generator in zip(self.names, self.generators()):
            if name == "apgd-ce":
                built[name] = APGD(steps=budget["steps"], loss="ce", generator=generator, **common)
            elif name == "apgd-t":
                built[name] = APGD(steps=budget["steps"], loss="dlr" if num_classes >= 4 else "ce", targeted=True,
                                   n_target_classes=budget["n_target_classes"], generator=generator, **common)
            else:
                built[name] = Square(n_queries=budget["n_queries"], generator=generator, **common)
        return built

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.run(model, x, y).x_adv

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AutoAttackResult:
        """All attacks in sequence, with the accuracies after each (see :class:`AutoAttackResult`)."""
        x, y = x.detach(), y.detach()
        with eval_mode(model):
            return self._run(model, x, y)

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AutoAttackResult:
        with torch.no_grad():
            logits = as_output(model(x)).logits
        labeled = y >= 0
        correct = labeled & (logits.argmax(dim=1) == y.clamp_min(0))
        result = AutoAttackResult(x.clone(), _accuracy(correct, labeled))
        for name, attack in self.build(logits.shape[1]).items():
            rows = correct.nonzero().squeeze(1)
            if rows.numel():
                adv = attack(model, x[rows], y[rows]).detach()
                model.eval()  # a custom attack may have left the model in another mode
                fooled = _predict(model, adv) != y[rows]
                result.x_adv[rows[fooled]] = adv[fooled]
                correct[rows[fooled]] = False
            result.per_attack[name] = _accuracy(correct, labeled)
        # The final figure is measured on the returned inputs themselves, as one batch.
        result.correct = labeled & (_predict(model, result.x_adv) == y.clamp_min(0))
        result.robust = _accuracy(result.correct, labeled)
        result.x_adv = result.x_adv.detach()
        return result

    def __repr__(self) -> str:
        parts = [f"eps={self.eps}", f"norm={self.norm!r}", f"version={self.version!r}", f"attacks={self.names!r}"]
        if self.clip_min is not None or self.clip_max is not None:
            parts.append(f"clip=[{self.clip_min}, {self.clip_max}]")
        parts.append(f"seed={self.seed}")
        return f"AutoAttack({', '.join(parts)})"


def _check_settings(name: str, target: Callable[..., Any], settings: Mapping[str, Any],
                    fixed: Sequence[str]) -> None:
    """Unknown (or fixed by ``name``) keyword settings fail in one line instead of a TypeError."""
    allowed = [p for p in inspect.signature(target).parameters if p not in ("self", *fixed)]
    for key in settings:
        if key not in allowed:
            raise ConfigError(f"{key}={settings[key]!r} is not a setting of attack {name!r}; "
                              f"allowed: {', '.join(allowed)}", key)


def make_robust_attack(name: RobustAttackName, eps: float, norm: str = "linf", clip_min: float | None = None,
                       clip_max: float | None = None, **settings: Any) -> Attack:
    """One ``attack(model, x, y) -> x_adv`` by name.

    - ``fgsm``, ``pgd``: :func:`~nsl_lab.attacks.gradient.make_attack` (settings ``steps``,
      ``step_size``, ``random_start``; ``generator`` seeds PGD's random start);
    - ``apgd-ce``: :class:`~nsl_lab.attacks.apgd.APGD` on the cross-entropy;
    - ``apgd-t``: targeted APGD on the targeted DLR loss;
    - ``square``: :class:`~nsl_lab.attacks.square.Square`;
    - ``autoattack``: :class:`AutoAttack`.

    ``settings`` are the chosen attack's other constructor arguments.
    """
    check_choice("name", name, RobustAttackName)
    check_range("eps", eps, 0.0)
    clip = {"clip_min": clip_min, "clip_max": clip_max}
    if name in ("fgsm", "pgd"):
        generator = settings.pop("generator", None)
        _check_settings(name, make_attack, settings, ("name", "eps", "norm", "clip_min", "clip_max"))
        attack = make_attack(name, eps, norm, **clip, **settings)
        if generator is not None:
            if name == "fgsm":
                raise ConfigError("generator is not a setting of attack 'fgsm' (it has no randomness)", "generator")
            attack.generator = generator
        return attack
    if name == "apgd-ce":
        fixed = ("eps", "norm", "clip_min", "clip_max", "loss", "targeted")
        _check_settings(name, APGD.__init__, settings, fixed)
        return APGD(eps, norm, loss="ce", **clip, **settings)
    if name == "apgd-t":
        fixed = ("eps", "norm", "clip_min", "clip_max", "targeted")
        _check_settings(name, APGD.__init__, settings, fixed)
        return APGD(eps, norm, **{"loss": "dlr", **settings}, targeted=True, **clip)
    if name == "square":
        _check_settings(name, Square.__init__, settings, ("eps", "norm", "clip_min", "clip_max"))
        return Square(eps, norm, **clip, **settings)
    _check_settings(name, AutoAttack.__init__, settings, ("eps", "norm", "clip_min", "clip_max"))
    return AutoAttack(eps, norm, **clip, **settings)
