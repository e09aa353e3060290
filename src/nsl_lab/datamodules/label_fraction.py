"""Which training samples keep their labels."""
from __future__ import annotations

from typing import Literal

import torch

from nsl_lab.errors import ConfigError, check_choice, check_integer, check_range

#: how a label fraction is drawn: per class (>= 1 each), or uniformly over the pool
LabelSampling = Literal["stratified", "uniform"]


def check_label_setting(label_frac: float | None, labels_per_class: int | None) -> None:
    if label_frac is not None and labels_per_class is not None:
        raise ConfigError(
            f"data.label_frac={label_frac!r} and data.labels_per_class={labels_per_class!r} are both set; "
            "set one of them (or neither, for the dataset's standard split)"
        )
    if label_frac is not None:
        check_range("data.label_frac", label_frac, 0.0, 1.0, low_inclusive=False)
    if labels_per_class is not None:
        check_integer("data.labels_per_class", labels_per_class, 1)


def stratified_label_subset(
    labels: torch.Tensor,
    pool: torch.Tensor,
    seed: int,
    label_frac: float | None = None,
    labels_per_class: int | None = None,
) -> torch.Tensor:
    """Sorted ids of the pool samples that keep their label.

    Per class ``c`` with ``n_c`` pool samples, keeps ``max(1, round(label_frac * n_c))``
    (or ``min(labels_per_class, n_c)``) samples drawn with a generator seeded by ``seed``,
    so every class present in the pool keeps at least one label and the same seed always
    picks the same samples.

    Args:
        labels: ``[N]`` class ids.
        pool: ids (or a boolean mask over ``labels``) of the samples that may be labeled.
        seed: seed of the draw.
        label_frac: fraction in ``(0, 1]`` to keep per class.
        labels_per_class: alternatively, a fixed count per class.
    """
    check_label_setting(label_frac, labels_per_class)
    if label_frac is None and labels_per_class is None:
        raise ConfigError("give data.label_frac or data.labels_per_class")
    pool = torch.as_tensor(pool)
    if pool.dtype == torch.bool:
        pool = pool.nonzero().flatten()
    generator = torch.Generator().manual_seed(int(seed))
    pool_labels = labels[pool].cpu()
    chosen = []
    for c in torch.unique(pool_labels).tolist():  # a loop over classes, not samples
        members = pool[(pool_labels == c).nonzero().flatten()]
        if label_frac is not None:
            count = max(1, int(round(label_frac * members.numel())))
        else:
            count = min(int(labels_per_class), members.numel())
        order = torch.randperm(members.numel(), generator=generator)
        chosen.append(members[order[:count]])
    return torch.cat(chosen).sort().values


def uniform_label_subset(labels: torch.Tensor, pool: torch.Tensor, seed: int, label_frac: float) -> torch.Tensor:
    """Sorted ids of ``max(1, round(label_frac * |pool|))`` pool samples drawn uniformly (seeded),
    as papers that sample labels without stratifying do. Every class of the pool must still
    get a label: otherwise one line names the class and the remedies."""
    check_range("data.label_frac", label_frac, 0.0, 1.0, low_inclusive=False)
    pool = torch.as_tensor(pool)
    if pool.dtype == torch.bool:
        pool = pool.nonzero().flatten()
    count = max(1, int(round(label_frac * pool.numel())))
    order = torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(int(seed)))
    chosen = pool[order[:count]].sort().values
    missing = sorted(set(labels[pool].tolist()) - set(labels[chosen].tolist()))
    if missing:
        raise ConfigError(f"data.label_sampling=uniform drew no label of class {missing[0]} at data.label_frac="
                          f"{label_frac} (seed {seed}, {count} labels); raise label_frac, change the seed, or use "
                          "data.label_sampling=stratified (>= 1 label per class)")
    return chosen


def label_subset(labels: torch.Tensor, pool: torch.Tensor, seed: int, label_frac: float | None = None,
                 labels_per_class: int | None = None, sampling: LabelSampling = "stratified") -> torch.Tensor:
    """:func:`stratified_label_subset` or, with ``sampling="uniform"``, :func:`uniform_label_subset`."""
    check_choice("data.label_sampling", sampling, LabelSampling)
    if sampling == "stratified":
        return stratified_label_subset(labels, pool, seed, label_frac, labels_per_class)
    if label_frac is None:
        raise ConfigError("data.label_sampling=uniform draws data.label_frac of the pool; set label_frac "
                          "(labels_per_class is a per-class count: use label_sampling=stratified with it)")
    return uniform_label_subset(labels, pool, seed, label_frac)
