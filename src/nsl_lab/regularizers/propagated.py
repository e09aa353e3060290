"""Cross-entropy against labels propagated over the graph (Iscen et al. 2019)."""
from __future__ import annotations

import logging
import math
import time
from typing import Callable

import torch
import torch.nn.functional as F

from nsl_lab.batch import Batch
from nsl_lab.context import GraphData, Requirement, TrainingStep
from nsl_lab.errors import ConfigError, check_flag, check_integer, check_range
from nsl_lab.graphs.build import similarity_graph
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.graphs.propagation import label_propagation
from nsl_lab.modules.backbone import Output
from nsl_lab.regularizers.base import Regularizer

log = logging.getLogger(__name__)


class PropagatedLabelRegularizer(Regularizer):
    r"""Trains the unlabeled samples on labels propagated from the labeled ones over the graph.

    Once per fit, label propagation (:func:`nsl_lab.graphs.propagation.label_propagation`)
    spreads the training labels over the whole graph, giving scores :math:`F`; each reached
    sample gets the pseudo-label :math:`\hat y_i = \arg\max_c P_{ic}`, :math:`P_i = F_i / \sum_c F_{ic}`,
    a certainty :math:`\omega_i = 1 - H(P_i) / \log C` and a class weight
    :math:`\zeta_c = N / (C\, N_c)` (:math:`N_c` samples pseudo-labeled :math:`c`), as in
    "Label Propagation for Deep Semi-supervised Learning" (Iscen et al., CVPR 2019); the
    weights :math:`w_i = \omega_i \zeta_{\hat y_i} / \overline{\omega \zeta}` are scaled
    to mean 1 over the reached samples. Over the batch's unlabeled samples :math:`U`:

    .. math::
        \mathcal{R} = \lambda \frac{1}{|U|} \sum_{i \in U} w_i\, \mathrm{CE}(f(x_i), \hat y_i)

    With ``align_to_prior``, :math:`P` is first aligned with the class shares :math:`\pi` of
    the labeled samples (distribution alignment, as in ReMixMatch, Berthelot et al. 2020):
    :math:`P_{ic} \leftarrow P_{ic}\, \pi_c / \bar P_c` renormalised per row, :math:`\bar P`
    the mean over the reached samples, so that a drift of the propagated scores towards one
    class does not flip the pseudo-labels of borderline samples.

    The graph's knowledge reaches every sample in a few propagation steps, where the pairwise
    graph loss needs a labeled sample and its neighbour in the same batch. The labels are
    propagated at :meth:`setup` from the fit's :class:`~nsl_lab.context.GraphData` (its
    ``graph`` and ``train_labels``), and the batches must hold unlabeled samples
    (``data.include_unlabeled=true`` for mini-batched data; a full-graph batch holds every
    node).

    With ``feature_graph_from_epoch = e``, from epoch ``e`` on the labels are propagated
    again at the start of every epoch, over the data's graph joined with a top-``k`` cosine
    graph of the network's own penultimate embeddings :math:`h(x_i)` of every non-test
    sample (Iscen et al.'s iteration: a network trained on the first pseudo-labels may place
    same-class samples closer than the raw features did). It waits ``e`` epochs because an
    untrained network's graph knows less than the data's (:meth:`refresh`). Needs
    mini-batched data (``GraphData.batch_rows``: IMDB, custom).

    Args:
        multiplier: :math:`\lambda`.
        alpha: propagation's :math:`\alpha` (how far labels spread), in [0, 1).
        steps: propagation steps.
        min_certainty: pseudo-labels below this certainty get weight 0.
        warmup_epochs: ramp :math:`\lambda` up linearly over these first epochs.
        feature_graph_from_epoch: re-propagate over the data graph plus the network's
            feature graph from this epoch on (``None``: propagate once over the data graph).
        feature_graph_k: neighbours per sample in the feature graph.
        align_to_prior: before the argmax, align the propagated class shares with the
            labeled samples' (see above).
    """

    name = "propagated"

    def __init__(
        self,
        multiplier: float = 1.0,
        alpha: float = 0.9,
        steps: int = 50,
        min_certainty: float = 0.0,
        warmup_epochs: int = 0,
        feature_graph_from_epoch: int | None = None,
        feature_graph_k: int = 10,
        align_to_prior: bool = False,
    ) -> None:
        super().__init__(multiplier, warmup_epochs)
        self.alpha = float(check_range("alpha", alpha, 0.0, 1.0, high_inclusive=False))
        self.steps = check_integer("steps", steps, 1)
        self.min_certainty = float(check_range("min_certainty", min_certainty, 0.0, 1.0))
        self.feature_graph_from_epoch = check_integer("feature_graph_from_epoch", feature_graph_from_epoch, 0,
                                                      optional=True)
        self.feature_graph_k = check_integer("feature_graph_k", feature_graph_k, 1)
        self.align_to_prior = check_flag("align_to_prior", align_to_prior)
        # (pseudo-label [N], weight [N]) of every sample, from the last setup or refresh
        self._targets: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def requirements(self) -> frozenset[Requirement]:
        return frozenset({"graph", "unlabeled_in_batch"})

    @property
    def reads_labels(self) -> bool:
        return True  # it propagates the training labels

    def pseudo_labels(self, graph: NeighborGraph, train_labels: torch.Tensor, num_classes: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pseudo_label [N], weight [N])``: :math:`\\hat y` and :math:`w` (0 where unreached)."""
        scores = label_propagation(graph, train_labels, num_classes, self.alpha, self.steps)
        mass = scores.sum(1)
        reached = mass > 0
        probabilities = scores / mass.clamp_min(1e-12).unsqueeze(1)
        if self.align_to_prior and bool(reached.any()):
            labeled = train_labels[train_labels >= 0]
            prior = torch.bincount(labeled, minlength=num_classes).float().to(scores.device) / labeled.numel()
            aligned = probabilities * (prior / probabilities[reached].mean(0).clamp_min(1e-12))
            probabilities = torch.where(reached.unsqueeze(1), aligned / aligned.sum(1, keepdim=True).clamp_min(1e-12),
                                        probabilities)
        entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(1)
        certainty = (1 - entropy / math.log(num_classes)).clamp_min(0.0) if num_classes > 1 else torch.ones_like(mass)
        certainty = torch.where(reached & (certainty >= self.min_certainty), certainty, torch.zeros_like(certainty))
        pseudo = probabilities.argmax(1)
        counts = torch.bincount(pseudo[certainty > 0], minlength=num_classes).float()
        class_weight = torch.where(counts > 0, (counts.sum() / (num_classes * counts.clamp_min(1))), counts)
        weight = certainty * class_weight[pseudo]
        # Mean 1 over the reached samples, so that the multiplier alone sets the term's scale:
        # with two classes, entropy certainties are small (0.03 at 60:40, 0.28 at 80:20).
        mean = weight[reached].mean() if bool(reached.any()) else weight.new_ones(())
        return pseudo, weight / mean.clamp_min(1e-12)

    def feature_graph(self, data: GraphData, backbone: Callable[[Batch], Output]) -> NeighborGraph:
        """Top-``feature_graph_k`` cosine graph of the network's hidden layer on every sample
        outside the test split (no test input is seen in training)."""
        if data.batch_rows is None:
            raise ConfigError("feature_graph_from_epoch needs mini-batched data (IMDB or custom); "
                              "a full-graph batch has no per-row batches", "feature_graph_from_epoch")
        num_nodes = data.graph.num_nodes
        outside_test = torch.ones(num_nodes, dtype=torch.bool)
        outside_test[data.rows["test"]] = False
        nodes = outside_test.nonzero().flatten()
        hidden = torch.cat([backbone(data.batch_rows(chunk)).hidden.float().cpu()
                            for chunk in nodes.split(data.eval_batch_size)])
        edge_index, edge_weight = similarity_graph(hidden, min(self.feature_graph_k, max(nodes.numel() - 1, 1)))
        # Cosine similarities of near neighbours are positive in practice; propagation needs >= 0.
        return NeighborGraph(nodes[edge_index], num_nodes, edge_weight.clamp_min(0.0))

    def setup(self, data: GraphData) -> None:
        if data.graph is None:
            raise ConfigError("the propagated regularizer needs a graph; this data has none (set data.graph)")
        self._targets = self.pseudo_labels(data.graph, data.train_labels, data.num_classes)

    def refresh_at(self, epoch: int) -> bool:
        return self.feature_graph_from_epoch is not None and epoch >= self.feature_graph_from_epoch

    def refresh(self, data: GraphData, backbone: Callable[[Batch], Output]) -> None:
        """Propagates again over the data's graph joined with the network's feature graph."""
        began = time.perf_counter()
        features = self.feature_graph(data, backbone)
        self._targets = self.pseudo_labels(data.graph.join(features), data.train_labels, data.num_classes)
        log.info("propagated: labels propagated over the data graph + a feature graph of %d edges (%.1f s)",
                 features.num_edges, time.perf_counter() - began)

    def targets(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pseudo_label [N], weight [N])`` on ``device``."""
        if self._targets is None:
            raise ConfigError("the propagated regularizer has no labels yet: call setup(graph_data) first "
                              "(the learner does at fit start)")
        if self._targets[0].device != torch.device(device):
            self._targets = (self._targets[0].to(device), self._targets[1].to(device))
        return self._targets

    def loss(self, step: TrainingStep) -> torch.Tensor | None:
        output, batch = step.output, step.batch
        pseudo, weight = self.targets(output.logits.device)
        index = batch.index.to(pseudo.device)
        rows = ~batch.labeled
        if not bool(rows.any()):
            return None
        losses = F.cross_entropy(output.logits[rows], pseudo[index[rows]], reduction="none")
        return (weight[index[rows]] * losses).mean()

    def extra_repr(self) -> str:
        feature = (f", feature_graph_from_epoch={self.feature_graph_from_epoch}, feature_graph_k={self.feature_graph_k}"
                   if self.feature_graph_from_epoch is not None else "")
        return (f"{super().extra_repr()}, alpha={self.alpha}, steps={self.steps}, "
                f"min_certainty={self.min_certainty}, align_to_prior={self.align_to_prior}{feature}")
