from nsl_lab.modules.cnn import CNN, ResNet
from nsl_lab.modules.ffn import FFN
from nsl_lab.modules.learner import StructuredLearner, supervised_loss
from nsl_lab.modules.output import Output
from nsl_lab.modules.rnn import RNNClassifier

__all__ = ["CNN", "FFN", "Output", "RNNClassifier", "ResNet", "StructuredLearner", "supervised_loss"]
