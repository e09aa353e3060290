"""Adversarial perturbations: the shared steepest-ascent core, FGSM / PGD attacks and
robust-accuracy evaluation."""
from nsl_lab.attacks.evaluation import RobustAccuracy
from nsl_lab.attacks.gradient import FGSM, PGD, GradientAttack, make_attack
from nsl_lab.attacks.steepest_ascent import (
    SteepestAscent, frozen_batch_norm_statistics, project, random_in_ball, steepest_direction,
)

__all__ = [
    "FGSM", "PGD", "GradientAttack", "RobustAccuracy", "SteepestAscent", "frozen_batch_norm_statistics",
    "make_attack", "project", "random_in_ball", "steepest_direction",
]
