"""Inference-time rewrites applied when a model is loaded to run: the same function, faster to execute.

* `fold_batchnorm` merges every BatchNorm2d that directly follows a Conv2d in a Sequential into that
  convolution (eval-mode BatchNorm is a per-channel affine map, so the merged convolution computes the
  same function). It halves the memory passes of SRResNet-style blocks.
* `activations_in_place` runs a leaky ReLU (or a one-slope PReLU, the same function) in place on the fresh
  output of the convolution before it, instead of allocating and page-faulting a new map as large.
* `convolve_before_shuffle` moves a pixel shuffle from before a convolution with few output channels to
  after it: the convolution then reads r^2 times the channels at 1/r the size and fills its SIMD lanes.
  An architecture whose forward has that pattern applies it in its descriptor's `for_inference`.

Measurements are in benchmarks/NOTES.md.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# Activations that act on each value alone, the same in every channel: they commute with a pixel shuffle.
_CHANNEL_BLIND = (nn.Identity, nn.ReLU, nn.LeakyReLU)


@torch.no_grad()
def prepare_for_inference(model: nn.Module, for_inference: Callable[[nn.Module], None] | None = None) -> None:
    """Apply every rewrite to an eval-mode `model` that will only run inference from now on: BatchNorm
    folding, the architecture's own rewrite (`for_inference`, from its descriptor), then in-place activations.
    A change to what this hands on must raise `openvino_backend.NETWORK_FORM` (cached conversions of it)."""
    fold_batchnorm(model)
    if for_inference is not None:
        for_inference(model)
    activations_in_place(model)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold each (Conv2d, BatchNorm2d) pair that is adjacent in an nn.Sequential; the BatchNorm becomes an
    Identity. `model` must be in eval mode (training-mode BatchNorm uses batch statistics). Returns how
    many were folded."""
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    folded = 0
    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(sequential.named_children())
        for (_, conv), (name, norm) in zip(children, children[1:]):
            if _foldable(conv, norm):
                _fold_into(conv, norm)
                setattr(sequential, name, nn.Identity())
                folded += 1
    return folded


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and type(norm) is nn.BatchNorm2d and norm.track_running_stats
            and norm.num_features == conv.out_channels)


def _fold_into(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """conv <- norm(conv(.)): weights scaled per output channel, the shift added to the bias."""
    assert norm.running_mean is not None and norm.running_var is not None
    scale = torch.rsqrt(norm.running_var.double() + norm.eps)
    if norm.affine:
        scale = scale * norm.weight.double()
    shift = -norm.running_mean.double() * scale + (norm.bias.double() if norm.affine else 0.0)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)
    conv.weight.copy_((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype))
    new_bias = (bias * scale + shift).to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=False)
    else:
        conv.bias.copy_(new_bias)


def activations_in_place(model: nn.Module) -> int:
    """Make each LeakyReLU, and each one-slope PReLU (as a LeakyReLU of that slope), in place where its
    input is the output of a Conv2d earlier in the same Sequential with only Identities between: nothing
    else can hold that tensor. Returns how many were changed. For inference only (no autograd)."""
    changed = 0
    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        producer: nn.Module | None = None
        for name, module in list(sequential.named_children()):
            if isinstance(module, nn.Identity):
                continue
            if isinstance(producer, nn.Conv2d) and _runs_in_place(module):
                setattr(sequential, name, _in_place(module))
                changed += 1
            producer = module
    return changed


def _runs_in_place(module: nn.Module) -> bool:
    one_slope = isinstance(module, nn.PReLU) and module.num_parameters == 1
    return one_slope or (type(module) is nn.LeakyReLU and not module.inplace)


def _in_place(module: nn.Module) -> nn.LeakyReLU:
    slope = float(module.weight) if isinstance(module, nn.PReLU) else module.negative_slope
    return nn.LeakyReLU(slope, inplace=True)


class ShuffledConv(nn.Module):
    """`conv(pixel_shuffle(x, r))` computed as `pixel_shuffle(conv'(x), r)`: conv' reads the r^2 sub-pixel
    phases of each input channel at the low resolution and writes those of each output channel."""

    def __init__(self, conv: nn.Conv2d, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.conv = _phase_conv(conv, factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(x), self.factor)


@torch.no_grad()
def convolve_before_shuffle(stages: nn.Sequential, conv: nn.Module) -> ShuffledConv | None:
    """For a network computing `conv(stages(x))`, where `stages` ends in a PixelShuffle followed only by
    channel-blind activations: turn that shuffle into an Identity and return the replacement of `conv`
    (a ShuffledConv). None, changing nothing, when the pattern does not hold or would not pay: it pays for
    a conv with at most 4 output channels (an RGB tail, which leaves most SIMD lanes idle) whose kernel
    grows by at most 1.5x in multiply-adds (a 9x9 kernel after a x2 shuffle: 5x5 over 4x the channels)."""
    children = list(stages.named_children())
    shuffles = [i for i, (_, m) in enumerate(children) if isinstance(m, nn.PixelShuffle)]
    if not shuffles or not all(_channel_blind(m) for _, m in children[shuffles[-1] + 1:]):
        return None
    name, shuffle = children[shuffles[-1]]
    factor = shuffle.upscale_factor
    if not _pays(conv, factor):
        return None
    setattr(stages, name, nn.Identity())
    return ShuffledConv(conv, factor)


def convolve_tail_before_shuffle(model: nn.Module) -> None:
    """`convolve_before_shuffle` for a model whose forward ends `self.tail(self.upsample(features))`."""
    tail = convolve_before_shuffle(model.upsample, model.tail)
    if tail is not None:
        model.tail = tail


def _channel_blind(module: nn.Module) -> bool:
    return isinstance(module, _CHANNEL_BLIND) or (isinstance(module, nn.PReLU) and module.num_parameters == 1)


def _pays(conv: nn.Module, factor: int) -> bool:
    if type(conv) is not nn.Conv2d:
        return False
    (k, k_w), pad = conv.kernel_size, conv.padding
    plain = (k == k_w and k % 2 == 1 and pad == (k // 2, k // 2) and conv.groups == 1 and conv.stride == (1, 1)
             and conv.dilation == (1, 1) and conv.padding_mode == "zeros")
    phase_kernel = 2 * -(-(k // 2) // factor) + 1
    return plain and conv.out_channels <= 4 and phase_kernel**2 * factor**2 <= 1.5 * k**2


@torch.no_grad()
def _phase_conv(conv: nn.Conv2d, r: int) -> nn.Conv2d:
    """The low-resolution conv of ShuffledConv. Output pixel (r*h + a, r*w + b) of the original reads input
    (r*h + a + dy, r*w + b + dx) = (r*(h + p) + i, r*(w + q) + j): low-resolution tap (p, q) of phase (i, j),
    channel c*r^2 + i*r + j of the shuffle's input, as pixel_shuffle orders them; output o goes likewise."""
    radius = conv.kernel_size[0] // 2
    reach = -(-radius // r)  # the largest |p|
    weight = conv.weight.double()
    phased = torch.zeros(conv.out_channels * r * r, conv.in_channels * r * r, 2 * reach + 1, 2 * reach + 1,
                         dtype=torch.float64, device=weight.device)
    for a in range(r):
        for b in range(r):
            for dy in range(-radius, radius + 1):
                p, i = divmod(a + dy, r)
                for dx in range(-radius, radius + 1):
                    q, j = divmod(b + dx, r)
                    phased[a * r + b::r * r, i * r + j::r * r, p + reach, q + reach] = weight[:, :, dy + radius, dx + radius]
    new = nn.Conv2d(phased.shape[1], phased.shape[0], phased.shape[2], padding=reach, bias=conv.bias is not None,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    new.weight.copy_(phased)
    if conv.bias is not None:
        new.bias.copy_(conv.bias.repeat_interleave(r * r))
    return new
