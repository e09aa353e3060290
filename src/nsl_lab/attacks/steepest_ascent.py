"""Steepest ascent inside a norm ball: the one implementation behind the adversarial
regularizer and the FGSM / PGD attacks (direction, projection, clipping, masking)."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Literal

import torch
from torch import nn

from nsl_lab.errors import ConfigError, check_choice, check_flag, check_integer, check_range

#: steepest-ascent directions
Norm = Literal["linf", "l2", "l1"]
#: norms with a ball to project onto (and to start in)
BallNorm = Literal["linf", "l2"]
#: guards divisions by a zero norm (a zero gradient gives a zero direction)
TINY = 1e-12

LossFn = Callable[[torch.Tensor], torch.Tensor]


def _per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[B]`` values reshaped to broadcast against ``like`` (``[B, ...]``)."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def steepest_direction(grad: torch.Tensor, norm: Norm, feature_mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Per example, the unit-norm :math:`d` maximising :math:`g^\top d` (NSL's semantics).

    - ``linf``: :math:`\operatorname{sign}(g)`;
    - ``l2``: :math:`g / \lVert g \rVert_2`;
    - ``l1``: :math:`\operatorname{sign}(g_i) / m` on the :math:`m` coordinates of largest
      :math:`|g_i|` (a vertex of the L1 ball, shared evenly between ties), 0 elsewhere.

    Non-finite gradient entries count as 0 and ``feature_mask`` (broadcast over the batch)
    zeroes the coordinates that must not move. An all-zero gradient gives a zero direction.
    """
    grad = torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad))
    if feature_mask is not None:
        grad = grad * feature_mask.to(grad)
    flat = grad.flatten(1)
    if norm == "linf":
        direction = flat.sign()
    elif norm == "l2":
        direction = flat / flat.norm(dim=1, keepdim=True).clamp_min(TINY)
    elif norm == "l1":
        magnitude = flat.abs()
        top = (magnitude == magnitude.amax(dim=1, keepdim=True)) & (magnitude > 0)
        direction = flat.sign() * top / top.sum(dim=1, keepdim=True).clamp_min(1)
    else:
        check_choice("norm", norm, Norm)
    return direction.reshape(grad.shape)


def project(delta: torch.Tensor, norm: BallNorm, epsilon: float) -> torch.Tensor:
    """Projects each example's ``delta`` onto the ``norm`` ball of radius ``epsilon``."""
    if norm == "linf":
        return delta.clamp(-epsilon, epsilon)
    if norm == "l2":
        length = delta.flatten(1).norm(dim=1)
        scale = (epsilon / length.clamp_min(TINY)).clamp(max=1.0)
        return delta * _per_example(scale, delta)
    raise ConfigError(f"projection norm={norm!r} is not supported; allowed: 'linf', 'l2'", "norm")


def random_in_ball(
    like: torch.Tensor, norm: BallNorm, epsilon: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""A point drawn uniformly from the ``norm`` ball of radius ``epsilon``, per example.

    ``linf``: uniform in the cube. ``l2``: a uniform direction (a normalised Gaussian) at
    radius :math:`\epsilon\, U^{1/d}` with :math:`U \sim \mathcal{U}[0, 1]` and :math:`d` the
    coordinates per example, which is uniform in the ball's volume (a uniform radius would
    crowd the centre: in 20 dimensions its mean is :math:`\epsilon/2`, the ball's
    :math:`\tfrac{20}{21}\epsilon`). Drawn on the CPU (with ``generator`` when given), so a
    seed reproduces it on any device.
    """
    if norm == "linf":
        noise = torch.rand(like.shape, generator=generator, dtype=like.dtype) * 2 - 1
        return (noise * epsilon).to(like.device)
    if norm == "l2":
        direction = torch.randn(like.shape, generator=generator, dtype=like.dtype)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(TINY).reshape(-1, *[1] * (like.dim() - 1))
        dims = like[0].numel()
        radius = torch.rand(like.shape[0], generator=generator, dtype=like.dtype) ** (1.0 / dims) * epsilon
        return (direction * _per_example(radius, like)).to(like.device)
    raise ConfigError(f"random_init needs a projection norm; norm={norm!r} is not supported; allowed: 'linf', 'l2'",
                      "norm")



def check_clip(clip_min: float | None, clip_max: float | None,
               names: tuple[str, str] = ("clip_min", "clip_max")) -> None:
    """A value range whose ends, when given, are numbers with ``clip_min <= clip_max``;
    ``names`` are the settings' names in the caller's config."""
    for name, value in zip(names, (clip_min, clip_max)):
        if value is not None:
            check_range(name, value)
    if clip_min is not None and clip_max is not None and clip_min > clip_max:
        raise ConfigError(f"{names[0]}={clip_min!r} must be <= {names[1]}={clip_max!r}", names[0])


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode (dropout off, batch norm on its running statistics) inside the
    block, its own mode restored after it, whatever happens: how every attack runs a model."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def frozen_batch_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Batch norm layers keep normalising with batch statistics (in training mode) but leave
    their running mean / variance and batch counter untouched, so perturbation passes do not
    shift the statistics used at test time."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for norm in norms:
        norm.track_running_stats = False
    try:
        yield
    finally:
        for norm in norms:
            norm.track_running_stats = True


class SteepestAscent:
    r"""Iterated steepest ascent of a loss in a norm ball (FGSM for one step, PGD for more).

    .. math::
        \delta_0 = 0 \ (\text{or uniform in the ball}),\qquad
        \delta_{t+1} = \Pi_{\epsilon}\big(\delta_t + \alpha\, d(\nabla_\delta L(x + \delta_t))\big),
        \qquad x_\text{adv} = \operatorname{clip}(x + \delta_T)

    with :math:`d` from :func:`steepest_direction` (per example), :math:`\Pi_\epsilon` the
    projection onto the ``epsilon`` ball (none when ``epsilon`` is ``None``) and ``clip``
    into ``[clip_min, clip_max]``. The perturbation carries no gradient.

    Args:
        norm: ``linf``, ``l2`` or ``l1`` (steepest-ascent direction).
        step_size: :math:`\alpha`.
        steps: number of ascent steps :math:`T` (1 = FGSM).
        epsilon: radius of the projection ball (same norm; ``linf`` or ``l2``), or ``None``.
        random_init: start uniformly in the ``epsilon`` ball (needs ``epsilon``).
        clip_min, clip_max: value range of the perturbed input (``None`` = unbounded).
        feature_mask: 1 where an input coordinate may move, 0 where it must not
            (broadcast against one example).
        names: how the caller names the settings in error messages (e.g. the adversarial
            regularizer calls ``epsilon`` ``pgd_epsilon``).
    """

    def __init__(
        self,
        norm: Norm = "linf",
        step_size: float = 0.01,
        steps: int = 1,
        epsilon: float | None = None,
        random_init: bool = False,
        clip_min: float | None = None,
        clip_max: float | None = None,
        feature_mask: torch.Tensor | None = None,
        names: dict[str, str] | None = None,
    ) -> None:
        names = {"norm": "norm", "step_size": "step_size", "steps": "steps", "epsilon": "epsilon",
                 "random_init": "random_init", **(names or {})}

        def named(key: str) -> str:
            return names[key]

        check_choice(named("norm"), norm, Norm)
        check_range(named("step_size"), step_size, 0.0)
        check_integer(named("steps"), steps, 1)
        if epsilon is not None:
            check_range(named("epsilon"), epsilon, 0.0)
            if norm not in ("linf", "l2"):
                raise ConfigError(f"{named('norm')}={norm!r} has no ball to project onto ({named('epsilon')} is set); "
                                  "allowed: 'linf', 'l2'", named("norm"))
        if random_init and epsilon is None:
            raise ConfigError(f"{named('random_init')}=True needs {named('epsilon')} (the ball to start in)",
                              named("random_init"))
        if clip_min is not None and clip_max is not None and clip_min > clip_max:
            raise ConfigError(f"clip_min={clip_min!r} must be <= clip_max={clip_max!r}", "clip_min")
        self.norm, self.step_size, self.steps, self.epsilon = norm, float(step_size), steps, epsilon
        self.random_init, self.clip_min, self.clip_max = check_flag("random_init", random_init), clip_min, clip_max
        self.feature_mask = None if feature_mask is None else torch.as_tensor(feature_mask, dtype=torch.float32)

    def check_mask(self, x: torch.Tensor) -> None:
        """The mask must broadcast against one example of ``x``."""
        shape = tuple(x.shape[1:])
        try:
            fits = torch.broadcast_shapes(tuple(self.feature_mask.shape), shape) == shape
        except RuntimeError:
            fits = False
        if not fits:
            raise ConfigError(f"feature_mask of shape {tuple(self.feature_mask.shape)} does not "
                              f"broadcast against one input of shape {shape}", "feature_mask")

    def clip(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """``delta`` such that ``x + delta`` stays in ``[clip_min, clip_max]`` (never grows it)."""
        if self.clip_min is None and self.clip_max is None:
            return delta
        return (x + delta).clamp(self.clip_min, self.clip_max) - x

    def start(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.random_init or not self.epsilon:
            return torch.zeros_like(x)
        delta = random_in_ball(x, self.norm, self.epsilon, generator)
        if self.feature_mask is not None:
            delta = delta * self.feature_mask.to(delta)
        return self.clip(x, delta)

    def step(self, x: torch.Tensor, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """One ascent step from ``delta`` along ``grad``, projected and clipped."""
        delta = delta + self.step_size * steepest_direction(grad, self.norm, self.feature_mask)
        if self.epsilon is not None:
            delta = project(delta, self.norm, self.epsilon)
        return self.clip(x, delta)

    def perturbation(
        self,
        x: torch.Tensor,
        loss_fn: LossFn,
        first_grad: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The detached perturbation :math:`\\delta_T` for inputs ``x``.

        ``loss_fn(x_adv)`` returns the scalar loss to ascend; ``first_grad``, the gradient
        of that loss at ``x`` itself, saves the first evaluation (FGSM then costs no extra
        forward/backward beyond the adversarial pass); it is ignored with ``random_init``.
        """
        x = x.detach()
        if self.feature_mask is not None:
            self.check_mask(x)
        delta = self.start(x, generator)
        for iteration in range(self.steps):
            if iteration == 0 and first_grad is not None and not self.random_init:
                grad = first_grad.detach()
            else:
                point = (x + delta).requires_grad_(True)
                with torch.enable_grad():
                    (grad,) = torch.autograd.grad(loss_fn(point), point)
            delta = self.step(x, delta, grad).detach()
        return delta

    def describe(self) -> str:
        parts = [f"norm={self.norm!r}", f"step_size={self.step_size}", f"steps={self.steps}"]
        if self.epsilon is not None:
            parts.append(f"epsilon={self.epsilon}")
        if self.random_init:
            parts.append("random_init=True")
        if self.clip_min is not None or self.clip_max is not None:
            parts.append(f"clip=[{self.clip_min}, {self.clip_max}]")
        if self.feature_mask is not None:
            parts.append("feature_mask")
        return ", ".join(parts)
