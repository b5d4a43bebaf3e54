"""Labelled contact sheets and heat maps (numpy + Pillow), for `upscale sample` and the README figures."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Anchor colours of a black-purple-orange-yellow-white heat scale (perceptually ordered, like "inferno").
_HEAT = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)
_PAD = 4


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float RGB in [0, 1] (any extra range clipped) to uint8."""
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def nearest_resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel-replicating resize, to show an LR input at the output size without smoothing it."""
    ys = (np.arange(height) * rgb.shape[0] // height).clip(0, rgb.shape[0] - 1)
    xs = (np.arange(width) * rgb.shape[1] // width).clip(0, rgb.shape[1] - 1)
    return rgb[ys][:, xs]


def heat_map(values: np.ndarray, top: float) -> np.ndarray:
    """(H, W) non-negative values to a (H, W, 3) float heat image, 0 black and `top` (or more) white-hot."""
    t = np.clip(values / max(top, 1e-12), 0, 1) * (len(_HEAT) - 1)
    low = np.floor(t).astype(int).clip(0, len(_HEAT) - 2)
    frac = (t - low)[..., None]
    return ((1 - frac) * _HEAT[low] + frac * _HEAT[low + 1]) / 255


def contact_sheet(rows: list[list[np.ndarray]], row_labels: list[str], column_labels: list[str]) -> np.ndarray:
    """A uint8 grid of equally sized float RGB images with a label above each column and left of each row."""
    font = ImageFont.load_default()
    cell_h, cell_w = rows[0][0].shape[:2]
    label_w = max([int(font.getlength(label)) for label in row_labels] + [0]) + 2 * _PAD
    label_h = 14
    columns = max(len(row) for row in rows)
    sheet = Image.new("RGB", (label_w + columns * (cell_w + _PAD) + _PAD,
                              label_h + len(rows) * (cell_h + _PAD) + _PAD), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(column_labels[:columns]):
        draw.text((label_w + c * (cell_w + _PAD) + _PAD, 1), label, fill=(0, 0, 0), font=font)
    for r, (row, label) in enumerate(zip(rows, row_labels)):
        top = label_h + r * (cell_h + _PAD) + _PAD
        draw.text((_PAD, top + cell_h // 2 - 6), label, fill=(0, 0, 0), font=font)
        for c, cell in enumerate(row):
            sheet.paste(Image.fromarray(to_uint8(cell)), (label_w + c * (cell_w + _PAD) + _PAD, top))
    return np.asarray(sheet)
