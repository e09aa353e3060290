"""The backbone contract: ``embed`` -> ``head`` -> :class:`Output`, written once.

"embedding" is the input embedding :math:`z` = ``embed(x)`` (where perturbations apply: the
input itself for features and pixels, the looked-up vectors for token ids); "hidden" is the
penultimate layer that ``head`` returns beside the logits.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import nn

#: what a backbone takes as input; a datamodule declares which one it gives
InputKind = Literal["features", "images", "tokens"]


class Output(NamedTuple):
    """What every backbone returns.

    ``logits`` feed the supervised loss; ``hidden`` is the penultimate layer a regularizer may
    compare instead of the logits.
    """

    logits: torch.Tensor
    hidden: torch.Tensor


def as_output(result: Output | torch.Tensor) -> Output:
    """A module's result as :class:`Output` (plain logits double as the hidden layer)."""
    if isinstance(result, Output):
        return result
    if isinstance(result, torch.Tensor):
        return Output(result, result)
    raise TypeError(f"a backbone must return logits or nsl_lab.Output, got {type(result).__name__}")


class Backbone(nn.Module):
    r"""Base class of every backbone: :math:`f(x) = \mathrm{head}(\mathrm{embed}(x))`.

    A subclass writes ``head(z, **extra) -> Output(logits, hidden)`` and, when its input is
    not already continuous (token ids), ``embed(x) -> z``. The base class supplies
    ``forward``, ``reset_parameters`` (of every sub-module that has one) and a one-line
    ``repr`` from ``extra_repr``: ``in_features``, ``num_classes`` and the attributes named
    in ``repr_settings``.

    Attributes:
        accepts: the input kinds the backbone takes (checked against the data before any
            data is loaded).
    """

    accepts: ClassVar[tuple[InputKind, ...]] = ("features",)
    repr_settings: ClassVar[tuple[str, ...]] = ()
    in_features: int
    num_classes: int

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The continuous input embedding :math:`z` (the identity by default)."""
        return x

    def head(self, z: torch.Tensor, **extra: Any) -> Output:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, x: torch.Tensor, **extra: Any) -> Output:
        return self.head(self.embed(x), **extra)

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def extra_repr(self) -> str:
        settings = [f"{name}={getattr(self, name)!r}" for name in self.repr_settings]
        return ", ".join([f"{self.in_features}", f"{self.num_classes}", *settings])

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.extra_repr()})"


class WrappedModule(Backbone):
    """Any ``nn.Module`` returning logits (or :class:`Output`) as a backbone: ``embed`` is
    the identity, ``head`` calls the module."""

    accepts = ("features", "images", "tokens")

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.in_features = getattr(module, "in_features", -1)
        self.num_classes = getattr(module, "num_classes", None)

    def head(self, z: torch.Tensor, **extra: Any) -> Output:
        return as_output(self.module(z, **extra))

    def extra_repr(self) -> str:
        return repr(self.module)


def as_backbone(module: nn.Module) -> Backbone:
    """``module`` itself when it follows the contract, else wrapped once."""
    return module if isinstance(module, Backbone) else WrappedModule(module)
