"""Regularizers: terms added to the supervised loss, each written against :class:`Regularizer`."""
from nsl_lab.context import GraphData, TrainingStep
from nsl_lab.regularizers.adversarial import AdversarialRegularizer
from nsl_lab.regularizers.balance import ClassBalanceRegularizer
from nsl_lab.regularizers.base import Regularizer
from nsl_lab.regularizers.contrastive import NeighborContrastiveRegularizer
from nsl_lab.regularizers.distances import pairwise_distance, reduce_weighted
from nsl_lab.regularizers.distillation import DistillationRegularizer, train_grand_teacher
from nsl_lab.regularizers.graph import GraphRegularizer
from nsl_lab.regularizers.neighborhood import NeighborhoodContrastiveRegularizer
from nsl_lab.regularizers.propagated import PropagatedLabelRegularizer
from nsl_lab.regularizers.trades import TRADESRegularizer
from nsl_lab.regularizers.virtual_adversarial import VirtualAdversarialRegularizer

__all__ = [
    "AdversarialRegularizer", "ClassBalanceRegularizer", "DistillationRegularizer", "GraphData", "GraphRegularizer",
    "NeighborContrastiveRegularizer", "NeighborhoodContrastiveRegularizer", "PropagatedLabelRegularizer", "Regularizer", "TRADESRegularizer", "TrainingStep",
    "VirtualAdversarialRegularizer",
    "pairwise_distance", "reduce_weighted", "train_grand_teacher",
]
