"""Invertible layers for (conditional) normalizing flows, written from the SRFlow, Glow and ArtFlow papers.

Protocol (every layer derives from `InvertibleLayer`):

* `forward(x, cond=None) -> (z, logdet)` is the ENCODE direction (image -> latent).
* `reverse(z, cond=None) -> (x, logdet)` is its exact algebraic inverse; its logdet is the negation
  of the forward one, so `forward` then `reverse` returns the input and the two logdets cancel.
* `logdet` is log|det dz/dx| per sample, shape (B,), allocated with `x.new_zeros(B)` (the input's
  device and dtype: float32 when the flow runs in fp32, float64 in the Jacobian tests).
* `cond` is a conditioning tensor (B, C_cond, H, W) at the layer's resolution; layers that do not
  use it ignore it.

The layers do not touch autocast: callers run flows in fp32 (`torch.autocast(..., enabled=False)`),
because the reverse direction divides by scales down to 1e-4 and amplifies rounding errors. Only the
parameter networks (`ParamNet`, `LayerParamNet`) may run in bf16 (`set_param_net_dtype`,
`param_nets_in`): they hold most of the compute, and their outputs are deterministic functions of values
both directions share.

`Split` keeps the protocol too: its encode output has the input's shape, the kept channels z1 followed
by the factored-out channels already standardised by the learned prior (eps), and its reverse takes
that tensor back. Its logdet is the log-determinant of the bijection (z1, z2) -> (z1, eps), i.e.
-sum(log sigma); the Gaussian log-density of the factored-out channels, log N(z2; mu, sigma^2) =
log N(eps; 0, I) - sum(log sigma), is therefore `logdet` plus `standard_normal_log_prob(eps)`, and the
multi-scale container (`flows.multiscale`) that collects the eps tensors adds the standard-normal
terms together with the top-level prior. Keeping the prior out of the logdet makes every layer's
logdet a true Jacobian log-determinant (what the tests check with autograd).

Couplings take their parameter network from a factory (`net(in_channels, out_channels)`), so a model
chooses its own (SRFlow's `ParamNet`, ArtFlow's zero-padded-with-one network); the affine coupling also
takes the scale function (SRFlow's bounded sigmoid by default).
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)
SCALE_FLOOR = 1e-4  # smallest affine scale: the reverse divides by it
HIDDEN_INIT_STD = 0.05


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, exp(log_std)^2) summed over all but the batch axis: shape (B,)."""
    density = -0.5 * (LOG_2PI + 2 * log_std + (x - mean) ** 2 * torch.exp(-2 * log_std))
    return density.flatten(1).sum(1)


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, I) summed over all but the batch axis: shape (B,)."""
    return (-0.5 * (LOG_2PI + x * x)).flatten(1).sum(1)


def affine_scale(raw: torch.Tensor) -> torch.Tensor:
    """SRFlow's bounded scale sigmoid(raw + 2) + 1e-4, in (1e-4, 1.0001]: never exp (it overflows)."""
    return torch.sigmoid(raw + 2.0) + SCALE_FLOOR


def _per_sample_sum(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


class InvertibleLayer(nn.Module, ABC):
    """Base class of every flow layer: `forward` encodes, `reverse` decodes (see the module docstring)."""

    @abstractmethod
    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode direction: data -> latent, with the per-sample log|det J|."""

    @abstractmethod
    def reverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact inverse, with the negated log-determinant."""


class ActNorm(InvertibleLayer):
    """Per-channel affine y = (x + b) * exp(s), logdet = H*W*sum(s).

    Data-dependent initialisation on the first forward call in training mode (b = -mean,
    s = log(1 / (std + 1e-6)) over batch and space), after which the persistent `initialized` buffer
    is set: it is saved in the state dict, so a reloaded layer never re-initialises. Eval-mode
    forwards never initialise; reversing an uninitialised layer raises.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def is_initialized(self) -> bool:
        return bool(self.initialized)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set b and s from the statistics of `x` so the output has zero mean and unit std per channel."""
        data = x.detach().to(self.bias.dtype)
        mean = data.mean(dim=(0, 2, 3), keepdim=True)
        std = data.std(dim=(0, 2, 3), keepdim=True, correction=0)
        self.bias.copy_(-mean)
        self.logs.copy_(torch.log(1.0 / (std + self.eps)))
        self.initialized.fill_(True)

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0]) + x.shape[2] * x.shape[3] * self.logs.sum().to(x.dtype)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self.is_initialized:
            self.initialize(x)
        y = (x + self.bias.to(x.dtype)) * torch.exp(self.logs.to(x.dtype))
        return y, self._logdet(x)

    def reverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            raise RuntimeError(
                "ActNorm is not initialised: run a forward pass in training mode on real data "
                "(or load trained weights) before reversing the flow"
            )
        x = z * torch.exp(-self.logs.to(z.dtype)) - self.bias.to(z.dtype)
        return x, -self._logdet(z)

    def extra_repr(self) -> str:
        return f"{self.channels}"


class InvertibleConv1x1(InvertibleLayer):
    """Channel mixing by an invertible C x C matrix W (random orthogonal at init, stored directly).

    logdet = H*W*log|det W|, computed with slogdet in float64. The inverse is computed in float64 and
    cast back. In eval mode the inverse and log|det W| are cached; the cache key includes the weight's
    storage pointer, version counter (bumped by every in-place update: optimiser steps, EMA, loading
    weights), dtype and device, so any change of the weight invalidates it; `train()` also clears it.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
        self.weight = nn.Parameter(q.to(torch.get_default_dtype()))
        self._cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None
        self.cache_misses = 0  # how often the eval-mode cache was (re)built; for tests and profiling

    def train(self, mode: bool = True) -> InvertibleConv1x1:
        self._cache = None
        return super().train(mode)

    def _cached(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(W^-1, log|det W|) in `dtype`, from the cache when the weight has not changed."""
        w = self.weight
        key = (w.data_ptr(), w._version, w.device, w.dtype, dtype)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                w64 = w.detach().double()
                inverse = torch.linalg.inv(w64).to(dtype)
                logabsdet = torch.linalg.slogdet(w64)[1].to(dtype)
            self._cache = (key, inverse, logabsdet)
            self.cache_misses += 1
        return self._cache[1], self._cache[2]

    def _logabsdet(self, dtype: torch.dtype) -> torch.Tensor:
        if self.training:
            return torch.linalg.slogdet(self.weight.double())[1].to(dtype)
        return self._cached(dtype)[1]

    def _inverse(self, dtype: torch.dtype) -> torch.Tensor:
        if self.training:
            return torch.linalg.inv(self.weight.double()).to(dtype)
        return self._cached(dtype)[0]

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        y = F.conv2d(x, self.weight.to(x.dtype)[:, :, None, None])
        logdet = x.new_zeros(x.shape[0]) + x.shape[2] * x.shape[3] * self._logabsdet(x.dtype)
        return y, logdet

    def reverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.conv2d(z, self._inverse(z.dtype)[:, :, None, None])
        logdet = z.new_zeros(z.shape[0]) - z.shape[2] * z.shape[3] * self._logabsdet(z.dtype)
        return x, logdet

    def extra_repr(self) -> str:
        return f"{self.channels}"


class LUInvertibleConv1x1(InvertibleLayer):
    """Glow's LU-decomposed invertible 1x1 convolution: W = P L (U + diag(sign * exp(log_s))).

    P (a permutation) and the signs are fixed buffers from the LU decomposition of a random orthogonal
    matrix; L (unit lower triangular), U (strictly upper) and log_s are learned. log|det W| = sum(log_s)
    costs nothing, and the inverse is computed in float64 from the factors (triangular solves).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        q, _ = torch.linalg.qr(torch.randn(channels, channels, dtype=torch.float64))
        permutation, lower, upper = torch.linalg.lu(q)
        diagonal = torch.diagonal(upper)
        dtype = torch.get_default_dtype()
        self.register_buffer("permutation", permutation.to(dtype))
        self.register_buffer("sign", torch.sign(diagonal).to(dtype))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1).to(dtype))
        self.lower = nn.Parameter(lower.to(dtype))
        self.upper = nn.Parameter(torch.triu(upper, 1).to(dtype))
        self.log_s = nn.Parameter(torch.log(diagonal.abs()).to(dtype))

    def _factors(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        eye = torch.eye(self.channels, dtype=dtype, device=self.lower.device)
        lower = self.lower.to(dtype) * self.lower_mask.to(dtype) + eye
        upper = self.upper.to(dtype) * self.lower_mask.T.to(dtype) + torch.diag(self.sign.to(dtype) * torch.exp(self.log_s.to(dtype)))
        return lower, upper

    def matrix(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W = P L U in `dtype`."""
        lower, upper = self._factors(dtype)
        return self.permutation.to(dtype) @ lower @ upper

    def _inverse(self, dtype: torch.dtype) -> torch.Tensor:
        """W^-1 = U^-1 L^-1 P^T, from triangular solves in float64."""
        lower, upper = self._factors(torch.float64)
        eye = torch.eye(self.channels, dtype=torch.float64, device=lower.device)
        inverse_lower = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        inverse_upper = torch.linalg.solve_triangular(upper, eye, upper=True)
        return (inverse_upper @ inverse_lower @ self.permutation.double().T).to(dtype)

    def _logdet(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0]) + x.shape[2] * x.shape[3] * self.log_s.sum().to(x.dtype)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return F.conv2d(x, self.matrix(x.dtype)[:, :, None, None]), self._logdet(x)

    def reverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return F.conv2d(z, self._inverse(z.dtype)[:, :, None, None]), -self._logdet(z)

    def extra_repr(self) -> str:
        return f"{self.channels}"


class ZeroConv2d(nn.Module):
    """A zero-initialised conv (3x3, bias) whose output is multiplied by exp(3 * l), l per channel (init 0).

    At init its output is exactly 0, so the affine layers fed by it start as a fixed per-element
    scale of sigmoid(2) with no shift, and split priors start as N(0, I). `pad_value` is what the
    border is padded with: 0 (SRFlow), or 1 as in Glow and ArtFlow, which tells the layer where the
    image ends.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, pad_value: float = 0.0) -> None:
        super().__init__()
        self.pad = kernel_size // 2
        self.pad_value = pad_value
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=self.pad if pad_value == 0 else 0)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_value != 0:
            x = F.pad(x, (self.pad,) * 4, value=self.pad_value)
        return self.conv(x) * torch.exp(3 * self.logs)


class ParamNet(nn.Module):
    """SRFlow's "F" network that predicts affine parameters (not itself invertible).

    conv3x3 (no bias) + ActNorm -> ReLU -> conv1x1 (no bias) + ActNorm -> ReLU -> ZeroConv2d 3x3.
    Hidden convs are initialised N(0, 0.05). The ActNorms are used in their forward direction only
    (as data-initialised normalisations). Output channels interleave: even = shift (or mean),
    odd = scale logits (or log std).

    `compute_dtype` (a run-time choice, not saved; see `set_param_net_dtype`) runs the network under
    autocast in that dtype; callers build its input in that dtype (`net_input_dtype`: one cast of the small
    flow half instead of casting the wide condition at every step) and cast its output to the flow's. The network need not be invertible, and the
    affine arithmetic and log-dets that use its output stay in the flow's dtype: the same input gives
    the same parameters in both directions, so the flow still inverts up to rounding.
    """

    compute_dtype: torch.dtype | None = None

    def __init__(self, in_channels: int, out_channels: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False)
        self.norm1 = ActNorm(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 1, bias=False)
        self.norm2 = ActNorm(hidden)
        self.out = ZeroConv2d(hidden, out_channels)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, 0.0, HIDDEN_INIT_STD)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _in_compute_dtype(self.compute_dtype, self._layers, x)

    def _layers(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x))[0])
        h = F.relu(self.norm2(self.conv2(h))[0])
        return self.out(h)


def net_input_dtype(net: nn.Module, like: torch.Tensor) -> torch.dtype:
    """The dtype to build a parameter network's input in: its compute dtype if it has one, else `like`'s."""
    return getattr(net, "compute_dtype", None) or like.dtype


class LayerParamNet(nn.Sequential):
    """A parameter network given as a sequence of layers (ArtFlow's), with ParamNet's run-time
    `compute_dtype`; its state-dict names are those of the nn.Sequential it replaces."""

    compute_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _in_compute_dtype(self.compute_dtype, super().forward, x)


def _in_compute_dtype(dtype: torch.dtype | None, layers: Callable[[torch.Tensor], torch.Tensor],
                      x: torch.Tensor) -> torch.Tensor:
    """`layers(x)`, under autocast in `dtype` unless it is None. The output is float32 where its last layer
    promotes it (ZeroConv2d's exp(3 * logs) scale); couplings cast it to the flow's dtype either way."""
    if dtype is None:
        return layers(x)
    with torch.autocast(x.device.type, dtype=dtype):
        return layers(x)


def set_param_net_dtype(module: nn.Module, dtype: torch.dtype | None) -> None:
    """Run every parameter network inside `module` in `dtype` (None: the flow's own dtype, usually fp32)."""
    for child in module.modules():
        if isinstance(child, (ParamNet, LayerParamNet)):
            child.compute_dtype = dtype


@contextlib.contextmanager
def param_nets_in(module: nn.Module, precision: str) -> Iterator[None]:
    """Within the block, `module`'s parameter networks run in bf16 if `precision` is "bf16" (any other
    precision keeps the flow's dtype: flows offer no fp16); afterwards in the flow's dtype again."""
    set_param_net_dtype(module, torch.bfloat16 if precision == "bf16" else None)
    try:
        yield
    finally:
        set_param_net_dtype(module, None)


class AffineInjector(InvertibleLayer):
    """Affine transform of all channels whose parameters depend on the condition only.

    [shift, raw] = F(cond) (interleaved), scale = sigmoid(raw + 2) + 1e-4, y = (x + shift) * scale,
    logdet = sum(log scale). Reverse: x = y / scale - shift.
    """

    def __init__(self, channels: int, cond_channels: int, hidden: int) -> None:
        super().__init__()
        if cond_channels < 1:
            raise ValueError("an affine injector needs a condition (cond_channels >= 1)")
        self.net = ParamNet(cond_channels, 2 * channels, hidden)

    def _params(self, cond: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if cond is None:
            raise ValueError("AffineInjector needs a condition tensor")
        h = self.net(cond.to(net_input_dtype(self.net, like))).to(like.dtype)
        return h[:, 0::2], affine_scale(h[:, 1::2])

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale = self._params(cond, x)
        return (x + shift) * scale, _per_sample_sum(torch.log(scale))

    def reverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale = self._params(cond, z)
        return z / scale - shift, -_per_sample_sum(torch.log(scale))


NetFactory = Callable[[int, int], nn.Module]


def param_net(hidden: int) -> NetFactory:
    """The factory of SRFlow's `ParamNet` with `hidden` channels."""
    return lambda in_channels, out_channels: ParamNet(in_channels, out_channels, hidden)


class _Coupling(InvertibleLayer):
    """The split of a coupling: the first floor(C/2) channels pass and, with the condition, feed the network."""

    def __init__(self, channels: int, cond_channels: int, net: NetFactory, outputs_per_channel: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling needs at least 2 channels, got {channels}")
        self.pass_channels = channels // 2
        self.cond_channels = cond_channels
        self.net = net(self.pass_channels + cond_channels, outputs_per_channel * (channels - self.pass_channels))

    def _net_output(self, x_a: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        if (cond is None) != (self.cond_channels == 0):
            raise ValueError(f"this coupling expects {self.cond_channels} condition channels")
        dtype = net_input_dtype(self.net, x_a)
        inputs = x_a.to(dtype) if cond is None else torch.cat([x_a.to(dtype), cond.to(dtype)], 1)
        return self.net(inputs).to(x_a.dtype)


class ConditionalAffineCoupling(_Coupling):
    """Affine coupling: the first floor(C/2) channels pass, the rest are shifted then scaled.

    [shift, raw] = F(concat(x_a, cond)) (interleaved), scale = scale_fn(raw) (SRFlow's
    sigmoid(raw + 2) + 1e-4 by default), y_b = (x_b + shift) * scale, y_a = x_a, logdet = sum(log scale).
    F is `net(in, out)` (SRFlow's ParamNet with `hidden` channels when no factory is given). With
    `cond_channels=0` it is an unconditional coupling (cond must then be None).
    """

    def __init__(self, channels: int, cond_channels: int, hidden: int = 64, *, net: NetFactory | None = None,
                 scale_fn: Callable[[torch.Tensor], torch.Tensor] = affine_scale) -> None:
        super().__init__(channels, cond_channels, net or param_net(hidden), 2)
        self.scale_fn = scale_fn

    def _params(self, x_a: torch.Tensor, cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._net_output(x_a, cond)
        return h[:, 0::2], self.scale_fn(h[:, 1::2])

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = x[:, : self.pass_channels], x[:, self.pass_channels :]
        shift, scale = self._params(x_a, cond)
        y = torch.cat([x_a, (x_b + shift) * scale], 1)
        return y, _per_sample_sum(torch.log(scale))

    def reverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        z_a, z_b = z[:, : self.pass_channels], z[:, self.pass_channels :]
        shift, scale = self._params(z_a, cond)
        x = torch.cat([z_a, z_b / scale - shift], 1)
        return x, -_per_sample_sum(torch.log(scale))


class AdditiveCoupling(_Coupling):
    """Additive coupling (NICE, Glow, ArtFlow): y_a = x_a, y_b = x_b + F(concat(x_a, cond)); logdet 0.

    Volume-preserving, so its inverse subtracts exactly what was added and nothing is divided.
    """

    def __init__(self, channels: int, net: NetFactory, cond_channels: int = 0) -> None:
        super().__init__(channels, cond_channels, net, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x_a, x_b = x[:, : self.pass_channels], x[:, self.pass_channels :]
        return torch.cat([x_a, x_b + self._net_output(x_a, cond)], 1), x.new_zeros(x.shape[0])

    def reverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        z_a, z_b = z[:, : self.pass_channels], z[:, self.pass_channels :]
        return torch.cat([z_a, z_b - self._net_output(z_a, cond)], 1), z.new_zeros(z.shape[0])


class Squeeze(InvertibleLayer):
    """Space-to-depth 2x2: (C, H, W) -> (4C, H/2, W/2), channel c*4 + 2*dy + dx; logdet 0."""

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"squeeze needs even height and width, got {tuple(x.shape[2:])}")
        return F.pixel_unshuffle(x, 2), x.new_zeros(x.shape[0])

    def reverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if z.shape[1] % 4:
            raise ValueError(f"unsqueeze needs a multiple of 4 channels, got {z.shape[1]}")
        return F.pixel_shuffle(z, 2), z.new_zeros(z.shape[0])


class Split(InvertibleLayer):
    """Factor out half of the channels with a learned Gaussian prior conditioned on the kept half.

    z1 = the first C - C//2 channels (kept; C - round(C/2) for every even C), z2 = the last C//2.
    [mu, log sigma] = ZeroConv2d(z1) (interleaved: even = mu, odd = log sigma).
    Encode: returns `(cat[z1, eps], logdet)` with eps = (z2 - mu) / sigma and logdet = -sum(log sigma).
    Reverse: takes `cat[z1, eps]`; z2 = mu + sigma * eps. `draw` makes tau * N(0, I) noise for eps.
    See the module docstring for how the prior density is accounted.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a split needs at least 2 channels, got {channels}")
        self.channels = channels
        self.out_channels = channels // 2
        self.keep_channels = channels - self.out_channels
        self.prior = ZeroConv2d(self.keep_channels, 2 * self.out_channels)

    def prior_params(self, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma) of the factored-out channels given the kept ones."""
        h = self.prior(z1)
        return h[:, 0::2], h[:, 1::2]

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        z1, z2 = x[:, : self.keep_channels], x[:, self.keep_channels :]
        mean, log_std = self.prior_params(z1)
        eps = (z2 - mean) * torch.exp(-log_std)
        return torch.cat([z1, eps], 1), -_per_sample_sum(log_std)

    def reverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if z.shape[1] != self.channels:
            raise ValueError(f"a split's reverse takes {self.channels} channels (kept + noise), got {z.shape[1]}")
        z1, eps = z[:, : self.keep_channels], z[:, self.keep_channels :]
        mean, log_std = self.prior_params(z1)
        z2 = mean + torch.exp(log_std) * eps.to(mean.dtype)
        return torch.cat([z1, z2], 1), _per_sample_sum(log_std)

    def draw(self, z1: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """tau * N(0, I) noise shaped like the factored-out channels over `z1`, drawn on `generator`'s device."""
        device = generator.device if generator is not None else z1.device
        shape = (z1.shape[0], self.out_channels, *z1.shape[2:])
        return (tau * torch.randn(shape, generator=generator, device=device, dtype=z1.dtype)).to(z1.device)


def encode_chain(layers: Sequence[InvertibleLayer], x: torch.Tensor,
                 cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run `layers` in order in the encode direction, summing their logdets."""
    total = x.new_zeros(x.shape[0])
    for layer in layers:
        x, logdet = layer(x, cond)
        total = total + logdet
    return x, total


def reverse_chain(layers: Sequence[InvertibleLayer], z: torch.Tensor,
                  cond: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert `layers`: the last layer first, summing the (negated) logdets."""
    total = z.new_zeros(z.shape[0])
    for layer in reversed(list(layers)):
        z, logdet = layer.reverse(z, cond)
        total = total + logdet
    return z, total


class FlowSequence(InvertibleLayer):
    """Layers applied in order when encoding and in reverse order when decoding; logdets summed.

    Every layer receives the same `cond` (layers that need none ignore it).
    """

    def __init__(self, layers: Sequence[InvertibleLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_chain(list(self.layers), x, cond)

    def reverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return reverse_chain(list(self.layers), z, cond)


class FlowStep(InvertibleLayer):
    """One conditional flow step (encode order): ActNorm -> 1x1 conv -> affine injector -> affine coupling.

    With `cond_channels=0` the injector is left out and the coupling is unconditional (a Glow step).
    """

    def __init__(self, channels: int, cond_channels: int, hidden: int) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.conv = InvertibleConv1x1(channels)
        self.injector = AffineInjector(channels, cond_channels, hidden) if cond_channels > 0 else None
        self.coupling = ConditionalAffineCoupling(channels, cond_channels, hidden=hidden)

    def _layers(self) -> list[InvertibleLayer]:
        layers: list[InvertibleLayer] = [self.actnorm, self.conv]
        if self.injector is not None:
            layers.append(self.injector)
        layers.append(self.coupling)
        return layers

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_chain(self._layers(), x, cond)

    def reverse(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return reverse_chain(self._layers(), z, cond)


def transition_step(channels: int) -> FlowSequence:
    """SRFlow's unconditional transition step: ActNorm -> invertible 1x1 conv."""
    return FlowSequence([ActNorm(channels), InvertibleConv1x1(channels)])
