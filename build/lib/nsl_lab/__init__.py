"""nsl_lab: Neural Structured Learning for PyTorch."""
from nsl_lab.batch import Batch
from nsl_lab.errors import ConfigError
from nsl_lab.graphs import NeighborGraph
from nsl_lab.modules import FFN, Backbone, Output, StructuredLearner
from nsl_lab.regularizers import AdversarialRegularizer, GraphRegularizer, Regularizer

__all__ = [
    "AdversarialRegularizer", "Backbone", "Batch", "ConfigError", "FFN", "GraphRegularizer", "NeighborGraph", "Output",
    "Regularizer", "StructuredLearner",
]
__version__ = "0.1.0"
