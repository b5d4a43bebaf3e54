"""MATLAB-compatible resize and SR metrics: unit checks with independent expectations, then published figures."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from upscale_cli.metrics import psnr, rgb_to_y, sr_figures, ssim
from upscale_cli.resize import _resize_matrix, imresize, quantize

SHARED = Path(os.environ.get("UPSCALE_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")
VAL = SHARED / "data" / "val"
needs_shared = pytest.mark.skipif(not VAL.is_dir(), reason=f"shared data not found at {VAL} (set UPSCALE_SHARED)")


def read(path: Path) -> torch.Tensor:
    """An image file as float RGB (3, H, W) in [0, 1]."""
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
    return torch.from_numpy(array).permute(2, 0, 1)


def test_constant_image_stays_constant() -> None:
    image = torch.full((3, 20, 28), 0.3, dtype=torch.float64)
    for scale in (0.25, 0.5, 1.7, 4):
        assert torch.allclose(imresize(image, scale=scale), torch.tensor(0.3, dtype=torch.float64), atol=1e-12)


def test_upscale_shape_is_ceil_of_scaled_size() -> None:
    image = torch.rand(3, 7, 5)
    assert imresize(image, scale=2.5).shape == (3, math.ceil(7 * 2.5), math.ceil(5 * 2.5))
    assert imresize(image, scale=4).shape == (3, 28, 20)


def test_quarter_downscale_of_a_ramp_gives_block_means() -> None:
    ramp = torch.arange(1, 65, dtype=torch.float64).repeat(8, 1)  # 8 x 64, value = column index (1-based)
    small = imresize(ramp, scale=1 / 4)
    block_means = ramp[0].reshape(16, 4).mean(dim=1)
    # Away from the mirrored borders the cubic kernel reproduces a linear function exactly.
    assert torch.allclose(small[:, 2:-2], block_means[2:-2].expand(small.shape[0], -1), atol=1e-9)


@pytest.mark.parametrize(("in_len", "out_len", "scale"), [(64, 16, 0.25), (16, 64, 4.0), (30, 45, 1.5)])
def test_resize_matrix_rows_sum_to_one(in_len: int, out_len: int, scale: float) -> None:
    matrix = _resize_matrix(in_len, out_len, scale, True).to_dense()
    assert torch.allclose(matrix.sum(dim=1), torch.ones(out_len, dtype=torch.float64), atol=1e-12)


def test_psnr_identical_and_known_mse() -> None:
    a = torch.zeros(10, 10)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 2) == pytest.approx(10 * math.log10(255**2 / 4))
    assert psnr(a, a + 1) == pytest.approx(48.1308036, abs=1e-6)


def test_ssim_is_one_for_identical_and_falls_with_noise() -> None:
    generator = torch.Generator().manual_seed(0)
    image = F.avg_pool2d(torch.rand(1, 1, 64, 64, generator=generator), 5, 1, 2)[0, 0] * 255
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    noise = torch.randn(64, 64, generator=generator)
    scores = [ssim(image, image + level * noise) for level in (2, 8, 32)]
    assert 1 > scores[0] > scores[1] > scores[2]


def test_rgb_to_y_of_white_and_black() -> None:
    assert rgb_to_y(torch.ones(3, 2, 2)).flatten().tolist() == pytest.approx([235.0] * 4)
    assert rgb_to_y(torch.zeros(3, 2, 2)).flatten().tolist() == pytest.approx([16.0] * 4)


def test_sharpness_of_a_blurred_image_is_below_one() -> None:
    hr = quantize(torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(1)))
    blurred = F.avg_pool2d(hr[None], 3, 1, 1, count_include_pad=False)[0]
    assert sr_figures(hr, hr, border=4)["sharpness"] == pytest.approx(1.0)
    assert sr_figures(blurred, hr, border=4)["sharpness"] < 1


@needs_shared
def test_imresize_reproduces_the_given_set5_lr_files() -> None:
    for hr_path in sorted((VAL / "Set5" / "HR").glob("*.png")):
        made = quantize(imresize(read(hr_path), scale=1 / 4))
        given = read(VAL / "Set5" / "LR_x4" / hr_path.name)
        value = psnr(made * 255, given * 255)
        print(f"{hr_path.name}: imresize x1/4 vs LR_x4 file {value:.2f} dB")
        assert value > 45, f"{hr_path.name}: {value:.2f} dB"


@needs_shared
@pytest.mark.parametrize(("name", "paper_psnr", "paper_ssim"), [("Set5", 28.42, 0.8104), ("Set14", 26.00, 0.7027)])
def test_bicubic_scores_the_published_figures(name: str, paper_psnr: float, paper_ssim: float) -> None:
    figures = []
    for hr_path in sorted((VAL / name / "HR").glob("*.png")):
        lr = read(VAL / name / "LR_x4" / hr_path.name)
        figures.append(sr_figures(imresize(lr, scale=4), read(hr_path), border=4))
    mean_psnr = sum(f["psnr_y"] for f in figures) / len(figures)
    mean_ssim = sum(f["ssim_y"] for f in figures) / len(figures)
    print(f"{name} bicubic x4: {mean_psnr:.2f} dB / {mean_ssim:.4f} (paper {paper_psnr} / {paper_ssim})")
    assert mean_psnr == pytest.approx(paper_psnr, abs=0.1)
    assert mean_ssim == pytest.approx(paper_ssim, abs=0.005)
