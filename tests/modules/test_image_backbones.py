"""Image backbones' memory layout: the CNN channels-last (faster on CPU), the ResNet not (its
channels-last input gradient corrupted the heap under torch 2.13's oneDNN on AVX2-only CPUs)."""
from __future__ import annotations

import torch

from nsl_lab.modules import CNN, ResNet


def test_cnn_is_channels_last_and_resnet_is_not():
    cnn, resnet = CNN(1, 10, channels=[4, 8], hidden_size=0), ResNet(1, 10, widths=[4, 8])
    def first_conv(model):
        return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)

    assert first_conv(cnn).weight.is_contiguous(memory_format=torch.channels_last)
    weight = first_conv(resnet).weight
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)


def test_resnet_input_gradients_repeat_cleanly():
    """Forty input-and-parameter gradients of a small ResNet, as attacks take them: the
    channels-last layout aborted this loop (heap corruption) within a few passes."""
    for seed in range(40):
        torch.manual_seed(seed)
        model = ResNet(1, 10, widths=[4, 8])
        x = torch.rand(8, 1, 8, 8, requires_grad=True)
        grads = torch.autograd.grad(model(x).logits.sum(), [x, *model.parameters()])
        assert all(torch.isfinite(g).all() for g in grads)
