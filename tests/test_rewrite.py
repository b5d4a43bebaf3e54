"""Inference-time rewrites compute the same function: BatchNorm folded into the convolution before it, activations
run in place, a convolution moved from after a pixel shuffle to before it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torch.nn.functional as F

from upscale_cli.rewrite import ShuffledConv, activations_in_place, convolve_before_shuffle, fold_batchnorm


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


@pytest.mark.parametrize(("kernel", "factor", "outputs", "bias"), [(9, 2, 3, True), (3, 2, 5, True), (5, 3, 2, False),
                                                                     (1, 2, 3, True), (7, 4, 1, True)])
def test_a_shuffled_conv_equals_the_conv_after_the_shuffle(kernel: int, factor: int, outputs: int, bias: bool) -> None:
    torch.manual_seed(kernel * factor)
    conv = nn.Conv2d(4, outputs, kernel, padding=kernel // 2, bias=bias).double()
    x = torch.randn(2, 4 * factor**2, 7, 6, dtype=torch.float64)
    expected = conv(F.pixel_shuffle(x, factor))
    torch.testing.assert_close(ShuffledConv(conv, factor)(x), expected, rtol=1e-10, atol=1e-10)


def test_the_last_shuffle_moves_after_an_rgb_tail() -> None:
    torch.manual_seed(1)
    stages = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(),
                           nn.Conv2d(8, 32, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(), nn.Identity())
    tail = nn.Conv2d(8, 3, 9, padding=4)
    x = torch.randn(1, 8, 9, 11)
    with torch.no_grad():
        expected = tail(stages(x))
        moved = convolve_before_shuffle(stages, tail)
        assert isinstance(moved, ShuffledConv)
        assert [type(m) for m in stages].count(nn.PixelShuffle) == 1  # only the last one moved
        torch.testing.assert_close(moved(stages(x)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["many outputs", "3x3 kernel", "per-channel slope", "no shuffle", "strided"])
def test_the_shuffle_stays_where_moving_it_would_not_pay_or_not_hold(case: str) -> None:
    after = nn.PReLU(8) if case == "per-channel slope" else nn.PReLU()
    shuffle = nn.Identity() if case == "no shuffle" else nn.PixelShuffle(2)
    stages = nn.Sequential(nn.Conv2d(8, 32, 3, padding=1), shuffle, after)
    tail = {"many outputs": nn.Conv2d(8, 16, 9, padding=4), "3x3 kernel": nn.Conv2d(8, 3, 3, padding=1),
            "strided": nn.Conv2d(8, 3, 9, padding=4, stride=2)}.get(case, nn.Conv2d(8, 3, 9, padding=4))
    before = [type(m) for m in stages]
    assert convolve_before_shuffle(stages, tail) is None
    assert [type(m) for m in stages] == before


def test_activations_after_a_convolution_run_in_place_and_compute_the_same() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.PReLU(), nn.Conv2d(3, 8, 3, padding=1), nn.Identity(), nn.PReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(8, 8, 1), nn.PReLU(8))
    with torch.no_grad():
        net[3].weight.fill_(-0.3)  # a learned slope may be negative
    x = torch.randn(1, 3, 10, 12)
    kept = x.clone()
    with torch.no_grad():
        expected = net(x)
        assert activations_in_place(net) == 2
        assert isinstance(net[0], nn.PReLU)  # reads the Sequential's input, which its caller may still hold
        assert isinstance(net[3], nn.LeakyReLU) and net[3].inplace and net[5].inplace
        assert isinstance(net[7], nn.PReLU)  # one slope per channel is no leaky ReLU
        torch.testing.assert_close(net(x), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(x, kept)
