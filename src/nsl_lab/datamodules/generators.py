"""Seeded random generators of a datamodule whose states travel in checkpoints."""
from __future__ import annotations

from typing import Any

import torch


class SeededGenerators:
    """Named CPU generators, freshly seeded for every fit (:meth:`reset`), with their states
    saved in and restored from checkpoints, so a resumed fit shuffles and samples as an
    uninterrupted one would have.

    Args:
        seeds: seed of each generator by name.
    """

    def __init__(self, seeds: dict[str, int]) -> None:
        self.seeds = dict(seeds)
        self._restored: dict[str, torch.Tensor] | None = None
        self.generators = self.reset()

    def reset(self) -> dict[str, torch.Generator]:
        """Generators seeded anew, or at the states of the checkpoint being resumed."""
        self.generators = {name: torch.Generator().manual_seed(seed) for name, seed in self.seeds.items()}
        if self._restored is not None:
            for name, state in self._restored.items():
                self.generators[name].set_state(state)
            self._restored = None
        return self.generators

    def state_dict(self) -> dict[str, Any]:
        return {name: generator.get_state() for name, generator in self.generators.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restored = dict(state)
