"""Adversarial perturbations: the shared steepest-ascent core, FGSM / PGD attacks, the
robust-evaluation attacks (APGD, Square, AutoAttack) and robust-accuracy evaluation."""
from nsl_lab.attacks.apgd import APGD
from nsl_lab.attacks.ensemble import AutoAttack, make_robust_attack
from nsl_lab.attacks.evaluation import RobustAccuracy
from nsl_lab.attacks.gradient import FGSM, PGD, GradientAttack, make_attack
from nsl_lab.attacks.square import Square
from nsl_lab.attacks.steepest_ascent import (
    SteepestAscent, frozen_batch_norm_statistics, project, random_in_ball, steepest_direction,
)

__all__ = [
    "APGD", "AutoAttack", "FGSM", "PGD", "GradientAttack", "RobustAccuracy", "Square", "SteepestAscent",
    "frozen_batch_norm_statistics", "make_attack", "make_robust_attack", "project", "random_in_ball",
    "steepest_direction",
]
