"""ST-LPIPS: our network agrees with the released implementation on the released weights, and behaves as a
perceptual distance should."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from upscale_cli.perceptual import stlpips, weights_path

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(weights_path() is None, reason="the perceptual extra (stlpips-pytorch) is not installed")]


def test_it_agrees_with_the_released_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wheel's own code, run with stand-ins for the modules it imports but never uses on this path
    (torchvision, IPython, torchsummary: none installs beside this torch)."""
    for name in ("torchvision", "torchvision.models", "IPython", "torchsummary"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["torchvision"].models = sys.modules["torchvision.models"]
    sys.modules["IPython"].embed = lambda *args, **kwargs: None
    sys.modules["torchsummary"].summary = lambda *args, **kwargs: None
    for module in [m for m in sys.modules if m.startswith("stlpips_pytorch")]:
        monkeypatch.delitem(sys.modules, module)
    from stlpips_pytorch.stlpips import LPIPS

    reference = LPIPS(net="vgg", variant="shift_tolerant", verbose=False)
    generator = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 48, 56, generator=generator), torch.rand(2, 3, 48, 56, generator=generator)
    with torch.no_grad():
        torch.testing.assert_close(stlpips()(a, b), reference(a, b, normalize=True).flatten(), atol=1e-6, rtol=1e-5)


def test_it_measures_what_a_perceptual_distance_should() -> None:
    metric = stlpips()
    generator = torch.Generator().manual_seed(1)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 16, 16, generator=generator), size=64, mode="bicubic",
                                            align_corners=False).clamp(0, 1)
    noisy = [(image + level * torch.randn(image.shape, generator=generator)).clamp(0, 1) for level in (0.02, 0.05, 0.1)]
    with torch.no_grad():
        assert metric(image, image).item() == 0.0
        distances = [metric(image, other).item() for other in noisy]
        shifted = metric(image[..., 1:, 1:], image[..., :-1, :-1]).item()
    assert distances == sorted(distances) and distances[0] > 0
    assert shifted < distances[1]  # a one-pixel shift counts for less than visible noise
