from nsl_lab.modules.ffn import FFN
from nsl_lab.modules.learner import StructuredLearner, supervised_loss
from nsl_lab.modules.output import Output

__all__ = ["FFN", "Output", "StructuredLearner", "supervised_loss"]
