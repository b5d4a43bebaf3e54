"""Synthetic degradations of real photos: blur, MATLAB bicubic downscale, sensor noise, 8-bit rounding.

The one degradation model of training (blind super-resolution recipes draw one per sample, on the fly)
and of `upscale bench quality --degrade` (one fixed degradation per evaluation, seeded):

    HR -> blur with a 21x21 Gaussian kernel (reflection padding) -> MATLAB bicubic x1/s
       -> + Gaussian noise (std on the 0..255 scale) -> round to 8 bits and clamp

Kernels are isotropic (one width sigma, in HR pixels) or anisotropic: covariance
R(theta) diag(l1^2, l2^2) R(theta)^T, l1 and l2 the standard deviations along the principal axes and
theta the angle of the first axis from the horizontal (DASR's convention, Wang et al. 2021).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from upscale_cli.resize import imresize, quantize

KERNEL_SIZE = 21
MAX_WIDTH = 4.0  # the widest blur the x4 training draws (sigma and l1, l2 in [0.2, 4.0])
MIN_WIDTH = 0.2
SHARP_WIDTH = 1.0  # the widest blur of `general`'s sharp samples
MAX_NOISE = 25.0  # noise levels are drawn in [0, 25] on the 0..255 scale


def isotropic_kernel(sigma: float, size: int = KERNEL_SIZE) -> torch.Tensor:
    """A normalised isotropic 2-D Gaussian (size x size, float64)."""
    return anisotropic_kernel(sigma, sigma, 0.0, size)


def anisotropic_kernel(l1: float, l2: float, theta: float, size: int = KERNEL_SIZE) -> torch.Tensor:
    """A normalised 2-D Gaussian with standard deviations `l1` (along the axis at angle `theta`, radians,
    from the horizontal) and `l2` (across it); size x size, float64, indexed [row, column]."""
    return kernels_from(torch.tensor([l1], dtype=torch.float64), torch.tensor([l2], dtype=torch.float64),
                        torch.tensor([theta], dtype=torch.float64), size)[0]


def kernels_from(l1: torch.Tensor, l2: torch.Tensor, theta: torch.Tensor, size: int = KERNEL_SIZE) -> torch.Tensor:
    """A batch of normalised Gaussian kernels (B, size, size) from per-sample widths and angles (B,)."""
    offsets = torch.arange(size, dtype=l1.dtype) - (size - 1) / 2
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    along = cos * x + sin * y  # coordinates in the kernel's principal axes
    across = -sin * x + cos * y
    log_density = -0.5 * ((along / l1[:, None, None]) ** 2 + (across / l2[:, None, None]) ** 2)
    kernel = torch.exp(log_density - log_density.amax(dim=(1, 2), keepdim=True))
    return kernel / kernel.sum(dim=(1, 2), keepdim=True)


def degrade(hr: torch.Tensor, scale: int, kernels: torch.Tensor | None, noise: torch.Tensor | None,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """LR (B, 3, H/s, W/s) in [0, 1], rounded to 8 bits, from HR (B, 3, H, W) with sides multiples of `scale`.

    `kernels` (B, k, k) blur each sample with its own kernel (None: no blur); `noise` (B,) are per-sample
    standard deviations on the 0..255 scale (None or 0: none), drawn from `generator`. The arithmetic is
    in HR's dtype (float64 for benchmarks, float32 for training).
    """
    image = hr if kernels is None else blur(hr, kernels)
    lr = imresize(image, scale=1 / scale)
    if noise is not None and bool((noise > 0).any()):
        draw = torch.randn(lr.shape, generator=generator, dtype=lr.dtype)
        lr = lr + draw * (noise.to(lr.dtype) / 255)[:, None, None, None]
    return quantize(lr).float()


def blur(image: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Each sample of `image` (B, C, H, W) convolved with its own kernel (B, k, k), reflection-padded."""
    batch, channels = image.shape[:2]
    pad = kernels.shape[-1] // 2
    if min(image.shape[-2:]) <= pad:
        raise ValueError(f"image {tuple(image.shape[-2:])} is too small for the {kernels.shape[-1]} px blur")
    weight = kernels.to(image.dtype).repeat_interleave(channels, dim=0)[:, None]  # (B*C, 1, k, k)
    padded = F.pad(image.reshape(1, batch * channels, *image.shape[-2:]), (pad,) * 4, mode="reflect")
    # conv2d correlates: flipping the kernel makes it a convolution (the same for point-symmetric Gaussians).
    return F.conv2d(padded, weight.flip(-2, -1), groups=batch * channels).reshape(image.shape)


@dataclass(frozen=True)
class Degradation:
    """One fixed degradation: isotropic blur (sigma, HR px) or anisotropic blur (l1, l2, theta in degrees),
    then noise (std on 0..255). Written `blur:SIGMA`, `aniso:L1,L2,THETA`, `noise:LEVEL`, joined by commas."""

    blur: float = 0.0
    aniso: tuple[float, float, float] | None = None
    noise: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Degradation:
        """`blur:1.2`, `aniso:0.2,4,30`, `noise:10`, or combinations (`aniso:0.2,4,30,noise:10`)."""
        parts: list[tuple[str, list[str]]] = []
        for token in spec.split(","):
            kind, colon, amount = token.strip().partition(":")
            if colon:
                parts.append((kind, [amount]))
            elif parts and parts[-1][0] == "aniso":
                parts[-1][1].append(kind)
            else:
                raise ValueError(f"{spec!r}: expected blur:SIGMA, aniso:L1,L2,THETA and/or noise:LEVEL")
        values: dict[str, object] = {}
        for kind, amounts in parts:
            if kind not in ("blur", "aniso", "noise") or kind in values:
                raise ValueError(f"{spec!r}: expected blur:SIGMA, aniso:L1,L2,THETA and/or noise:LEVEL, each once")
            numbers = [_number(spec, kind, a) for a in amounts]
            if kind == "aniso":
                if len(numbers) != 3 or min(numbers[:2]) <= 0:
                    raise ValueError(f"{spec!r}: aniso takes two positive widths and an angle in degrees, "
                                     "e.g. aniso:0.2,4,30")
                values[kind] = tuple(numbers)
            elif len(numbers) != 1:
                raise ValueError(f"{spec!r}: {kind} takes one number, e.g. {kind}:1.2")
            else:
                values[kind] = numbers[0]
        if "blur" in values and "aniso" in values:
            raise ValueError(f"{spec!r}: give blur or aniso, not both")
        return cls(**values)  # type: ignore[arg-type]

    @property
    def label(self) -> str:
        blur = [f"aniso:{self.aniso[0]:g},{self.aniso[1]:g},{self.aniso[2]:g}"] if self.aniso else (
            [f"blur:{self.blur:g}"] if self.blur or not self.noise else [])
        return ",".join(blur + ([f"noise:{self.noise:g}"] if self.noise else []))

    def kernel(self) -> torch.Tensor | None:
        """The blur kernel (KERNEL_SIZE square, float64), or None without blur."""
        if self.aniso is not None:
            l1, l2, degrees = self.aniso
            return anisotropic_kernel(l1, l2, math.radians(degrees))
        return isotropic_kernel(self.blur) if self.blur > 0 else None

    def apply(self, hr: torch.Tensor, scale: int, generator: torch.Generator) -> torch.Tensor:
        """LR (3, H/s, W/s) in [0, 1], rounded to 8 bits, from HR (3, H, W) whose sides are multiples of `scale`."""
        kernel = self.kernel()
        noise = torch.tensor([self.noise], dtype=torch.float64) if self.noise else None
        return degrade(hr.double()[None], scale, None if kernel is None else kernel[None], noise, generator)[0]


def _number(spec: str, kind: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{spec!r}: {kind} needs numbers, e.g. {kind}:1.2") from None
    if not 0 <= value < 1000 and not (kind == "aniso" and -360 <= value <= 360):
        raise ValueError(f"{spec!r}: {kind} must be between 0 and 1000")
    return value


SETTINGS = ("iso", "aniso_noise", "general")


@dataclass(frozen=True)
class DrawnDegradations:
    """Per-sample degradations of a batch: kernels (B, k, k), noise levels (B,) and the blur width of
    each (B,): sigma, or sqrt(l1 * l2) for anisotropic kernels (the isotropic width of equal area)."""

    kernels: torch.Tensor
    noise: torch.Tensor
    width: torch.Tensor


def draw_degradations(setting: str, batch: int, generator: torch.Generator,
                      sharp_quarters: int = 1) -> DrawnDegradations:
    """Random degradations for training, per the setting:

    * `iso`: DASR's noise-free setting: isotropic sigma ~ U[0.2, 4.0], no noise;
    * `aniso_noise`: DASR's general setting: l1, l2 ~ U[0.2, 4.0], theta ~ U[0, pi), noise ~ U[0, 25];
    * `general`: half of the batch each way, isotropic and anisotropic, crossed with half noisy
      (noise ~ U[0, 25]) and half clean: real photos have both kinds of blur, with noise or without, and
      a blind model must not smear clean inputs as if they were noisy. Of every four groups of four
      samples, `sharp_quarters` (0 to 4) are drawn sharp (widths ~ U[0.2, 1.0], where the x4
      downscale's own anti-aliasing dominates): most photos are in focus, and a model that sees sharp
      inputs only as rarely as a uniform width draws them learns to oversharpen them.
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown degradation setting {setting!r} (use {', '.join(SETTINGS)})")
    if not 0 <= sharp_quarters <= 4:
        raise ValueError(f"sharp_quarters must be 0 to 4, not {sharp_quarters}")

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator, dtype=torch.float64)

    l1, l2, theta = uniform(MIN_WIDTH, MAX_WIDTH), uniform(MIN_WIDTH, MAX_WIDTH), uniform(0.0, math.pi)
    noise = uniform(0.0, MAX_NOISE)
    if setting == "general":
        sharp = torch.arange(batch) // 4 % 4 < sharp_quarters
        shrink = (SHARP_WIDTH - MIN_WIDTH) / (MAX_WIDTH - MIN_WIDTH)  # maps U[MIN, MAX] onto U[MIN, SHARP]
        l1, l2 = (torch.where(sharp, MIN_WIDTH + (w - MIN_WIDTH) * shrink, w) for w in (l1, l2))
    isotropic = torch.ones(batch, dtype=torch.bool) if setting == "iso" else (
        torch.arange(batch) % 2 == 0 if setting == "general" else torch.zeros(batch, dtype=torch.bool))
    l2 = torch.where(isotropic, l1, l2)
    if setting == "iso":
        noise = torch.zeros(batch, dtype=torch.float64)
    elif setting == "general":
        noise = torch.where(torch.arange(batch) // 2 % 2 == 0, noise, 0.0)
    return DrawnDegradations(kernels_from(l1, l2, theta), noise, torch.sqrt(l1 * l2))
