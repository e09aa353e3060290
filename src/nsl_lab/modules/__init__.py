from nsl_lab.modules.ffn import FFN
from nsl_lab.modules.learner import StructuredLearner, supervised_loss
from nsl_lab.modules.output import Output
from nsl_lab.modules.rnn import RNNClassifier

__all__ = ["FFN", "Output", "RNNClassifier", "StructuredLearner", "supervised_loss"]
