"""Backbones (the ``embed`` -> ``head`` contract) and the learner that trains them."""
from nsl_lab.modules.bag import BagOfNgrams
from nsl_lab.modules.backbone import Backbone, Output, WrappedModule, as_backbone, as_output
from nsl_lab.modules.cnn import CNN, ResNet
from nsl_lab.modules.ffn import FFN
from nsl_lab.modules.learner import StructuredLearner
from nsl_lab.modules.representation import RepresentationLearner
from nsl_lab.modules.rnn import RNNClassifier

__all__ = ["Backbone", "BagOfNgrams", "CNN", "FFN", "Output", "RNNClassifier", "RepresentationLearner", "ResNet",
           "StructuredLearner", "WrappedModule",
           "as_backbone", "as_output"]
