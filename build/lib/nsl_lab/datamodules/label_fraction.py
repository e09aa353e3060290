"""Which training samples keep their labels."""
from __future__ import annotations

import torch

from nsl_lab.errors import ConfigError, check_integer, check_range


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
