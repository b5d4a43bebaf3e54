"""Image-quality figures in the convention of SR papers.

PSNR and SSIM are computed on the Y channel of BT.601 YCbCr (MATLAB `rgb2ycbcr`) on the 0..255
range, after cropping `border` pixels from every side; SSIM uses an 11x11 Gaussian window with
sigma 1.5 and no padding, as Wang et al.'s reference code does. Inputs are RGB tensors (3, H, W)
with values in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(rgb: torch.Tensor) -> torch.Tensor:
    """Y of BT.601 YCbCr on the 0..255 scale (16..235) from RGB in [0, 1]; shape (..., H, W)."""
    r, g, b = rgb.unbind(-3)
    return 16.0 + _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b


def shave(image: torch.Tensor, border: int) -> torch.Tensor:
    """Drop `border` pixels from each side of the last two axes."""
    if border <= 0:
        return image
    return image[..., border:-border, border:-border]


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; infinite for identical inputs."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _gaussian_filter(x: torch.Tensor) -> torch.Tensor:
    """'Valid' 11x11 Gaussian filtering of (N, 1, H, W), done as two 1-D passes (the window is separable)."""
    g = _gaussian_1d()
    return F.conv2d(F.conv2d(x, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 255.0) -> float:
    """Mean SSIM of two single-channel images (H, W), Gaussian window 11x11, sigma 1.5."""
    x = a.double()[None, None]
    y = b.double()[None, None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    stats = _gaussian_filter(torch.cat([x, y, x * x, y * y, x * y]))
    mu_x, mu_y, xx, yy, xy = stats
    var_x = xx - mu_x**2
    var_y = yy - mu_y**2
    cov = xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).mean().item()


def gradient_energy(gray: torch.Tensor) -> float:
    """Mean gradient magnitude (central differences) of a single-channel image."""
    g = gray.double()
    dx = g[..., 1:-1, 2:] - g[..., 1:-1, :-2]
    dy = g[..., 2:, 1:-1] - g[..., :-2, 1:-1]
    return torch.sqrt(dx * dx + dy * dy).mean().item() / 2


def sr_figures(sr: torch.Tensor, hr: torch.Tensor, border: int) -> dict[str, float]:
    """PSNR-Y, SSIM-Y, RGB PSNR and sharpness (SR gradient energy over HR's) of one SR result.

    `sr` is quantised to 8 bits first, as a saved output would be.
    """
    sr = sr.clamp(0, 1).mul(255).round().div(255)
    sr_y, hr_y = shave(rgb_to_y(sr), border), shave(rgb_to_y(hr), border)
    hr_grad = gradient_energy(hr_y)
    return {
        "psnr_y": psnr(sr_y, hr_y),
        "ssim_y": ssim(sr_y, hr_y),
        "psnr_rgb": psnr(shave(sr, border) * 255, shave(hr, border) * 255),
        "sharpness": gradient_energy(sr_y) / hr_grad if hr_grad > 0 else math.nan,
    }
