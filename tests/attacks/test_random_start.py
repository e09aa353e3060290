"""The random start of PGD and the adversarial regularizer: uniform in the ball."""
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nsl_lab.attacks import random_in_ball


def test_l2_start_is_uniform_in_the_ball_volume():
    # Uniform in a d-ball: P(|r| <= t eps) = t^d, so |r| / eps has mean d / (d + 1) and
    # (|r| / eps)^d is uniform on [0, 1]. A uniform radius would give a mean of 1/2.
    d, n, eps = 20, 20000, 0.5
    start = random_in_ball(torch.zeros(n, 4, 5), "l2", eps, generator=torch.Generator().manual_seed(0))
    radius = start.flatten(1).norm(dim=1) / eps
    assert radius.max() <= 1 + 1e-6
    assert abs(radius.mean().item() - d / (d + 1)) < 0.002
    u = (radius.double() ** d).sort().values
    ks = (u - torch.arange(1, n + 1, dtype=torch.float64) / n).abs().max().item()
    assert ks < 1.63 / math.sqrt(n)  # Kolmogorov-Smirnov at the 1% level
    # ... and the direction is uniform: every coordinate's mean is ~0, its square's mean 1/d.
    unit = start.flatten(1) / start.flatten(1).norm(dim=1, keepdim=True)
    assert unit.mean(dim=0).abs().max() < 0.02
    assert ((unit ** 2).mean(dim=0) - 1 / d).abs().max() < 0.005


def test_linf_start_is_uniform_in_the_cube():
    start = random_in_ball(torch.zeros(50000, 3), "linf", 0.2, generator=torch.Generator().manual_seed(1))
    assert start.abs().max() <= 0.2
    assert (start.mean(dim=0)).abs().max() < 0.003
    assert ((start ** 2).mean(dim=0) - 0.2 ** 2 / 3).abs().max() < 0.0005


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 5), dims=st.integers(1, 30), eps=st.floats(1e-3, 10.0), norm=st.sampled_from(["l2", "linf"]),
       seed=st.integers(0, 2 ** 16))
def test_start_stays_in_the_ball_and_is_seeded(rows, dims, eps, norm, seed):
    like = torch.zeros(rows, dims)
    start = random_in_ball(like, norm, eps, generator=torch.Generator().manual_seed(seed))
    again = random_in_ball(like, norm, eps, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(start, again) and start.shape == like.shape
    size = start.norm(dim=1) if norm == "l2" else start.abs().amax(dim=1)
    assert (size <= eps * (1 + 1e-5)).all()
