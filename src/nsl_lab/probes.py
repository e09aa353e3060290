"""Probes: classifiers trained on a frozen encoder's embeddings, at many label settings.

After label-free pretraining (:class:`~nsl_lab.modules.RepresentationLearner`) one encoder
serves every label fraction and seed: the embeddings are computed once, and each probe
trains in well under a second. ``logreg`` is a multinomial logistic regression (scikit-learn's
L-BFGS) whose inverse regularisation ``C`` is chosen on the validation rows; ``knn`` a cosine
k-nearest-neighbour vote whose ``k`` is chosen likewise. Embeddings are L2-normalised first.
The test rows choose nothing.

    from nsl_lab.probes import probe_encoder
    metrics = probe_encoder(backbone, datamodule.labeled_splits(), label_fracs=[0.01, 1.0, "standard"])

Metric keys: ``probe/<kind>/<setting>/seed=<s>/{val,test}/acc`` for each draw, and
``probe/<kind>/<setting>/{val,test}/acc`` (mean) with ``.../test/acc_std`` over the seeds,
where ``<setting>`` is ``label_frac=<f>`` or ``standard`` (the dataset's own split, one draw).
"""
from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from statistics import fmean, stdev
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nsl_lab.context import LabeledSplits, run_backbone
from nsl_lab.datamodules.label_fraction import label_subset
from nsl_lab.errors import ConfigError, check_choice, check_integer, check_range
from nsl_lab.modules.backbone import Backbone

ProbeKind = Literal["logreg", "knn"]
Layer = Literal["hidden", "logits"]
STANDARD = "standard"
DEFAULT_C = (0.01, 0.1, 1.0, 10.0, 100.0)
DEFAULT_K = (1, 5, 10, 20, 50)
KNN_CHUNK_ROWS = 4096


@dataclass(frozen=True)
class ProbeResult:
    """Accuracy of one probe on the validation and test rows, and the setting validation chose."""

    val_acc: float
    test_acc: float
    chosen: float


@torch.no_grad()
def embed_rows(backbone: Backbone, splits: LabeledSplits, layer: Layer = "hidden",
               device: torch.device | str = "cpu") -> torch.Tensor:
    """``[N, d]``: every row's embedding (the backbone's ``hidden`` output, or its logits) in
    eval mode on ``device``; the backbone's mode and device are restored. Rows that
    ``splits.batches`` leaves out stay zero."""
    check_choice("probe.layer", layer, Layer)
    was_training = backbone.training
    first = next(backbone.parameters(), None)
    original_device = first.device if first is not None else torch.device("cpu")
    backbone.eval().to(device)
    try:
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        for batch in splits.batches():
            output = run_backbone(backbone, batch.to(device))
            values = output.hidden if layer == "hidden" else output.logits
            if values is None:
                raise ConfigError(f"probe.layer={layer!r}: {type(backbone).__name__} returns no hidden layer; "
                                  "use probe.layer=logits", "probe.layer")
            parts.append((batch.index.cpu(), values.float().cpu()))
    finally:
        backbone.train(was_training).to(original_device)
    num_rows = splits.labels.numel()
    embeddings = torch.zeros(num_rows, parts[0][1].shape[1])
    for index, values in parts:
        embeddings[index] = values
    return embeddings


def _accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    return float((predicted == labels).mean()) if labels.size else float("nan")


def logistic_probe(embeddings: torch.Tensor, labels: torch.Tensor, train: torch.Tensor, val: torch.Tensor,
                   test: torch.Tensor, c_grid: Sequence[float] = DEFAULT_C) -> ProbeResult:
    """Multinomial logistic regression on ``embeddings[train]``; ``C`` (inverse L2 strength)
    is the grid value with the best validation accuracy (the smaller on ties).

    Shapes: ``embeddings [N, d]``, ``labels [N]``, row ids ``train``, ``val``, ``test``."""
    from sklearn.linear_model import LogisticRegression  # here only: ~1 s of import for probe runs alone

    x = F.normalize(embeddings.float(), dim=1).numpy()
    y = labels.numpy()
    classes = np.unique(y[train])
    if classes.size < 2:  # nothing to separate: the one class seen
        return ProbeResult(_accuracy(np.full(len(val), classes[0]), y[val]),
                           _accuracy(np.full(len(test), classes[0]), y[test]), float("nan"))
    best: ProbeResult | None = None
    for c in sorted(float(c) for c in c_grid):
        with warnings.catch_warnings():  # a probe that stops at max_iter is still a fair probe
            warnings.simplefilter("ignore")
            model = LogisticRegression(C=c, max_iter=1000).fit(x[train], y[train])
        val_acc = _accuracy(model.predict(x[val]), y[val])
        if best is None or val_acc > best.val_acc:
            best = ProbeResult(val_acc, _accuracy(model.predict(x[test]), y[test]), c)
    assert best is not None
    return best


def knn_probe(embeddings: torch.Tensor, labels: torch.Tensor, train: torch.Tensor, val: torch.Tensor,
              test: torch.Tensor, k_grid: Sequence[int] = DEFAULT_K) -> ProbeResult:
    """Cosine k-nearest-neighbour vote over ``embeddings[train]`` (each vote weighted by its
    similarity); ``k`` is the grid value with the best validation accuracy (the smaller on ties)."""
    x = F.normalize(embeddings.float(), dim=1)
    num_classes = int(labels.max()) + 1

    def predict(rows: torch.Tensor, k: int) -> np.ndarray:
        predicted = []
        for chunk in rows.split(KNN_CHUNK_ROWS):  # bounded memory: [chunk, train] similarities at a time
            similarity, nearest = (x[chunk] @ x[train].t()).topk(min(k, train.numel()), dim=1)
            votes = torch.zeros(chunk.numel(), num_classes).scatter_add_(1, labels[train][nearest], similarity)
            predicted.append(votes.argmax(1))
        return torch.cat(predicted).numpy() if predicted else np.zeros(0, dtype=np.int64)

    y = labels.numpy()
    best: ProbeResult | None = None
    for k in sorted(int(k) for k in k_grid):
        val_acc = _accuracy(predict(val, k), y[val])
        if best is None or val_acc > best.val_acc:
            best = ProbeResult(val_acc, _accuracy(predict(test, k), y[test]), float(k))
    assert best is not None
    return best


PROBES = {"logreg": logistic_probe, "knn": knn_probe}


def setting_name(label_frac: float | str) -> str:
    """``label_frac=<f>`` or ``standard``: the metric-key part of a label setting."""
    return STANDARD if label_frac == STANDARD else f"label_frac={float(label_frac):g}"


def parse_label_fracs(label_fracs: Sequence[float | str]) -> list[float | str]:
    """Label fractions in ``(0, 1]`` and ``standard``, checked, in the given order (a single
    value counts as a list of one)."""
    if isinstance(label_fracs, (str, int, float)) or label_fracs is None:
        label_fracs = [label_fracs]
    parsed: list[float | str] = []
    for value in label_fracs:
        if value == STANDARD or value is None:
            parsed.append(STANDARD)
            continue
        try:
            fraction = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"probe.label_fracs has {value!r}; allowed: fractions in (0, 1] and 'standard' "
                              "(the dataset's own split)", "probe.label_fracs") from None
        parsed.append(check_range("probe.label_fracs", fraction, 0.0, 1.0, low_inclusive=False))
    return parsed


def check_probe_settings(
    label_fracs: Sequence[float | str] = (STANDARD,),
    seeds: Sequence[int] = (0,),
    kinds: Sequence[ProbeKind] = ("logreg",),
    layer: Layer = "hidden",
    c_grid: Sequence[float] = DEFAULT_C,
    k_grid: Sequence[int] = DEFAULT_K,
) -> dict[str, Any]:
    """Every probe setting checked (one line naming the first bad value) and normalised, so a
    run can check them all before it pretrains."""
    settings = {"label_fracs": parse_label_fracs(label_fracs), "layer": check_choice("probe.layer", layer, Layer)}
    examples = {"seeds": "[0,1,2]", "kinds": "[logreg,knn]", "c_grid": "[0.1,1,10]", "k_grid": "[5,10,20]"}
    for name, values in (("seeds", seeds), ("kinds", kinds), ("c_grid", c_grid), ("k_grid", k_grid)):
        if isinstance(values, (str, int, float)) or not list(values):
            raise ConfigError(f"probe.{name}={values!r} must be a non-empty list, e.g. probe.{name}={examples[name]}",
                              f"probe.{name}")
    settings["seeds"] = [check_integer("probe.seeds", seed, 0) for seed in seeds]
    settings["kinds"] = [check_choice("probe.kinds", kind, ProbeKind) for kind in kinds]
    settings["c_grid"] = [float(check_range("probe.c_grid", c, 0.0, low_inclusive=False)) for c in c_grid]
    settings["k_grid"] = [check_integer("probe.k_grid", k, 1) for k in k_grid]
    return settings


def probe_train_rows(splits: LabeledSplits, setting: float | str, seed: int) -> torch.Tensor:
    """The rows a probe at ``setting`` (a label fraction or ``standard``) and ``seed`` trains
    on: drawn from ``splits.pool`` as the datamodule draws its own (same function, same seed)."""
    if setting == STANDARD:
        if splits.standard is None:
            raise ConfigError("probe.label_fracs has 'standard', and this dataset has no standard split",
                              "probe.label_fracs")
        return splits.standard
    return label_subset(splits.labels.cpu(), splits.pool, int(seed), float(setting), None, splits.label_sampling)


def probe_embeddings(
    embeddings: torch.Tensor,
    splits: LabeledSplits,
    label_fracs: Sequence[float | str] = (STANDARD,),
    seeds: Sequence[int] = (0,),
    kinds: Sequence[ProbeKind] = ("logreg",),
    c_grid: Sequence[float] = DEFAULT_C,
    k_grid: Sequence[int] = DEFAULT_K,
    progress: bool | None = None,
) -> dict[str, float]:
    """Every probe kind at every label setting x seed, as flat metrics (module docstring).

    A label setting's training rows are :func:`probe_train_rows`; ``standard`` is used once
    (skipped, with no key, when the dataset has no standard split).
    """
    checked = check_probe_settings(label_fracs, seeds, kinds, c_grid=c_grid, k_grid=k_grid)
    labels = splits.labels.cpu()
    work = [(setting, seed) for setting in checked["label_fracs"]
            if setting != STANDARD or splits.standard is not None
            for seed in (checked["seeds"][:1] if setting == STANDARD else checked["seeds"])]
    bar = tqdm(work, desc="probes", unit="draw", disable=not (sys.stderr.isatty() if progress is None else progress))
    metrics: dict[str, float] = {}
    results: dict[tuple[str, str], list[ProbeResult]] = {}
    for setting, seed in bar:
        train = probe_train_rows(splits, setting, seed)
        for kind in checked["kinds"]:
            grid = checked["c_grid"] if kind == "logreg" else checked["k_grid"]
            result = PROBES[kind](embeddings, labels, train.cpu(), splits.val.cpu(), splits.test.cpu(), grid)
            prefix = f"probe/{kind}/{setting_name(setting)}"
            metrics[f"{prefix}/seed={seed}/val/acc"] = result.val_acc
            metrics[f"{prefix}/seed={seed}/test/acc"] = result.test_acc
            results.setdefault((kind, prefix), []).append(result)
    for (_, prefix), draws in results.items():
        tests = [r.test_acc for r in draws]
        metrics[f"{prefix}/val/acc"] = fmean(r.val_acc for r in draws)
        metrics[f"{prefix}/test/acc"] = fmean(tests)
        metrics[f"{prefix}/test/acc_std"] = stdev(tests) if len(tests) > 1 else 0.0
    return metrics


def probe_encoder(
    backbone: Backbone,
    splits: LabeledSplits,
    label_fracs: Sequence[float | str] = (STANDARD,),
    seeds: Sequence[int] = (0,),
    kinds: Sequence[ProbeKind] = ("logreg",),
    layer: Layer = "hidden",
    c_grid: Sequence[float] = DEFAULT_C,
    k_grid: Sequence[int] = DEFAULT_K,
    own_train: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    progress: bool | None = None,
) -> dict[str, float]:
    """Embeds every row once with the frozen ``backbone``, then :func:`probe_embeddings`.

    With ``own_train`` (the rows a run's own label setting keeps) ``val/acc`` and ``test/acc``
    are the logistic probe trained on exactly those rows: the run's headline figures.
    ``probe/seconds`` is the wall time of the embedding and every probe.
    """
    start = time.perf_counter()
    embeddings = embed_rows(backbone, splits, layer, device)
    metrics = probe_embeddings(embeddings, splits, label_fracs, seeds, kinds, c_grid, k_grid, progress)
    if own_train is not None:
        own = logistic_probe(embeddings, splits.labels.cpu(), own_train.cpu(), splits.val.cpu(), splits.test.cpu(),
                             c_grid)
        metrics["val/acc"], metrics["test/acc"] = own.val_acc, own.test_acc
    metrics["probe/seconds"] = round(time.perf_counter() - start, 4)
    return metrics
