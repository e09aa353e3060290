r"""Square Attack (Andriushchenko, Croce, Flammarion & Hein 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search"): a score-based attack that
needs only the model's logits, no gradients. ``attack(model, x, y) -> x_adv``."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nsl_lab.attacks.apgd import logit_margin
from nsl_lab.attacks.steepest_ascent import TINY, BallNorm, _per_example, check_clip, eval_mode, project
from nsl_lab.errors import check_choice, check_integer, check_range
from nsl_lab.modules.backbone import as_output

#: the iterations (of a 10 000-query budget) after which ``p`` halves, the paper's schedule
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
#: proposals that would not change the current point are redrawn this many times at most
REDRAWS = 10


def p_schedule(p_init: float, iteration: int, n_queries: int) -> float:
    r"""The fraction :math:`p` of an input's pixels that iteration ``iteration`` (0-based) may
    change: ``p_init`` halved once per entry of :data:`P_HALVINGS` that the iteration has
    passed, the schedule being rescaled from 10 000 queries to ``n_queries``
    (iteration :math:`i` counts as :math:`\lfloor 10^4 i / n_\text{queries} \rfloor`)."""
    scaled = int(iteration * 10000 / n_queries)
    return p_init / 2 ** sum(scaled > mark for mark in P_HALVINGS)


def layout(shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
    """``(channels, height, width)`` of one input, as the attack sees it.

    ``[B, C, H, W]`` images as they are; ``[B, H, W]`` one-channel images; ``[B, d]`` (and
    ``[B]``) a one-channel, one-pixel-high strip of ``d`` pixels, whose "squares" are runs
    of adjacent coordinates; more dimensions than 4 fold into the width.
    """
    if len(shape) <= 1:
        return 1, 1, 1
    if len(shape) == 2:
        return 1, 1, int(shape[1])
    if len(shape) == 3:
        return 1, int(shape[1]), int(shape[2])
    return int(shape[1]), int(shape[2]), int(math.prod(shape[3:]))


def window_size(p: float, height: int, width: int) -> tuple[int, int]:
    r"""Height and width of the square for a fraction ``p`` of the pixels: side
    :math:`s = \operatorname{round}(\sqrt{p\,HW})` kept in ``[1, min(H, W) - 1]`` (the paper's
    bound: a window never covers a whole side); for one-pixel-high strips a run of
    :math:`\operatorname{round}(p\,W)` pixels in ``[1, W - 1]``."""
    if height == 1:
        return 1, int(min(max(round(p * width), 1), max(width - 1, 1)))
    side = int(min(max(round(math.sqrt(p * height * width)), 1), max(min(height, width) - 1, 1)))
    return side, side


@dataclass
class SquareResult:
    """What :meth:`Square.perturb` found.

    Attributes:
        x_adv: the adversarial inputs (detached): the first point with a negative margin where
            the attack succeeded, otherwise the point of smallest margin found (the unchanged
            input for unlabeled rows and for rows the model already gets wrong).
        fooled: per row, whether the model misclassifies ``x_adv`` (rows wrong on the clean
            input included; unlabeled rows ``False``). For attacked rows this is a negative
            margin, so an exact tie with the true class (margin 0) counts as not fooled.
        queries: per row, the model evaluations the attack spent on it (0 for rows not attacked).
    """

    x_adv: torch.Tensor
    fooled: torch.Tensor
    queries: torch.Tensor


class Square:
    r"""Square Attack: random search over square-shaped updates, minimising the margin
    :math:`L(x) = z_y(x) - \max_{k \ne y} z_k(x)` (:func:`~nsl_lab.attacks.apgd.logit_margin`);
    an example is fooled once :math:`L < 0`. Each iteration proposes one new point per row that
    is not fooled yet, queries the model once on it and keeps it when its margin is strictly
    smaller. Rows stop being queried once fooled; the attack stops when all are (or after
    ``n_queries`` queries per row, the initial point included; one more clean pass on the whole
    batch decides which rows are correct and so attacked).

    The window: a square of side :math:`s \approx \sqrt{p\,HW}` at a uniformly random position
    (:func:`window_size`; flat inputs ``[B, d]`` use runs of :math:`\approx p\,d` adjacent
    coordinates, see :func:`layout`), with :math:`p` from ``p_init`` halving at iterations
    10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10 000, rescaled to ``n_queries``
    (:func:`p_schedule`).

    ``linf`` (the paper's Algorithm 2): the start is :math:`x` plus vertical stripes, each
    column of each channel :math:`\pm\epsilon` at random; an update adds :math:`\pm 2\epsilon`
    (one random sign per channel) on the window, then projects onto the ball and the box, so
    the window's pixels become :math:`x \pm \epsilon`. A proposal that would not change the
    current point is redrawn (up to 10 times), so queries are not spent on it.

    ``l2`` (a simpler variant of the paper's Algorithm 3, a documented deviation): updates are
    built from a "Gaussian-like" pulse :math:`\eta` on a window, nested squares around its
    centre with weight :math:`\eta_{ij} = \sum_{k = d_{ij}}^{M} (k+1)^{-2}` (:math:`d_{ij}` the
    Chebyshev distance to the centre, :math:`M` half the side), normalised to unit L2 norm. The
    start tiles the input with such pulses (tiles a fifth of a side, a random sign per tile and
    channel), rescaled to :math:`\lVert\delta\rVert_2 = \epsilon`. An update adds
    :math:`\sqrt{p}\,\epsilon\,\sigma_c\,\eta / \sqrt{C}` on one random window
    (:math:`\sigma_c = \pm 1` per channel, so the step has L2 length :math:`\sqrt{p}\,\epsilon`
    and shrinks with the schedule), rescales the whole perturbation back onto the sphere
    :math:`\lVert\delta\rVert_2 = \epsilon`, then clips to the box; it is kept when the
    margin decreases. The paper instead moves the perturbation's mass from a second window into
    the first and adds a two-lobed pattern of opposite signs sized from that mass; the variant
    keeps the localised square updates on the L2 sphere and, unlike pure mass transfer, can
    still spread mass over coordinates in low dimensions (it reaches the L2 optimum of a linear
    model). Both versions are local random searches; neither needs gradients.

    Beyond the paper (which treats images only): flat and other non-image inputs are laid out
    as strips (:func:`layout`), so "squares" become runs of adjacent coordinates.

    Args:
        eps: :math:`\epsilon`, the radius of the ball.
        norm: ``linf`` or ``l2``.
        n_queries: model evaluations per row at most (default 5000; the initial point counts).
        p_init: the initial fraction :math:`p` of pixels a window covers (default 0.8).
        clip_min, clip_max: value range of the inputs (``None`` = unbounded).
        generator: CPU generator for every random draw (``None``: torch's global one).
    """

    def __init__(self, eps: float, norm: BallNorm = "linf", n_queries: int = 5000, p_init: float = 0.8,
                 clip_min: float | None = None, clip_max: float | None = None,
                 generator: torch.Generator | None = None) -> None:
        check_range("eps", eps, 0.0)
        check_choice("norm", norm, BallNorm)
        check_integer("n_queries", n_queries, 1)
        check_range("p_init", p_init, 0.0, 1.0, low_inclusive=False)
        check_clip(clip_min, clip_max)
        self.eps, self.norm, self.n_queries, self.p_init = float(eps), norm, n_queries, float(p_init)
        self.clip_min, self.clip_max, self.generator = clip_min, clip_max, generator

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.perturb(model, x, y).x_adv

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> SquareResult:
        """The attack with its per-row outcome (see :class:`SquareResult`)."""
        x, y = x.detach(), y.detach()
        with eval_mode(model), torch.no_grad():
            return self._perturb(model, x, y)

    # -- helpers -----------------------------------------------------------------------------

    def _margin(self, model: nn.Module, point: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return logit_margin(as_output(model(point)).logits, y)

    def _clip(self, point: torch.Tensor) -> torch.Tensor:
        if self.clip_min is None and self.clip_max is None:
            return point
        return point.clamp(self.clip_min, self.clip_max)

    def _project(self, x: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        """``point`` moved into the ball around ``x``, then into the box."""
        return self._clip(x + project(point - x, self.norm, self.eps))

    def _randint(self, high: int, size: tuple[int, ...], device: torch.device) -> torch.Tensor:
        return torch.randint(0, max(high, 1), size, generator=self.generator).to(device)

    def _signs(self, size: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        draw = torch.randint(0, 2, size, generator=self.generator)
        return (draw * 2 - 1).to(dtype=like.dtype, device=like.device)

    def _windows(self, n: int, height: int, width: int, size: tuple[int, int],
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per row a window at a uniformly random position: its mask ``[n, 1, H, W]`` and the
        offsets of each pixel from the window's centre (rows, columns: ``[n, H, 1]``, ``[n, 1, W]``)."""
        sh, sw = size
        top = self._randint(height - sh + 1, (n,), device)
        left = self._randint(width - sw + 1, (n,), device)
        rows = torch.arange(height, device=device)[None, :] - top[:, None]
        cols = torch.arange(width, device=device)[None, :] - left[:, None]
        inside = ((rows >= 0) & (rows < sh))[:, :, None] & ((cols >= 0) & (cols < sw))[:, None, :]
        return inside[:, None], (rows - (sh - 1) / 2)[:, :, None], (cols - (sw - 1) / 2)[:, None, :]

    @staticmethod
    def _pulse(row_offset: torch.Tensor, col_offset: torch.Tensor, size: tuple[int, int],
               like: torch.Tensor) -> torch.Tensor:
        r"""The nested-squares pulse :math:`\eta` (see the class docstring) around each window's
        centre, ``[n, 1, H, W]``, not normalised (0 outside the window is the caller's mask)."""
        half = max(size) // 2
        # Chebyshev distance in whole steps from the centre (half-pixel centres round down).
        distance = torch.maximum(row_offset.abs().floor(), col_offset.abs().floor()).clamp(max=half).long()
        weights = 1.0 / torch.arange(1, half + 2, dtype=like.dtype, device=like.device) ** 2
        tail = weights.flip(0).cumsum(0).flip(0)  # tail[k] = sum_{j >= k} 1 / (j + 1)^2
        return tail[distance][:, None]

    # -- the attack ----------------------------------------------------------------------------

    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> SquareResult:
        logits = as_output(model(x)).logits
        labeled = y >= 0
        correct = labeled & (logits.argmax(dim=1) == y.clamp_min(0))
        fooled = labeled & ~correct
        x_adv = x.clone()
        queries = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        rows = correct.nonzero().squeeze(1)
        if self.eps == 0.0 or rows.numel() == 0:
            return SquareResult(x_adv, fooled, queries)
        channels, height, width = layout(x.shape)
        x_rows, y_rows = x[rows].reshape(-1, channels, height, width), y[rows]
        n = x_rows.shape[0]

        def margin(point: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return self._margin(model, point.reshape(-1, *x.shape[1:]), labels)

        best = self._start(x_rows)
        margin_best = margin(best, y_rows)
        spent = torch.ones(n, dtype=torch.long, device=x.device)
        for iteration in range(self.n_queries - 1):
            active = (margin_best >= 0).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            p = p_schedule(self.p_init, iteration, self.n_queries)
            proposal = self._propose(x_rows[active], best[active], p)
            new_margin = margin(proposal, y_rows[active])
            spent[active] += 1
            better = new_margin < margin_best[active]
            best[active[better]] = proposal[better]
            margin_best[active[better]] = new_margin[better]
        x_adv[rows] = best.reshape(-1, *x.shape[1:])
        fooled[rows] = margin_best < 0
        queries[rows] = spent
        return SquareResult(x_adv.detach(), fooled, queries)

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        """The initial point (``x`` as ``[n, C, H, W]``)."""
        n, channels, height, width = x.shape
        if self.norm == "linf":
            stripes = self._signs((n, channels, 1, width), x) * self.eps
            return self._project(x, x + stripes)
        tile = (max(height // 5, 1), max(width // 5, 1)) if height > 1 else (1, max(width // 5, 1))
        rows = torch.arange(height, device=x.device)
        cols = torch.arange(width, device=x.device)
        row_offset = (rows % tile[0] - (tile[0] - 1) / 2)[None, :, None].expand(n, height, 1)
        col_offset = (cols % tile[1] - (tile[1] - 1) / 2)[None, None, :].expand(n, 1, width)
        pulse = self._pulse(row_offset, col_offset, tile, x)
        tiles_down, tiles_across = -(-height // tile[0]), -(-width // tile[1])
        signs = self._signs((n, channels, tiles_down, tiles_across), x)
        signs = signs.repeat_interleave(tile[0], dim=2)[:, :, :height].repeat_interleave(tile[1], dim=3)[..., :width]
        delta = pulse * signs
        delta = delta * _per_example(self.eps / delta.flatten(1).norm(dim=1).clamp_min(TINY), delta)
        return self._project(x, x + delta)

    def _propose(self, x: torch.Tensor, best: torch.Tensor, p: float) -> torch.Tensor:
        """One proposal per row (``[n, C, H, W]``); rows whose proposal equals their current
        point are redrawn, up to :data:`REDRAWS` times."""
        proposal = self._draw(x, best, p)
        for _ in range(REDRAWS):
            same = (proposal == best).flatten(1).all(dim=1).nonzero().squeeze(1)
            if same.numel() == 0:
                break
            proposal[same] = self._draw(x[same], best[same], p)
        return proposal

    def _draw(self, x: torch.Tensor, best: torch.Tensor, p: float) -> torch.Tensor:
        n, channels, height, width = x.shape
        size = window_size(p, height, width)
        if self.norm == "linf":
            inside, _, _ = self._windows(n, height, width, size, x.device)
            step = 2 * self.eps * self._signs((n, channels, 1, 1), x)
            return self._project(x, best + inside.to(x.dtype) * step)
        inside, row_offset, col_offset = self._windows(n, height, width, size, x.device)
        pulse = self._pulse(row_offset, col_offset, size, x) * inside.to(x.dtype)
        pulse = pulse / _per_example(pulse.flatten(1).norm(dim=1).clamp_min(TINY), pulse)
        # One random sign per channel; the step's L2 length is sqrt(p) eps, shrinking with p.
        step = pulse * self._signs((n, channels, 1, 1), x) * (self.eps * math.sqrt(p / channels))
        delta = best - x + step
        delta = delta * _per_example(self.eps / delta.flatten(1).norm(dim=1).clamp_min(TINY), delta)
        return self._project(x, x + delta)

    def __repr__(self) -> str:
        parts = [f"eps={self.eps}", f"norm={self.norm!r}", f"n_queries={self.n_queries}", f"p_init={self.p_init}"]
        if self.clip_min is not None or self.clip_max is not None:
            parts.append(f"clip=[{self.clip_min}, {self.clip_max}]")
        return f"Square({', '.join(parts)})"
