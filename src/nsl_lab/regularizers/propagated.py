"""Cross-entropy against labels propagated over the graph (Iscen et al. 2019)."""
from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from nsl_lab.batch import Batch
from nsl_lab.errors import ConfigError, check_integer, check_range
from nsl_lab.graphs.build import similarity_graph
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.graphs.propagation import label_propagation
from nsl_lab.modules.output import Output
from nsl_lab.regularizers.base import Regularizer

if TYPE_CHECKING:
    from nsl_lab.modules.learner import StructuredLearner

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
    graph loss needs a labeled sample and its neighbour in the same batch. The datamodule
    must hold ``graph`` and ``train_labels`` (the training labels, ``-1`` elsewhere), and
    the batches must hold unlabeled samples (``data.include_unlabeled=true`` for
    mini-batched data; a full-graph batch holds every node).

    With ``feature_graph_from_epoch = e``, from epoch ``e`` on the labels are propagated
    again at the start of every epoch, over the data's graph joined with a top-``k`` cosine
    graph of the network's own penultimate embeddings :math:`h(x_i)` of every non-test
    sample (Iscen et al.'s iteration: a network trained on the first pseudo-labels may place
    same-class samples closer than the raw features did). It waits ``e`` epochs because an
    untrained network's graph knows less than the data's. Needs a mini-batched datamodule
    (``rows`` and ``rows_batch``: IMDB, custom).

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
        self.alpha = float(check_range("propagated.alpha", alpha, 0.0, 1.0, high_inclusive=False))
        self.steps = check_integer("propagated.steps", steps, 1)
        self.min_certainty = float(check_range("propagated.min_certainty", min_certainty, 0.0, 1.0))
        self.feature_graph_from_epoch = (None if feature_graph_from_epoch is None else
                                         check_integer("propagated.feature_graph_from_epoch", feature_graph_from_epoch, 0))
        self.feature_graph_k = check_integer("propagated.feature_graph_k", feature_graph_k, 1)
        self.align_to_prior = bool(align_to_prior)
        # (data graph, train labels, epoch of the feature graph or -1, pseudo-labels, weights)
        self._cache: tuple[NeighborGraph, torch.Tensor, int, torch.Tensor, torch.Tensor] | None = None

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

    def feature_graph(self, learner: "StructuredLearner", datamodule) -> NeighborGraph:
        """Top-``feature_graph_k`` cosine graph of the network's penultimate embeddings of
        every sample outside the test split (no test input is seen in training)."""
        if not (hasattr(datamodule, "rows") and hasattr(datamodule, "rows_batch")):
            raise ConfigError("propagated.feature_graph_from_epoch needs mini-batched data (IMDB or custom: "
                              f"a datamodule with rows and rows_batch), got {type(datamodule).__name__}")
        num_nodes = datamodule.graph.num_nodes
        outside_test = torch.ones(num_nodes, dtype=torch.bool)
        outside_test[datamodule.rows["test"]] = False
        nodes = outside_test.nonzero().flatten()
        was_training = learner.training
        learner.eval()
        with torch.no_grad():
            hidden = torch.cat([
                learner(datamodule.rows_batch(chunk, datamodule.train_labels).to(learner.device)).hidden.float().cpu()
                for chunk in nodes.split(datamodule.eval_batch_size)
            ])
        learner.train(was_training)
        edge_index, edge_weight = similarity_graph(hidden, min(self.feature_graph_k, max(nodes.numel() - 1, 1)))
        # Cosine similarities of near neighbours are positive in practice; propagation needs >= 0.
        return NeighborGraph(nodes[edge_index], num_nodes, edge_weight.clamp_min(0.0))

    def targets(self, learner: "StructuredLearner", device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        datamodule = getattr(learner._trainer, "datamodule", None) if learner._trainer is not None else None
        graph = getattr(datamodule, "graph", None)
        train_labels = getattr(datamodule, "train_labels", None)
        if graph is None or train_labels is None:
            raise ConfigError("the propagated regularizer needs a datamodule with a graph and train_labels "
                              "(Planetoid, IMDB or custom data with data.graph set)")
        epoch = int(learner.current_epoch)
        start = self.feature_graph_from_epoch
        feature_epoch = epoch if start is not None and epoch >= start else -1
        # Keyed on the graph and label objects themselves, so a new split never hits a stale entry;
        # with a feature graph, also on the epoch (computed at the first step of each epoch, also after a resume).
        if (self._cache is None or self._cache[0] is not graph or self._cache[1] is not train_labels
                or self._cache[2] != feature_epoch):
            propagation_graph = graph
            if feature_epoch >= 0:
                began = time.perf_counter()
                features = self.feature_graph(learner, datamodule)
                propagation_graph = graph.join(features)
                log.info("propagated: epoch %d, labels propagated over the data graph + a feature graph of %d edges "
                         "(%.1f s)", epoch, features.num_edges, time.perf_counter() - began)
            pseudo, weight = self.pseudo_labels(propagation_graph, train_labels, int(learner.num_classes))
            self._cache = (graph, train_labels, feature_epoch, pseudo.to(device), weight.to(device))
        return self._cache[3], self._cache[4]

    def forward(
        self, learner: "StructuredLearner", batch: Batch, output: Output
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pseudo, weight = self.targets(learner, output.logits.device)
        index = batch.index.to(pseudo.device)
        rows = ~batch.labeled
        if not bool(rows.any()):
            return output.logits.sum() * 0.0, {}
        losses = F.cross_entropy(output.logits[rows], pseudo[index[rows]], reduction="none")
        loss = (weight[index[rows]] * losses).mean()
        return self.current_multiplier(learner) * loss, {}

    def __repr__(self) -> str:
        feature = (f", feature_graph_from_epoch={self.feature_graph_from_epoch}, feature_graph_k={self.feature_graph_k}"
                   if self.feature_graph_from_epoch is not None else "")
        return (f"{self.__class__.__name__}(multiplier={self.multiplier}, alpha={self.alpha}, steps={self.steps}, "
                f"min_certainty={self.min_certainty}, align_to_prior={self.align_to_prior}{feature})")
