"""Inference-time rewrites: folding BatchNorm into the convolution before it computes the same function."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from upscale_cli.rewrite import fold_batchnorm


def randomise_statistics(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters (fresh ones are identities)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.2)


def test_a_folded_sequential_computes_the_same_and_holds_no_batchnorm() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.PReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                        nn.BatchNorm2d(8))  # a second BatchNorm in a row follows a BatchNorm: left alone
    randomise_statistics(net)
    net.eval()
    x = torch.randn(2, 3, 12, 10)
    expected = net(x)
    assert fold_batchnorm(net) == 2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 1
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


def test_folding_refuses_training_mode() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)))
