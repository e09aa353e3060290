"""A graph-free student distilled from a graph teacher (GLNN, Zhang et al. 2022; teacher: GRAND, Feng et al. 2020)."""
from __future__ import annotations

import logging
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from nsl_lab.context import GraphData, Requirement, TrainingStep
from nsl_lab.errors import ConfigError, check_integer, check_range
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.regularizers.base import Regularizer
from nsl_lab.regularizers.contrastive import normalized_adjacency_matrix

log = logging.getLogger(__name__)


def train_grand_teacher(
    features: torch.Tensor,
    graph: NeighborGraph,
    train_labels: torch.Tensor,
    num_classes: int,
    *,
    hidden: int = 64,
    hops: int = 8,
    augmentations: int = 4,
    drop_node: float = 0.5,
    consistency: float = 1.0,
    sharpen_temperature: float = 0.5,
    input_dropout: float = 0.5,
    dropout: float = 0.5,
    lr: float = 0.01,
    weight_decay: float = 5e-4,
    epochs: int = 1000,
    seed: int = 0,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""Trains a GRAND teacher on the whole graph and returns its class probabilities, ``[N, C]``.

    GRAND ("Graph Random Neural Network for Semi-Supervised Learning on Graphs", Feng et al.,
    NeurIPS 2020) averages :math:`\hat A^k` over :math:`k = 0..K` (``hops``) of node features
    whose rows are dropped at random (DropNode, rate :math:`\delta`, survivors scaled by
    :math:`1/(1-\delta)`), feeds the result to a two-layer MLP, and over :math:`S`
    (``augmentations``) such draws minimises

    .. math::
        \frac1S \sum_s \mathrm{CE}(Z^{(s)}_L, Y_L) + \lambda_c\, \frac1S \sum_s
        \frac1N \big\lVert \bar Z' - Z^{(s)} \big\rVert_2^2

    with :math:`Z^{(s)}` the softmax outputs and :math:`\bar Z'` their mean sharpened at
    temperature :math:`T` (``sharpen_temperature``), held constant. At inference the
    propagation keeps every node. :math:`\hat A = D^{-1/2}(A+I)D^{-1/2}`.

    One deliberate difference: the MLP's first (linear) layer is applied before the
    propagation, which is linear too, so the product is the same and the propagation carries
    ``hidden`` columns instead of the input width (~20x less work on Cora); the input dropout
    therefore drops entries of :math:`X`, where GRAND drops entries of the propagated features.
    Trained for a fixed number of epochs: the teacher reads no validation label.

    Runs under a forked RNG seeded with ``seed`` (the CPU's, and the device's when the labels
    are on a GPU): the caller's random streams are untouched.

    Args:
        features: ``[N, d]`` node features, dense or sparse COO (kept as they come).
        graph: the node graph.
        train_labels: ``[N]`` class ids, ``-1`` where unlabeled.
        num_classes: :math:`C`.
        hidden: the MLP's hidden width.
        hops: :math:`K`.
        augmentations: :math:`S`.
        drop_node: :math:`\delta`.
        consistency: :math:`\lambda_c`.
        sharpen_temperature: :math:`T`.
        input_dropout, dropout: dropout on the features and on the hidden layer.
        lr, weight_decay: Adam's.
        epochs: full-graph steps.
        seed: the teacher's own RNG seed.
        progress: show a progress bar (``None``: when stderr is a terminal).
    """
    labeled = (train_labels >= 0).nonzero().flatten()
    if labeled.numel() == 0:
        raise ConfigError("the GRAND teacher needs labeled nodes; these training labels are all -1")
    device = train_labels.device
    x = (features.coalesce() if features.is_sparse else features).float().to(device)
    adjacency = normalized_adjacency_matrix(graph.to(device), "symmetric")
    n = graph.num_nodes
    if x.shape[0] != n:
        raise ConfigError(f"the GRAND teacher got features for {x.shape[0]} nodes and a graph of {n}")
    y = train_labels[labeled]

    def propagate(z: torch.Tensor) -> torch.Tensor:
        total, power = z, z
        for _ in range(hops):
            power = torch.sparse.mm(adjacency, power)
            total = total + power
        return total / (hops + 1)

    # torch.manual_seed would reseed every GPU's stream too, and fork_rng restores only the listed ones.
    gpu = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpu):
        torch.default_generator.manual_seed(seed)
        if gpu:
            with torch.cuda.device(gpu[0]):
                torch.cuda.manual_seed(seed)
        first, second = nn.Linear(x.shape[1], hidden).to(device), nn.Linear(hidden, num_classes).to(device)
        optimizer = torch.optim.Adam([*first.parameters(), *second.parameters()], lr=lr, weight_decay=weight_decay)

        def project(training: bool) -> torch.Tensor:
            """``[N, hidden]``: X W, with input dropout in training."""
            if not x.is_sparse:
                return F.dropout(x, input_dropout, training) @ first.weight.t()
            inputs = x
            if training and input_dropout > 0:  # drop stored entries only: the zeros stay zeros either way
                values = x.values()
                mask = (torch.rand_like(values) >= input_dropout).to(values.dtype) / (1 - input_dropout)
                inputs = torch.sparse_coo_tensor(x.indices(), values * mask, x.shape, check_invariants=False)
            return torch.sparse.mm(inputs, first.weight.t())

        def classify(propagated: torch.Tensor, training: bool) -> torch.Tensor:
            return second(F.dropout(F.relu(propagated + first.bias), dropout, training))

        show = sys.stderr.isatty() if progress is None else progress
        for _ in tqdm(range(epochs), desc="GRAND teacher", unit="epoch", disable=not show, leave=False):
            optimizer.zero_grad()
            # The S draws side by side as columns: one propagation instead of S (on Cora the
            # propagation takes ~40% less time, an epoch ~20% less).
            kept = [project(True) * ((torch.rand(n, 1, device=device) >= drop_node).float() / (1 - drop_node))
                    for _ in range(augmentations)]
            propagated = propagate(torch.cat(kept, dim=1)).view(n, augmentations, hidden).transpose(0, 1)
            log_probabilities = F.log_softmax(classify(propagated, True), dim=-1)  # [S, N, C]
            supervised = F.nll_loss(log_probabilities[:, labeled].reshape(-1, num_classes), y.repeat(augmentations))
            probabilities = log_probabilities.exp()
            sharpened = probabilities.mean(0).pow(1 / sharpen_temperature)
            sharpened = (sharpened / sharpened.sum(1, keepdim=True)).detach()
            agreement = ((probabilities - sharpened) ** 2).sum(-1).mean()
            (supervised + consistency * agreement).backward()
            optimizer.step()
        with torch.no_grad():
            return F.softmax(classify(propagate(project(False)), False), dim=1)


class DistillationRegularizer(Regularizer):
    r"""Matches the network's predictions to a graph teacher's on every sample of the batch.

    At :meth:`setup` a GRAND teacher (:func:`train_grand_teacher`), which propagates over the
    graph, is trained on the fit's labeled samples; its class probabilities :math:`p^T_i` are
    kept for the fit. The term is the distillation loss of "Graph-less Neural Networks"
    (GLNN, Zhang et al., ICLR 2022) over the batch's rows :math:`B`, labeled or not:

    .. math::
        \mathcal{R} = \lambda\, \tau^2 \frac1{|B|} \sum_{i \in B}
        \mathrm{KL}\big(p^T_i \,\big\|\, \mathrm{softmax}(f(x_i)/\tau)\big)

    The student needs no graph at inference, and it is trained on the teacher's predictions
    for the unlabeled samples, validation and test included when the data is transductive
    (their labels are never read): this is GLNN's transductive setting, where the student
    comes close to the teacher. With ``data.transductive=false`` the graph has no edge to the
    evaluation nodes, so the teacher knows no more of them than their features.

    Needs the node features of the whole graph (:attr:`GraphData.features`, or every row
    through ``batch_rows``, images flattened) and the batches' unlabeled rows.

    Args:
        multiplier: :math:`\lambda`.
        temperature: :math:`\tau`, softening the student's logits.
        seed: the teacher's RNG seed (the presets pass the run's ``seed``).
        teacher_epochs: the teacher's full-graph steps.
        teacher_hidden, teacher_hops, teacher_augmentations, teacher_drop_node,
        teacher_consistency: GRAND's hidden width, :math:`K`, :math:`S`, :math:`\delta`,
            :math:`\lambda_c` (:func:`train_grand_teacher`). GRAND's Cora settings, except a
            hidden width of 64 (GRAND: 32) and 1000 fixed epochs (GRAND: up to 2000 with early
            stopping on validation), chosen on Cora's validation nodes at full labels.
        warmup_epochs: ramp :math:`\lambda` up linearly over these first epochs.

    Shapes: teacher probabilities ``[N, C]``, kept for the fit.
    """

    name = "distill"
    input_kinds = frozenset({"features", "images"})

    def __init__(
        self,
        multiplier: float = 1.0,
        temperature: float = 1.0,
        seed: int = 0,
        teacher_epochs: int = 1000,
        teacher_hidden: int = 64,
        teacher_hops: int = 8,
        teacher_augmentations: int = 4,
        teacher_drop_node: float = 0.5,
        teacher_consistency: float = 1.0,
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(multiplier, warmup_epochs)
        self.temperature = float(check_range("temperature", temperature, 0.0, low_inclusive=False))
        self.seed = check_integer("seed", seed, 0)
        self.teacher_settings = {
            "epochs": check_integer("teacher_epochs", teacher_epochs, 1),
            "hidden": check_integer("teacher_hidden", teacher_hidden, 1),
            "hops": check_integer("teacher_hops", teacher_hops, 0),
            "augmentations": check_integer("teacher_augmentations", teacher_augmentations, 1),
            "drop_node": float(check_range("teacher_drop_node", teacher_drop_node, 0.0, 1.0, high_inclusive=False)),
            "consistency": float(check_range("teacher_consistency", teacher_consistency, 0.0)),
        }
        self._teacher: torch.Tensor | None = None
        self._taught: tuple[object, object] | None = None  # (graph, labels) the teacher was trained on

    @property
    def requirements(self) -> frozenset[Requirement]:
        return frozenset({"graph", "unlabeled_in_batch"})

    @property
    def reads_labels(self) -> bool:
        return True  # the teacher trains on the labels

    @staticmethod
    def node_features(data: GraphData) -> torch.Tensor:
        """Every row's input features, ``[N, d]``."""
        if data.features is not None:
            return data.features
        if data.batch_rows is None:
            raise ConfigError("the distill regularizer needs every node's features, and this data provides none")
        rows = torch.arange(data.graph.num_nodes)
        parts = [data.batch_rows(chunk).x for chunk in rows.split(data.eval_batch_size)]
        if not parts[0].is_floating_point():
            raise ConfigError(f"the distill regularizer's teacher propagates feature inputs, and this data gives "
                              f"{parts[0].dtype} (tokens)", "regularizer.distill")
        return torch.cat([part.to_dense() if part.is_sparse else part for part in parts]).flatten(1)  # images too

    def setup(self, data: GraphData) -> None:
        if data.graph is None:
            raise ConfigError("the distill regularizer needs a graph; this data has none (set data.graph)")
        if self._taught is not None and self._taught[0] is data.graph and self._taught[1] is data.train_labels:
            return  # set up twice in one fit (DDP sizes lazy parameters first): the teacher is the same
        began = time.perf_counter()
        self._teacher = train_grand_teacher(self.node_features(data), data.graph, data.train_labels.cpu(),
                                            data.num_classes, seed=self.seed, **self.teacher_settings)
        self._taught = (data.graph, data.train_labels)
        log.info("distill: GRAND teacher trained on %d labeled nodes in %.1f s",
                 int((data.train_labels >= 0).sum()), time.perf_counter() - began)

    def teacher(self, device: torch.device) -> torch.Tensor:
        """The teacher's class probabilities ``[N, C]`` on ``device``."""
        if self._teacher is None:
            raise ConfigError("the distill regularizer has no teacher yet: call setup(graph_data) first "
                              "(the learner does at fit start)")
        if self._teacher.device != torch.device(device):
            self._teacher = self._teacher.to(device)
        return self._teacher

    def loss(self, step: TrainingStep) -> torch.Tensor | None:
        logits = step.output.logits
        target = self.teacher(logits.device)[step.batch.index.to(logits.device)]
        log_student = F.log_softmax(logits.float() / self.temperature, dim=1)
        return F.kl_div(log_student, target, reduction="batchmean") * self.temperature ** 2

    def extra_repr(self) -> str:
        teacher = ", ".join(f"teacher_{key}={value}" for key, value in self.teacher_settings.items())
        return f"{super().extra_repr()}, temperature={self.temperature}, seed={self.seed}, {teacher}"
