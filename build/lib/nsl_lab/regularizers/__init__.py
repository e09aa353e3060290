"""Regularizers: terms added to the supervised loss, each written against :class:`Regularizer`."""
from nsl_lab.context import GraphData, TrainingStep
from nsl_lab.regularizers.adversarial import AdversarialRegularizer
from nsl_lab.regularizers.balance import ClassBalanceRegularizer
from nsl_lab.regularizers.base import Regularizer
from nsl_lab.regularizers.contrastive import NeighborContrastiveRegularizer
from nsl_lab.regularizers.distances import pairwise_distance, reduce_weighted
from nsl_lab.regularizers.graph import GraphRegularizer
from nsl_lab.regularizers.propagated import PropagatedLabelRegularizer

__all__ = [
    "AdversarialRegularizer", "ClassBalanceRegularizer", "GraphData", "GraphRegularizer",
    "NeighborContrastiveRegularizer", "PropagatedLabelRegularizer", "Regularizer", "TrainingStep",
    "pairwise_distance", "reduce_weighted",
]
