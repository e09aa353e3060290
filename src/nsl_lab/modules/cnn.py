"""Convolutional backbones for images: a plain small conv net and a ResNet-style net."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nsl_lab.errors import ConfigError, check_integer, check_range
from nsl_lab.modules.backbone import Backbone, Output


def _check_widths(name: str, widths: Sequence[int]) -> list[int]:
    widths = list(widths)
    if not widths:
        raise ConfigError(f"backbone.{name}=[] must be a non-empty list of integers >= 1", f"backbone.{name}")
    for width in widths:
        check_integer(f"backbone.{name}", width, 1)
    return widths


def conv_bn(in_channels: int, out_channels: int, stride: int = 1, batch_norm: bool = True) -> nn.Sequential:
    """3x3 convolution, then batch norm (its bias makes the convolution's redundant)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=not batch_norm),
        nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity(),
    )


class ImageBackbone(Backbone):
    """Images in, ``embed`` the identity (perturbations apply to pixels): ``head`` runs
    ``features`` -> global average pool -> optional dense layer -> classifier, and returns the
    pooled (or dense) vector as the hidden layer."""

    accepts = ("images",)

    features: nn.Module
    hidden_layer: nn.Module | None
    classifier: nn.Linear
    dropout: float

    def head(self, z: torch.Tensor, **_: object) -> Output:
        h = self.features(z).mean(dim=(-2, -1))
        if self.hidden_layer is not None:
            h = F.relu(self.hidden_layer(h))
        h = F.dropout(h, self.dropout, self.training)
        return Output(self.classifier(h), h)

    def _channels_last(self) -> None:
        """Stores the convolution weights channels-last, so every feature map is NHWC: on CPU
        this makes max pooling ~10x and convolutions ~1.5x faster than NCHW (the forward of the
        digits CNN, and so AutoAttack's Square, about 1.5x); the outputs are the same up to
        float rounding (in-place re-initialisation and ``load_state_dict`` keep the layout)."""
        self.to(memory_format=torch.channels_last)


class CNN(ImageBackbone):
    r"""A small configurable conv net.

    .. math::
        h_{l+1} = \mathrm{pool}(\mathrm{relu}(\mathrm{BN}(W_l * h_l))),\quad
        e = \mathrm{relu}(V\, \mathrm{avgpool}(h_L)),\quad \mathrm{logits} = W_c e

    Each stage is ``convs_per_stage`` 3x3 convolutions with batch norm and ReLU, followed by
    2x2 max pooling while the feature map is larger than 2x2.

    Args:
        in_features: input channels (1 for digits, 3 for CIFAR-10).
        num_classes: number of output classes.
        channels: output channels of each stage.
        convs_per_stage: convolutions per stage.
        hidden_size: width of the dense layer after pooling (0 = none; the pooled vector is
            the embedding).
        dropout: dropout before the classifier.
        batch_norm: batch norm after every convolution.
    """

    repr_settings = ("channels", "convs_per_stage", "hidden_size", "dropout", "batch_norm")

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        convs_per_stage: int = 1,
        hidden_size: int = 128,
        dropout: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.channels = _check_widths("channels", channels)
        check_integer("backbone.convs_per_stage", convs_per_stage, 1)
        check_integer("backbone.hidden_size", hidden_size, 0)
        check_range("backbone.dropout", dropout, 0.0, 1.0, high_inclusive=False)
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.convs_per_stage, self.hidden_size = convs_per_stage, int(hidden_size)
        self.dropout, self.batch_norm = dropout, batch_norm
        layers: list[nn.Module] = []
        width = self.in_features
        for out in self.channels:
            for _ in range(convs_per_stage):
                layers += [*conv_bn(width, out, batch_norm=batch_norm), nn.ReLU()]
                width = out
            layers.append(_PoolIfLarge())
        self.features = nn.Sequential(*layers)
        self.hidden_layer = nn.Linear(width, self.hidden_size) if self.hidden_size else None
        self.classifier = nn.Linear(self.hidden_size or width, self.num_classes)
        self._channels_last()


class _PoolIfLarge(nn.Module):
    """2x2 max pooling, skipped once the map is 2x2 or smaller (8x8 digits survive 2 stages)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 2) if min(x.shape[-2:]) > 2 else x


class BasicBlock(nn.Module):
    r"""ResNet's basic block: :math:`\mathrm{relu}(\mathrm{BN}(W_2 * \mathrm{relu}(\mathrm{BN}(W_1 * x))) + s(x))`
    with :math:`s` the identity, or a strided 1x1 convolution with batch norm when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(in_channels, out_channels, stride)
        self.conv2 = conv_bn(out_channels, out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class ResNet(ImageBackbone):
    r"""A ResNet-style backbone (He et al.'s CIFAR ResNets: 3x3 stem, stages of basic blocks,
    stride 2 at the start of every stage after the first, global average pooling).

    Args:
        in_features: input channels.
        num_classes: number of output classes.
        widths: channels of each stage (ResNet-20: ``[16, 32, 64]`` with 3 blocks each).
        blocks_per_stage: basic blocks per stage.
        dropout: dropout before the classifier.
    """

    repr_settings = ("widths", "blocks_per_stage", "dropout")

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.widths = _check_widths("widths", widths)
        check_integer("backbone.blocks_per_stage", blocks_per_stage, 1)
        check_range("backbone.dropout", dropout, 0.0, 1.0, high_inclusive=False)
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.blocks_per_stage, self.dropout = blocks_per_stage, dropout
        layers: list[nn.Module] = [*conv_bn(self.in_features, self.widths[0]), nn.ReLU()]
        width = self.widths[0]
        for stage, out in enumerate(self.widths):
            for block in range(blocks_per_stage):
                layers.append(BasicBlock(width, out, stride=2 if stage > 0 and block == 0 else 1))
                width = out
        self.features = nn.Sequential(*layers)
        self.hidden_layer = None
        self.classifier = nn.Linear(width, self.num_classes)
        # Not channels-last, unlike the CNN: with torch 2.13's oneDNN on an AVX2-only CPU the
        # input gradient of a channels-last ResNet corrupts the heap (abort in ~1 of 40 passes
        # of an 8x8 batch; NCHW and the CNN never did), and attacks take that gradient.
