"""MATLAB-compatible bicubic `imresize` in torch.

SR papers make their LR images with MATLAB's `imresize(img, 1/s, 'bicubic')`: a cubic kernel with
a = -0.5, widened by the scale factor when shrinking (antialiasing), symmetric edge handling.
PIL, OpenCV and `torch.nn.functional.interpolate` all differ from it by tenths of a dB, so training
data, LR-consistency checks and the bicubic baseline all go through this one function.

Each axis is resized by one sparse matrix (out x in, a few taps per row: its memory follows the output,
not out x in) built once and kept in a cache bounded by bytes, so a resize is two sparse matmuls and an
extreme aspect ratio or a batch of many sizes costs no more than its outputs.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

CACHE_BYTES = 64 << 20  # the resize matrices kept for reuse, at most


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's choice)."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    far = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return near + far


_cache: OrderedDict[tuple[int, int, float, bool], torch.Tensor] = OrderedDict()


def _resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    """The sparse (out_len, in_len) float64 matrix (coalesced COO) that resizes one axis exactly as MATLAB does, from a
    cache holding at most CACHE_BYTES of matrices (least recently used ones go first)."""
    key = (in_len, out_len, scale, antialias)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    matrix = _build_resize_matrix(*key)
    _cache[key] = matrix
    while len(_cache) > 1 and sum(_matrix_bytes(m) for m in _cache.values()) > CACHE_BYTES:
        _cache.popitem(last=False)
    return matrix


def _matrix_bytes(matrix: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in (matrix.indices(), matrix.values()))


def _build_resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
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
    rows = torch.arange(out_len)[:, None].expand_as(src)
    return torch.sparse_coo_tensor(torch.stack([rows.reshape(-1), src.reshape(-1)]), weights.reshape(-1),
                                   (out_len, in_len), check_invariants=True).coalesce()  # mirrored taps add up


def _resize_axis(x: torch.Tensor, matrix: torch.Tensor, axis: int) -> torch.Tensor:
    """`matrix` (out, in) applied along `axis` of `x`: the axis moved to the front, flattened, multiplied."""
    moved = x.movedim(axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    return torch.sparse.mm(matrix, flat).reshape(matrix.shape[0], *moved.shape[1:]).movedim(0, axis)


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
    return _resize_axis(_resize_axis(x, rows, x.dim() - 2), cols, x.dim() - 1)


def quantize(image: torch.Tensor, levels: int = 255) -> torch.Tensor:
    """Round a [0, 1] image to `levels` steps, as saving to an 8-bit file would."""
    return image.clamp(0, 1).mul(levels).round().div(levels)
