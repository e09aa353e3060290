r"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"): PGD with momentum and a step size that halves
itself at checkpoints, on the cross-entropy or the difference-of-logits-ratio (DLR) loss,
untargeted (APGD-CE, APGD-DLR) or targeted (APGD-T). ``attack(model, x, y) -> x_adv``."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from nsl_lab.attacks.steepest_ascent import (
    BallNorm, _per_example, check_clip, eval_mode, project, random_in_ball, steepest_direction,
)
from nsl_lab.errors import ConfigError, check_choice, check_flag, check_integer, check_range
from nsl_lab.modules.backbone import as_output

ApgdLoss = Literal["ce", "dlr"]

#: weight of the new gradient step against the previous update (the paper's alpha)
MOMENTUM = 0.75
#: the DLR denominators' guard (the paper's 1e-12)
DLR_TINY = 1e-12


def checkpoints(steps: int) -> list[int]:
    r"""The iterations :math:`w_j = \lceil p_j N \rceil` at which APGD may halve its step size.

    .. math:: p_0 = 0,\quad p_1 = 0.22,\quad p_{j+1} = p_j + \max(p_j - p_{j-1} - 0.03,\ 0.06)

    Only the :math:`w_j` in ``[1, steps)`` are kept (one each): a checkpoint at the last
    iteration could not change anything.
    """
    points: list[int] = []
    previous, current = 0.0, 0.22
    while current <= 1.0:
        # The small guard keeps 0.22 * 100 = 22.000000000000004 from rounding up to 23.
        w = math.ceil(current * steps - 1e-9)
        if 1 <= w < steps and (not points or w > points[-1]):
            points.append(w)
        previous, current = current, current + max(current - previous - 0.03, 0.06)
    return points


def logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Per example :math:`z_y - \max_{i \ne y} z_i`: negative exactly when ``y`` is not the
    (unique) top class."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return true - others.amax(dim=1)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    r"""The difference-of-logits-ratio loss per example, to be maximised (shift and scale
    invariant in the logits). With :math:`\pi` ordering the logits decreasingly:

    .. math::
        \mathrm{DLR}(z, y) = -\frac{z_y - \max_{i \ne y} z_i}{z_{\pi_1} - z_{\pi_3} + 10^{-12}},
        \qquad
        \mathrm{DLR}_t(z, y) = -\frac{z_y - z_t}{z_{\pi_1} - (z_{\pi_3} + z_{\pi_4})/2 + 10^{-12}}

    The untargeted form needs 3 classes, the targeted form (``target`` given) 4.
    """
    needed = 3 if target is None else 4
    if logits.shape[1] < needed:
        kind = "untargeted" if target is None else "targeted"
        raise ConfigError(f"loss='dlr' ({kind}) needs at least {needed} classes; the model gives "
                          f"{logits.shape[1]}", "loss")
    ordered = logits.sort(dim=1, descending=True).values
    if target is None:
        return -logit_margin(logits, y) / (ordered[:, 0] - ordered[:, 2] + DLR_TINY)
    difference = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, target[:, None]).squeeze(1)
    return -difference / (ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + DLR_TINY)


@dataclass
class ApgdResult:
    """What :meth:`APGD.perturb` found.

    Attributes:
        x_adv: the adversarial inputs (detached): the first misclassified point where the attack
            succeeded, otherwise the best point found (the unchanged input for unlabeled rows and
            for rows the model already gets wrong).
        fooled: per row, whether ``x_adv`` is misclassified (rows wrong on the clean input
            included; unlabeled rows ``False``).
    """

    x_adv: torch.Tensor
    fooled: torch.Tensor


@dataclass
class _Run:
    """One APGD run on a subset: the best point (by the run's loss) and the first success."""

    x_best: torch.Tensor
    loss_best: torch.Tensor
    margin_best: torch.Tensor
    x_found: torch.Tensor
    found: torch.Tensor


class APGD:
    r"""Auto-PGD (Croce & Hein 2020, Algorithm 1): step-size-free projected gradient ascent
    with momentum, per example.

    .. math::
        z^{(k+1)} &= P\big(x^{(k)} + \eta^{(k)}\, d(\nabla f(x^{(k)}))\big) \\
        x^{(k+1)} &= P\big(x^{(k)} + \alpha (z^{(k+1)} - x^{(k)}) + (1 - \alpha)(x^{(k)} - x^{(k-1)})\big)

    with :math:`\alpha = 0.75` (:math:`\alpha = 1` on the first step), :math:`\eta^{(0)} = 2\epsilon`,
    :math:`d` the sign (``linf``) or :math:`g / \lVert g \rVert_2` (``l2``) and :math:`P` the
    projection onto the :math:`\epsilon` ball intersected with ``[clip_min, clip_max]``. At each
    checkpoint :math:`w_j` (:func:`checkpoints`) an example's step size halves, and it restarts
    from its best (highest-loss) point, when

    1. the loss rose in fewer than :math:`\rho\,(w_j - w_{j-1})` of the steps since
       :math:`w_{j-1}`, or
    2. the step size did not halve at :math:`w_{j-1}` and the best loss is unchanged since.

    The run starts at a random point: uniform in the cube (``linf``), uniform by volume in the
    ball (``l2``), clipped to the box. For ``l2`` :math:`P` projects onto the ball, then clips to
    the box: a point of the intersection (clipping towards :math:`x`, which lies in the box,
    never lengthens the perturbation) though not always the nearest one; for ``linf`` that is
    the exact projection.

    Losses (maximised): ``ce`` the cross-entropy (targeted: minus the cross-entropy of the
    target); ``dlr`` :func:`dlr_loss`. Targeted (APGD-T): one attack per target class, the
    ``n_target_classes`` most likely non-true classes of the clean input in turn (2nd highest
    logit, 3rd, ...), each on the rows still classified correctly; success means
    misclassification (as robust accuracy counts it), not necessarily reaching the target.
    ``restarts`` > 1 reruns each attack from new random starts on the rows still correct.

    Rows the model already gets wrong and unlabeled rows (``y < 0``) are not attacked. For the
    others the result is the first misclassified point found, or else the best point: the
    highest loss over the restarts (untargeted), the smallest logit margin
    :math:`z_y - \max_{i \ne y} z_i` over targets and restarts (targeted, whose losses differ by
    target).

    Args:
        eps: :math:`\epsilon`, the radius of the ball.
        norm: ``linf`` or ``l2``.
        steps: iterations :math:`N` per run (default 100).
        loss: ``ce`` or ``dlr`` (default ``ce``).
        targeted: APGD-T (default ``False``).
        n_target_classes: targets per row when ``targeted`` (default 9; at most the number of
            classes minus one are used).
        restarts: runs per target (default 1).
        rho: :math:`\rho`, the fraction of rising steps below which the step size halves
            (default 0.75).
        clip_min, clip_max: value range of the inputs (``None`` = unbounded).
        generator: CPU generator for the random starts (``None``: torch's global one).
    """

    def __init__(self, eps: float, norm: BallNorm = "linf", steps: int = 100, loss: ApgdLoss = "ce",
                 targeted: bool = False, n_target_classes: int = 9, restarts: int = 1, rho: float = 0.75,
                 clip_min: float | None = None, clip_max: float | None = None,
                 generator: torch.Generator | None = None) -> None:
        check_range("eps", eps, 0.0)
        check_choice("norm", norm, BallNorm)
        check_integer("steps", steps, 1)
        check_choice("loss", loss, ApgdLoss)
        check_integer("n_target_classes", n_target_classes, 1)
        check_integer("restarts", restarts, 1)
        check_range("rho", rho, 0.0, 1.0)
        check_clip(clip_min, clip_max)
        self.eps, self.norm, self.steps, self.loss = float(eps), norm, steps, loss
        self.targeted, self.n_target_classes, self.restarts, self.rho = check_flag("targeted", targeted), n_target_classes, restarts, rho
        self.clip_min, self.clip_max, self.generator = clip_min, clip_max, generator

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.perturb(model, x, y).x_adv

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> ApgdResult:
        """The attack with its per-row outcome (see :class:`ApgdResult`)."""
        x, y = x.detach(), y.detach()
        with eval_mode(model):
            return self._perturb(model, x, y)

    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> ApgdResult:
        with torch.no_grad():
            logits = as_output(model(x)).logits
        labeled = y >= 0
        correct = labeled & (logits.argmax(dim=1) == y.clamp_min(0))
        fooled = labeled & ~correct
        x_adv = x.clone()
        if self.eps == 0.0:
            return ApgdResult(x_adv, fooled)
        num_classes = logits.shape[1]
        if self.loss == "dlr":
            dlr_loss(logits[:0], y[:0], None if not self.targeted else y[:0])  # fails early on too few classes
        targets: list[torch.Tensor | None] = [None]
        if self.targeted:
            ranked = logits.argsort(dim=1, descending=True)
            # Correct rows rank y first, so columns 1.. are the most likely other classes.
            targets = [ranked[:, j] for j in range(1, min(self.n_target_classes, num_classes - 1) + 1)]
        score = torch.full((x.shape[0],), float("-inf"), dtype=logits.dtype, device=x.device)
        for target in targets:
            for _ in range(self.restarts):
                rows = (correct & ~fooled).nonzero().squeeze(1)
                if rows.numel() == 0:
                    break
                run = self._run(model, x[rows], y[rows], None if target is None else target[rows])
                hit = rows[run.found]
                x_adv[hit] = run.x_found[run.found]
                fooled[hit] = True
                # Untargeted runs compare by their (common) loss; targeted ones by the margin.
                run_score = -run.margin_best if self.targeted else run.loss_best
                better = ~run.found & (run_score > score[rows])
                x_adv[rows[better]] = run.x_best[better]
                score[rows[better]] = run_score[better]
        return ApgdResult(x_adv.detach(), fooled)

    def losses(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """The per-example loss to maximise."""
        if self.loss == "dlr":
            return dlr_loss(logits, y, target)
        if target is None:
            return F.cross_entropy(logits, y, reduction="none")
        return -F.cross_entropy(logits, target, reduction="none")

    def project(self, x: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        """``point`` moved into the ball around ``x``, then into the box."""
        delta = project(point - x, self.norm, self.eps)
        if self.clip_min is not None or self.clip_max is not None:
            return (x + delta).clamp(self.clip_min, self.clip_max)
        return x + delta

    def start(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x, x + random_in_ball(x, self.norm, self.eps, self.generator))

    def _evaluate(self, model: nn.Module, point: torch.Tensor, y: torch.Tensor,
                  target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-example loss, its input gradient and the logits at ``point``."""
        point = point.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = as_output(model(point)).logits
            loss = self.losses(logits, y, target)
            # Rows are independent (eval mode), so the sum's gradient is each row's own.
            (grad,) = torch.autograd.grad(loss.sum(), point)
        return loss.detach(), grad.detach(), logits.detach()

    def _run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> _Run:
        current = self.start(x)
        loss, grad, logits = self._evaluate(model, current, y, target)
        found = logits.argmax(dim=1) != y
        x_found = current.clone()
        x_best, loss_best, grad_best = current.clone(), loss.clone(), grad.clone()
        margin_best = logit_margin(logits, y)
        previous = current
        eta = torch.full((x.shape[0],), 2 * self.eps, dtype=x.dtype, device=x.device)
        marks, last_mark = set(checkpoints(self.steps)), 0
        rises = torch.zeros(x.shape[0], device=x.device)
        eta_at_mark, best_at_mark = eta.clone(), loss_best.clone()
        for k in range(self.steps):
            z = self.project(x, current + _per_example(eta, x) * steepest_direction(grad, self.norm))
            if k == 0:
                new = z
            else:
                new = self.project(x, current + MOMENTUM * (z - current) + (1 - MOMENTUM) * (current - previous))
            new_loss, new_grad, logits = self._evaluate(model, new, y, target)
            hit = ~found & (logits.argmax(dim=1) != y)
            x_found[hit] = new[hit]
            found |= hit
            rises += (new_loss > loss).to(rises)
            better = new_loss > loss_best
            x_best[better], loss_best[better], grad_best[better] = new[better], new_loss[better], new_grad[better]
            margin_best[better] = logit_margin(logits, y)[better]
            previous, current, loss, grad = current, new, new_loss, new_grad
            if k + 1 in marks:
                mark = k + 1
                halve = (rises < self.rho * (mark - last_mark)) | ((eta == eta_at_mark) & (loss_best == best_at_mark))
                # Condition 2 compares with the step size in use before this checkpoint's decision.
                eta_at_mark, best_at_mark = eta.clone(), loss_best.clone()
                eta = torch.where(halve, eta / 2, eta)
                current, previous = current.clone(), previous.clone()
                current[halve], previous[halve] = x_best[halve], x_best[halve]
                loss, grad = loss.clone(), grad.clone()
                loss[halve], grad[halve] = loss_best[halve], grad_best[halve]
                rises.zero_()
                last_mark = mark
        return _Run(x_best, loss_best, margin_best, x_found, found)

    def __repr__(self) -> str:
        parts = [f"eps={self.eps}", f"norm={self.norm!r}", f"steps={self.steps}", f"loss={self.loss!r}"]
        if self.targeted:
            parts.append(f"targeted=True, n_target_classes={self.n_target_classes}")
        if self.restarts != 1:
            parts.append(f"restarts={self.restarts}")
        if self.clip_min is not None or self.clip_max is not None:
            parts.append(f"clip=[{self.clip_min}, {self.clip_max}]")
        return f"APGD({', '.join(parts)})"
