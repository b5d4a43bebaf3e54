"""The degradation model shared by training and `bench quality --degrade`: kernels, blur, noise, settings."""

from __future__ import annotations

import math

import pytest
import torch

from upscale_cli.degrade import (Degradation, anisotropic_kernel, blur, degrade, draw_degradations,
                                 isotropic_kernel)


def test_a_kernel_applied_to_an_impulse_gives_the_kernel() -> None:
    kernel = torch.rand(21, 21, dtype=torch.float64, generator=torch.Generator().manual_seed(0))  # not symmetric
    impulse = torch.zeros(1, 1, 45, 45, dtype=torch.float64)
    impulse[..., 22, 22] = 1.0
    out = blur(impulse, kernel[None])[0, 0]
    torch.testing.assert_close(out[12:33, 12:33], kernel, atol=1e-15, rtol=0)
    assert out.sum().item() == pytest.approx(kernel.sum().item())


def test_isotropic_kernels_are_separable_gaussians_and_anisotropic_ones_point_along_theta() -> None:
    x = torch.arange(21, dtype=torch.float64) - 10
    g = torch.exp(-x**2 / (2 * 1.7**2))
    torch.testing.assert_close(isotropic_kernel(1.7), torch.outer(g, g) / torch.outer(g, g).sum(), atol=1e-15, rtol=0)

    def spread(kernel: torch.Tensor) -> tuple[float, float]:
        """Variance along rows (vertical) and columns (horizontal)."""
        return float((kernel.sum(1) * x**2).sum()), float((kernel.sum(0) * x**2).sum())

    vertical, horizontal = spread(anisotropic_kernel(3.0, 1.0, 0.0))
    assert horizontal == pytest.approx(9.0, rel=0.02) and vertical == pytest.approx(1.0, rel=0.02)
    vertical, horizontal = spread(anisotropic_kernel(3.0, 1.0, math.pi / 2))
    assert vertical == pytest.approx(9.0, rel=0.02) and horizontal == pytest.approx(1.0, rel=0.02)
    for kernel in (isotropic_kernel(0.2), anisotropic_kernel(4.0, 0.2, 0.7)):
        assert kernel.sum().item() == pytest.approx(1.0) and kernel.min() >= 0


def test_noise_level_and_seed_reproduce_exactly() -> None:
    grey = torch.full((1, 3, 256, 256), 0.5, dtype=torch.float64)
    level = torch.tensor([10.0], dtype=torch.float64)
    a, b, c = (degrade(grey, 1, None, level, torch.Generator().manual_seed(s)) for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a * 255 - 127.5).std().item() == pytest.approx(10.0, rel=0.03)  # plus rounding's 1/12 level^2
    assert torch.equal(degrade(grey, 1, None, None), degrade(grey, 1, None, torch.zeros(1)))


def test_a_batch_degrades_each_sample_with_its_own_kernel_and_noise() -> None:
    generator = torch.Generator().manual_seed(0)
    hr = torch.rand(3, 3, 48, 40, generator=generator)
    drawn = draw_degradations("general", 3, torch.Generator().manual_seed(1))
    together = degrade(hr, 4, drawn.kernels, torch.zeros(3))
    for i in range(3):
        alone = degrade(hr[i : i + 1], 4, drawn.kernels[i : i + 1], None)
        torch.testing.assert_close(together[i : i + 1], alone, atol=1 / 255 + 1e-6, rtol=0)
        assert (together[i : i + 1] - alone).abs().gt(1e-6).float().mean() < 0.01  # rounding ties only


def test_specs_parse_and_print_back() -> None:
    assert Degradation.parse("blur:1.2") == Degradation(blur=1.2)
    assert Degradation.parse("aniso:0.2,4,30,noise:10") == Degradation(aniso=(0.2, 4.0, 30.0), noise=10.0)
    for spec in ("blur:1.2,noise:10", "aniso:0.2,4,30", "noise:5", "aniso:1,2,0,noise:2.5"):
        assert Degradation.parse(spec).label == spec
    for bad in ("blur:1,aniso:1,2,3", "aniso:1,2", "aniso:0,2,3", "blur:1,2", "noise:x", "4,blur:1"):
        with pytest.raises(ValueError):
            Degradation.parse(bad)
    hr = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(2))
    sharp = Degradation().apply(hr, 4, torch.Generator())
    blurred = Degradation.parse("aniso:0.5,3,45").apply(hr, 4, torch.Generator())
    assert sharp.shape == blurred.shape == (3, 12, 12) and (sharp - blurred).abs().mean() > 0.01


def test_training_settings_draw_what_they_promise() -> None:
    iso = draw_degradations("iso", 8, torch.Generator().manual_seed(0))
    assert torch.equal(iso.noise, torch.zeros(8))
    torch.testing.assert_close(iso.kernels, iso.kernels.transpose(1, 2))  # isotropic: symmetric
    general = draw_degradations("general", 16, torch.Generator().manual_seed(0))
    noisy = torch.tensor([True, True, False, False] * 4)  # every pairing of blur kind and noise
    assert (general.noise[noisy] > 0).all() and general.noise.max() <= 25
    assert torch.equal(general.noise[~noisy], torch.zeros(8, dtype=general.noise.dtype))
    symmetric = [bool(torch.allclose(k, k.T)) for k in general.kernels]
    assert symmetric[0::2] == [True] * 8 and not any(symmetric[1::2])
    assert ((general.width >= 0.2) & (general.width <= 4.0)).all()
    assert (general.width[:4] <= 1.0).all() and general.width[4:].max() > 2.0  # the sharp group, then any
    again = draw_degradations("general", 16, torch.Generator().manual_seed(0))
    assert torch.equal(general.kernels, again.kernels) and torch.equal(general.noise, again.noise)
    half = draw_degradations("general", 32, torch.Generator().manual_seed(0), sharp_quarters=2)
    sharp = torch.arange(32) // 4 % 4 < 2
    assert (half.width[sharp] <= 1.0).all() and half.width[~sharp].max() > 2.0
    with pytest.raises(ValueError, match="unknown degradation setting"):
        draw_degradations("motion", 2, torch.Generator())
    with pytest.raises(ValueError, match="sharp_quarters"):
        draw_degradations("general", 2, torch.Generator(), sharp_quarters=5)
