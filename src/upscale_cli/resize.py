"""MATLAB-compatible bicubic `imresize` in torch.

SR papers make their LR images with MATLAB's `imresize(img, 1/s, 'bicubic')`: a cubic kernel with
a = -0.5, widened by the scale factor when shrinking (antialiasing), symmetric edge handling.
PIL, OpenCV and `torch.nn.functional.interpolate` all differ from it by tenths of a dB, so training
data, LR-consistency checks and the bicubic baseline all go through this one function.

Each axis is resized by one dense matrix (out x in) built once and cached, so a resize is two matmuls.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's choice)."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


@lru_cache(maxsize=64)
def _resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    """The (out_len, in_len) float64 matrix that resizes one axis exactly as MATLAB does."""
    kernel_width = 4.0
    shrink = antialias and scale < 1
    if shrink:
        kernel_width /= scale
    out_pos = torch.arange(1, out_len + 1, dtype=torch.float64)
    # Position in input coordinates (1-based) of each output sample's centre.
    centre = out_pos / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(centre - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    dist = centre[:, None] - idx
    weights = scale * _cubic(scale * dist) if shrink else _cubic(dist)
    weights = weights / weights.sum(dim=1, keepdim=True)
    # Symmetric boundary: index sequence 1..n, n..1 repeated.
    mirror = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])
    src = mirror[(idx.long() - 1) % (2 * in_len)]
    matrix = torch.zeros(out_len, in_len, dtype=torch.float64)
    matrix.scatter_add_(1, src, weights)
    return matrix


def imresize(image: torch.Tensor, scale: float | None = None, size: tuple[int, int] | None = None,
             antialias: bool = True) -> torch.Tensor:
    """Resize the last two axes of `image` (..., H, W) like MATLAB `imresize(..., 'bicubic')`.

    Give either `scale` (output size is ceil(H * scale), as MATLAB) or `size` (H, W). Values are not
    clamped or rounded: callers that need uint8 semantics quantise afterwards.
    """
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale or size")
    in_h, in_w = image.shape[-2:]
    if size is None:
        assert scale is not None
        out_h, out_w = math.ceil(in_h * scale), math.ceil(in_w * scale)
        scale_h = scale_w = scale
    else:
        out_h, out_w = size
        scale_h, scale_w = out_h / in_h, out_w / in_w
    dtype = image.dtype if image.dtype in (torch.float32, torch.float64) else torch.float32
    x = image.to(dtype)
    rows = _resize_matrix(in_h, out_h, float(scale_h), antialias).to(x.device, dtype)
    cols = _resize_matrix(in_w, out_w, float(scale_w), antialias).to(x.device, dtype)
    return rows @ x @ cols.T


def quantize(image: torch.Tensor, levels: int = 255) -> torch.Tensor:
    """Round a [0, 1] image to `levels` steps, as saving to an 8-bit file would."""
    return image.clamp(0, 1).mul(levels).round().div(levels)
