r"""Pairwise distances and reductions with Neural Structured Learning's semantics.

For a sample output :math:`a` and a neighbour output :math:`b` (last dimension = features):

=================  ==========================================================
``l1``             :math:`\sum_k |a_k - b_k|`
``l2``             :math:`\sum_k (a_k - b_k)^2` (squared, as NSL)
``cosine``         :math:`1 - \frac{a \cdot b}{\|a\| \|b\|}`
``kl``             :math:`\mathrm{KL}(p \,\|\, q) = \sum_k p_k (\log p_k - \log q_k)`
``jensen_shannon`` :math:`\tfrac12 \mathrm{KL}(p\|m) + \tfrac12 \mathrm{KL}(q\|m)`, :math:`m = \tfrac12(p+q)`
=================  ==========================================================

``transform`` is applied to both sides first (``none``, ``softmax``, ``sigmoid``); ``kl``
and ``jensen_shannon`` compare probability vectors, so they need ``softmax`` or
``sigmoid`` (``softmax`` is computed in log space for stability).

NSL's ``sum_over_axis``: ``-1`` (the table above, nsl_lab's default) sums ``l1`` / ``l2``
over the last axis; ``None`` (NSL's default) leaves them per feature, so an averaging
reduction also averages over the features (:func:`feature_scale`). ``cosine``, ``kl`` and
``jensen_shannon`` are always taken over the last axis (NSL requires an axis for them).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from nsl_lab.errors import ConfigError, check_choice

Distance = Literal["l1", "l2", "cosine", "kl", "jensen_shannon"]
Transform = Literal["none", "softmax", "sigmoid"]
Reduction = Literal["sum_by_nonzero_weights", "mean_by_weight", "sum", "mean"]
#: NSL's ``DistanceConfig.sum_over_axis``: -1 sums over the last axis, None keeps features apart
SumOverAxis = Literal[-1, None]
_EPS = 1e-12


def check_distance(distance: Distance, transform: Transform) -> None:
    check_choice("distance", distance, Distance)
    check_choice("transform", transform, Transform)
    if distance in ("kl", "jensen_shannon") and transform == "none":
        raise ConfigError(
            f"distance={distance!r} compares probabilities; set transform='softmax' or 'sigmoid'", "distance"
        )


def check_sum_over_axis(sum_over_axis: SumOverAxis, distance: Distance) -> None:
    if sum_over_axis not in (-1, None):
        raise ConfigError(f"sum_over_axis={sum_over_axis!r} is not supported; allowed: -1, null", "sum_over_axis")
    if sum_over_axis is None and distance not in ("l1", "l2"):
        raise ConfigError(f"sum_over_axis=null averages l1 / l2 over the features; distance={distance!r} "
                          "is always taken over the last axis: set sum_over_axis=-1", "sum_over_axis")


def feature_scale(sum_over_axis: SumOverAxis, reduction: Reduction, features: int) -> float:
    """The factor that turns a pair's summed ``l1`` / ``l2`` into NSL's value for ``sum_over_axis``:
    with ``None`` an averaging reduction counts every feature of a pair (NSL broadcasts the pair
    weight over them), which is the mean over the last axis; ``sum`` is unchanged."""
    return 1.0 if sum_over_axis is not None or reduction == "sum" else 1.0 / features


def _log_probs(x: torch.Tensor, transform: str) -> torch.Tensor:
    if transform == "softmax":
        return F.log_softmax(x, dim=-1)
    return torch.log(torch.sigmoid(x).clamp_min(_EPS))


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _transformed(x: torch.Tensor, distance: str, transform: str) -> torch.Tensor:
    """What ``distance`` compares of ``x``: log-probabilities for ``kl`` and ``jensen_shannon``,
    else ``x`` after ``transform``."""
    if distance in ("kl", "jensen_shannon"):
        return _log_probs(x, transform)
    if transform == "softmax":
        return F.softmax(x, dim=-1)
    if transform == "sigmoid":
        return torch.sigmoid(x)
    return x


def _compare(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    """``distance`` between already transformed ``a`` and ``b`` (see :func:`_transformed`)."""
    if distance in ("kl", "jensen_shannon"):
        log_p, log_q = a, b
        if distance == "kl":
            return _kl(log_p, log_q)
        log_m = torch.log((0.5 * (log_p.exp() + log_q.exp())).clamp_min(_EPS))
        return 0.5 * _kl(log_p, log_m) + 0.5 * _kl(log_q, log_m)
    if distance == "l1":
        return (a - b).abs().sum(-1)
    if distance == "l2":
        return (a - b).pow(2).sum(-1)
    return 1.0 - F.cosine_similarity(a, b, dim=-1, eps=1e-8)


def pairwise_distance(
    a: torch.Tensor, b: torch.Tensor, distance: Distance = "l2", transform: Transform = "none"
) -> torch.Tensor:
    """Distance between ``a[..., :]`` and ``b[..., :]`` (broadcast), one value per pair."""
    check_distance(distance, transform)
    return _compare(_transformed(a, distance, transform), _transformed(b, distance, transform), distance)


class _GatheredRowTransform(torch.autograd.Function):
    """``softmax`` (or ``log_softmax``) of ``gathered = x[rows]``, with its value cut from the
    transform of each row of ``x`` computed once. The backward is the one autograd runs for the
    transform of ``gathered``, so values and gradients equal the plain ops bit for bit."""

    @staticmethod
    def forward(ctx, gathered: torch.Tensor, transformed: torch.Tensor, rows: torch.Tensor, log: bool) -> torch.Tensor:
        value = transformed[rows]
        ctx.save_for_backward(value)
        ctx.log, ctx.dtype = log, gathered.dtype
        return value

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (value,) = ctx.saved_tensors
        backward = torch._log_softmax_backward_data if ctx.log else torch._softmax_backward_data
        return backward(grad, value, -1, ctx.dtype), None, None, None


def pairwise_distance_rows(
    outputs: torch.Tensor, rows_i: torch.Tensor, rows_j: torch.Tensor, distance: Distance = "l2",
    transform: Transform = "none",
) -> torch.Tensor:
    """``pairwise_distance(outputs[rows_i], outputs[rows_j], distance, transform)``, bit for bit.

    A graph has many more pairs than nodes (Cora: ~4 edges per node), and softmax over a few
    classes costs ~130 ns a row: the row-wise softmax is computed once per row of ``outputs``
    and gathered. The CPU softmax kernel treats each row on its own, so the gathered values
    are those of the softmax of the gathered rows. Element-wise transforms (``sigmoid``) may
    round differently at another position in memory, so they stay on the gathered rows.
    """
    check_distance(distance, transform)
    a, b = outputs[rows_i], outputs[rows_j]
    if transform != "softmax":
        return pairwise_distance(a, b, distance, transform)
    log = distance in ("kl", "jensen_shannon")
    with torch.no_grad():
        transformed = F.log_softmax(outputs, dim=-1) if log else F.softmax(outputs, dim=-1)
    return _compare(_GatheredRowTransform.apply(a, transformed, rows_i, log),
                    _GatheredRowTransform.apply(b, transformed, rows_j, log), distance)


def reduce_weighted(values: torch.Tensor, weights: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    r"""Reduces per-pair ``values`` with ``weights`` (same shape); NSL's reductions.

    ``sum_by_nonzero_weights`` (NSL default): :math:`\sum w d / \#\{w \neq 0\}`;
    ``mean_by_weight``: :math:`\sum w d / \sum w`; ``sum``: :math:`\sum w d`;
    ``mean``: :math:`\sum w d / \#\text{pairs}`. Pairs of weight 0 (padding) add nothing,
    and an empty or all-zero set reduces to 0 rather than NaN.
    """
    check_choice("reduction", reduction, Reduction)
    # where() rather than multiply: a padded pair may hold inf/NaN and must not leak.
    weighted = torch.where(weights != 0, weights * values, torch.zeros_like(values)).sum()
    if reduction == "sum":
        return weighted
    if reduction == "mean":
        denominator = torch.tensor(float(values.numel()), device=values.device)
    elif reduction == "mean_by_weight":
        denominator = weights.sum()
    else:
        denominator = (weights != 0).sum().to(values.dtype)
    return torch.where(denominator > 0, weighted / denominator.clamp_min(_EPS), weighted * 0)
