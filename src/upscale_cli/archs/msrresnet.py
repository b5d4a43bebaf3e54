"""MSRResNet (BasicSR's "modified SRResNet", Wang et al. 2018/2020): SRResNet without BatchNorm.

Layer order (written from BasicSR's documented architecture, `../shared/research/official_checkpoints.md`
section 5.1): `conv_first` 3x3 to F features and LeakyReLU(0.1); B residual blocks (`body.k`: conv1 3x3,
ReLU, conv2 3x3, added to the block's input); the upsampler (x2 and x3: `upconv1` to F s^2 channels and a
pixel shuffle by s; x4: `upconv1` and `upconv2`, each to 4F and a shuffle by 2), each shuffle followed by
LeakyReLU(0.1) (MMEditing's variant has none there); `conv_hr` 3x3 + LeakyReLU(0.1); `conv_last` 3x3 to
RGB; and the input upsampled bilinearly (align_corners False) added to the result. No long skip around
the body. RGB in [0, 1] in and out.

Three key layouts are read: BasicSR >= 1.0 (the module's own names), the legacy BasicSR / mmsr names
(`recon_trunk`, `HRconv`) and MMEditing's (`generator.trunk_net`, `generator.upsample1.upsample_conv`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from upscale_cli.archs.base import ModelDescriptor, Recognised

SLOPE = 0.1  # LeakyReLU's negative slope


@dataclass(frozen=True)
class MSRResNetConfig:
    scale: int = 4
    features: int = 64
    blocks: int = 16
    shuffle_activation: bool = True  # LeakyReLU after each pixel shuffle (BasicSR); MMEditing has none

    def __post_init__(self) -> None:
        if self.scale not in (2, 3, 4):
            raise ValueError(f"msrresnet scale must be 2, 3 or 4, not {self.scale}")

    @property
    def shuffles(self) -> tuple[int, ...]:
        return (2, 2) if self.scale == 4 else (self.scale,)


class ResidualBlockNoBN(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class MSRResNet(nn.Module):
    def __init__(self, config: MSRResNetConfig) -> None:
        super().__init__()
        self.config = config
        f = config.features
        self.conv_first = nn.Conv2d(3, f, 3, padding=1)
        self.body = nn.Sequential(*(ResidualBlockNoBN(f) for _ in range(config.blocks)))
        for index, factor in enumerate(config.shuffles, start=1):
            self.add_module(f"upconv{index}", nn.Conv2d(f, f * factor**2, 3, padding=1))
        self.conv_hr = nn.Conv2d(f, f, 3, padding=1)
        self.conv_last = nn.Conv2d(f, 3, 3, padding=1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        features = self.body(F.leaky_relu(self.conv_first(lr), SLOPE))
        for index, factor in enumerate(self.config.shuffles, start=1):
            features = F.pixel_shuffle(getattr(self, f"upconv{index}")(features), factor)
            if self.config.shuffle_activation:
                features = F.leaky_relu(features, SLOPE)
        out = self.conv_last(F.leaky_relu(self.conv_hr(features), SLOPE))
        return out + F.interpolate(lr, scale_factor=self.config.scale, mode="bilinear", align_corners=False)


_LEGACY = ((re.compile(r"^recon_trunk\."), "body."), (re.compile(r"^HRconv\."), "conv_hr."))
_MMEDITING = ((re.compile(r"^generator\.trunk_net\."), "body."),
              (re.compile(r"^generator\.upsample(\d)\.upsample_conv\."), r"upconv\1."),
              (re.compile(r"^generator\."), ""))


def _renamed(tensors: Mapping[str, torch.Tensor], rules: tuple) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in tensors.items():
        for pattern, replacement in rules:
            if pattern.match(key):
                key = pattern.sub(replacement, key, count=1)
                break
        renamed[key] = value
    return renamed


def recognise(tensors: Mapping[str, torch.Tensor]) -> Recognised | None:
    """An MSRResNet state dict in any of the three layouts, or None when it is nothing like one."""
    if "generator.trunk_net.0.conv1.weight" in tensors:
        layout, named, activation = "MMEditing keys", _renamed(tensors, _MMEDITING), False
    elif "recon_trunk.0.conv1.weight" in tensors:
        layout, named, activation = "legacy BasicSR keys", _renamed(tensors, _LEGACY), True
    else:
        layout, named, activation = "BasicSR keys", dict(tensors), True
    anchors = ("conv_first.weight", "body.0.conv1.weight", "upconv1.weight", "conv_hr.weight", "conv_last.weight")
    if not all(key in named for key in anchors):
        return None
    family = f"BasicSR MSRResNet ({layout})"
    features = named["conv_first.weight"].shape[0]
    factor = math.isqrt(named["upconv1.weight"].shape[0] // max(features, 1))
    scale = 4 if "upconv2.weight" in named else factor
    blocks = len({key.split(".")[1] for key in named if key.startswith("body.")})
    try:
        config = MSRResNetConfig(scale=scale, features=features, blocks=blocks, shuffle_activation=activation)
    except ValueError as exc:
        return Recognised(family, {}, named, problems=[str(exc)])
    return Recognised(family, asdict(config), named)


def _receptive_radius(config: MSRResNetConfig) -> int:
    """LR pixels reaching an output pixel on each side: conv_first, two per block and upconv1 at LR,
    upconv2 at x2 and the two HR convs (rounded up to LR pixels), and the bilinear skip's one."""
    return 1 + 2 * config.blocks + 1 + (len(config.shuffles) - 1) + math.ceil(2 / config.scale) + 1


DESCRIPTOR = ModelDescriptor(
    id="msrresnet",
    paper="Wang et al., BasicSR's modified SRResNet (ESRGAN, ECCVW 2018 and BasicSR, 2020)",
    config_type=MSRResNetConfig,
    build=MSRResNet,
    receptive_radius=_receptive_radius,
    # fp32 per LR pixel: two F maps at LR, the shuffle's input and F maps at HR (scale^2 pixels), twice.
    bytes_per_input_pixel=lambda c: 2 * 4 * (2 * c.features + 3 * c.features * c.scale**2),
    recognise=recognise,
    small_config={"scale": 4, "features": 8, "blocks": 2},
)
