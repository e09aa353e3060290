"""Cross-entropy against labels propagated over the graph (Iscen et al. 2019)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from nsl_lab.batch import Batch
from nsl_lab.errors import ConfigError, check_integer, check_range
from nsl_lab.graphs.neighbors import NeighborGraph
from nsl_lab.graphs.propagation import label_propagation
from nsl_lab.modules.output import Output
from nsl_lab.regularizers.base import Regularizer

if TYPE_CHECKING:
    from nsl_lab.modules.learner import StructuredLearner


class PropagatedLabelRegularizer(Regularizer):
    r"""Trains the unlabeled samples on labels propagated from the labeled ones over the graph.

    Once per fit, label propagation (:func:`nsl_lab.graphs.propagation.label_propagation`)
    spreads the training labels over the whole graph, giving scores :math:`F`; each reached
    sample gets the pseudo-label :math:`\hat y_i = \arg\max_c F_{ic}`, a certainty
    :math:`\omega_i = 1 - H(F_i / \sum_c F_{ic}) / \log C` and a class weight
    :math:`\zeta_c = N / (C\, N_c)` (:math:`N_c` samples pseudo-labeled :math:`c`), as in
    "Label Propagation for Deep Semi-supervised Learning" (Iscen et al., CVPR 2019); the
    weights :math:`w_i = \omega_i \zeta_{\hat y_i} / \overline{\omega \zeta}` are scaled
    to mean 1 over the reached samples. Over the batch's unlabeled samples :math:`U`:

    .. math::
        \mathcal{R} = \lambda \frac{1}{|U|} \sum_{i \in U} w_i\, \mathrm{CE}(f(x_i), \hat y_i)

    The graph's knowledge reaches every sample in a few propagation steps, where the pairwise
    graph loss needs a labeled sample and its neighbour in the same batch. The datamodule
    must hold ``graph`` and ``train_labels`` (the training labels, ``-1`` elsewhere), and
    the batches must hold unlabeled samples (``data.include_unlabeled=true`` for
    mini-batched data; a full-graph batch holds every node).

    Args:
        multiplier: :math:`\lambda`.
        alpha: propagation's :math:`\alpha` (how far labels spread), in [0, 1).
        steps: propagation steps.
        min_certainty: pseudo-labels below this certainty get weight 0.
        warmup_epochs: ramp :math:`\lambda` up linearly over these first epochs.
    """

    name = "propagated"

    def __init__(
        self,
        multiplier: float = 1.0,
        alpha: float = 0.9,
        steps: int = 50,
        min_certainty: float = 0.0,
        warmup_epochs: int = 0,
    ) -> None:
        super().__init__(multiplier, warmup_epochs)
        self.alpha = float(check_range("propagated.alpha", alpha, 0.0, 1.0, high_inclusive=False))
        self.steps = check_integer("propagated.steps", steps, 1)
        self.min_certainty = float(check_range("propagated.min_certainty", min_certainty, 0.0, 1.0))
        self._cache: tuple[NeighborGraph, torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def pseudo_labels(self, graph: NeighborGraph, train_labels: torch.Tensor, num_classes: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pseudo_label [N], weight [N])``: :math:`\\hat y` and :math:`w` (0 where unreached)."""
        scores = label_propagation(graph, train_labels, num_classes, self.alpha, self.steps)
        mass = scores.sum(1)
        reached = mass > 0
        probabilities = scores / mass.clamp_min(1e-12).unsqueeze(1)
        entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(1)
        certainty = (1 - entropy / math.log(num_classes)).clamp_min(0.0) if num_classes > 1 else torch.ones_like(mass)
        certainty = torch.where(reached & (certainty >= self.min_certainty), certainty, torch.zeros_like(certainty))
        pseudo = scores.argmax(1)
        counts = torch.bincount(pseudo[certainty > 0], minlength=num_classes).float()
        class_weight = torch.where(counts > 0, (counts.sum() / (num_classes * counts.clamp_min(1))), counts)
        weight = certainty * class_weight[pseudo]
        # Mean 1 over the reached samples, so that the multiplier alone sets the term's scale:
        # with two classes, entropy certainties are small (0.03 at 60:40, 0.28 at 80:20).
        mean = weight[reached].mean() if bool(reached.any()) else weight.new_ones(())
        return pseudo, weight / mean.clamp_min(1e-12)

    def targets(self, learner: "StructuredLearner", device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        datamodule = getattr(learner._trainer, "datamodule", None) if learner._trainer is not None else None
        graph = getattr(datamodule, "graph", None)
        train_labels = getattr(datamodule, "train_labels", None)
        if graph is None or train_labels is None:
            raise ConfigError("the propagated regularizer needs a datamodule with a graph and train_labels "
                              "(Planetoid, IMDB or custom data with data.graph set)")
        # Keyed on the graph and label objects themselves, so a new split never hits a stale entry.
        if self._cache is None or self._cache[0] is not graph or self._cache[1] is not train_labels:
            pseudo, weight = self.pseudo_labels(graph, train_labels, int(learner.num_classes))
            self._cache = (graph, train_labels, pseudo.to(device), weight.to(device))
        return self._cache[2], self._cache[3]

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
        return (f"{self.__class__.__name__}(multiplier={self.multiplier}, alpha={self.alpha}, steps={self.steps}, "
                f"min_certainty={self.min_certainty})")
