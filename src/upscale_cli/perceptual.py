"""ST-LPIPS (Ghildyal and Liu, ECCV 2022): a perceptual distance that tolerates small shifts, from the
weights the `stlpips-pytorch` wheel ships (`pip install 'upscale-cli[perceptual]'`; nothing is downloaded).

The network is written here from the facts of that release (its own code imports torchvision, which does
not install beside this project's torch): VGG16's convolutions with anti-aliased pooling (max pooling of
stride 1, then a [1 2 1] x [1 2 1] / 16 blur of stride 2 on a reflection padding of 2), read at the five
ReLUs before each pooling; each feature map is normalised over channels, the squared differences weighted
per channel by a learned 1x1 layer, averaged over space and summed over the five layers. Inputs are RGB in
[0, 1], taken to [-1, 1] and then shifted and scaled per channel as LPIPS v0.1 does. 0 is identical; lower
is closer.
"""

from __future__ import annotations

import copy
import importlib.util
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PACKAGE = "stlpips_pytorch"
WEIGHTS = Path("weights") / "vST0.0" / "vgg_shift_tolerant.pth"
VGG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))  # convs per stage
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def weights_path() -> Path | None:
    """The ST-LPIPS VGG weights inside the installed wheel, or None when the extra is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS
    return path if path.is_file() else None


class BlurDownsample(nn.Module):
    """Reflection padding of 2, then a normalised [1 2 1] outer-product blur with stride 2, per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = torch.outer(taps, taps) / 16
        self.register_buffer("filt", kernel[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class ShiftTolerantVGG(nn.Module):
    """The five feature stages; `slice{k}` and layer indices follow the released weights' key names."""

    def __init__(self) -> None:
        super().__init__()
        index, channels = 0, 3
        for stage, widths in enumerate(VGG16, start=1):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            if stage > 1:
                layers[str(index)] = nn.MaxPool2d(2, stride=1)
                layers[str(index + 1)] = BlurDownsample(channels)
                index += 2
            for width in widths:
                layers[str(index)] = nn.Conv2d(channels, width, 3, padding=1)
                layers[str(index + 1)] = nn.ReLU()
                index, channels = index + 2, width
            self.add_module(f"slice{stage}", nn.Sequential(layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in range(1, len(VGG16) + 1):
            x = getattr(self, f"slice{stage}")(x)
            features.append(x)
        return features


class STLPIPS(nn.Module):
    """distance(a, b): (B,) ST-LPIPS distances between RGB images in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.net = ShiftTolerantVGG()
        self.lins = nn.ModuleList(nn.Conv2d(widths[-1], 1, 1, bias=False) for widths in VGG16)

    def load_released(self, path: Path) -> STLPIPS:
        """Load the wheel's weights (a plain state dict, read with weights_only) and freeze the network."""
        released = torch.load(path, map_location="cpu", weights_only=True)
        state = {key: value for key, value in released.items() if key.startswith("net.")}
        state.update({f"lins.{k}.weight": released[f"lin{k}.model.1.weight"] for k in range(len(VGG16))})
        self.load_state_dict(state, strict=True)
        return self.eval().requires_grad_(False)

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.net(((2 * image - 1) - self.shift) / self.scale)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = a.new_zeros(a.shape[0])
        for lin, fa, fb in zip(self.lins, self.features(a), self.features(b)):
            na = fa / (fa.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((na - nb) ** 2).mean(dim=(1, 2, 3))
        return total


@lru_cache(maxsize=1)
def stlpips() -> STLPIPS | None:
    """The loaded metric (once per process), or None without the `perceptual` extra."""
    path = weights_path()
    return None if path is None else STLPIPS().load_released(path)


def trainable_copy_or_error(purpose: str) -> STLPIPS:
    """A private, frozen copy of the loaded network for a training loss (`purpose` names it in the error),
    so that moving it to a device leaves the metric's shared instance alone; a ValueError without the extra."""
    metric = stlpips()
    if metric is None:
        raise ValueError(f"{purpose} needs the perceptual extra: pip install 'upscale-cli[perceptual]'")
    return copy.deepcopy(metric)
