"""SRResNet (Ledig et al., CVPR 2017): the generator of SRGAN.

9x9 head conv + PReLU, B residual blocks (conv-BN-PReLU-conv-BN + skip), a conv-BN with a long skip,
log2(scale) pixel-shuffle x2 stages (conv to 4C, shuffle, PReLU), 9x9 tail conv. Input and output are
RGB in [0, 1]; the output is linear (trained against [0, 1] targets) and clamped only when saved.
`norm="none"` drops the BatchNorms (the EDSR finding), kept as an option for comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from upscale_cli.archs.base import ModelDescriptor


@dataclass(frozen=True)
class SRResNetConfig:
    scale: int = 4
    channels: int = 64
    blocks: int = 16
    norm: str = "batch"

    def __post_init__(self) -> None:
        if self.scale not in (2, 4, 8):
            raise ValueError(f"srresnet scale must be 2, 4 or 8, not {self.scale}")
        if self.norm not in ("batch", "none"):
            raise ValueError(f"srresnet norm must be 'batch' or 'none', not {self.norm!r}")


def _norm(channels: int, kind: str) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.Identity()


class ResidualBlock(nn.Module):
    """conv3x3 - BN - PReLU - conv3x3 - BN, added to the input."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels, norm),
            nn.PReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels, norm),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    """The SRResNet / SRGAN generator."""

    def __init__(self, config: SRResNetConfig) -> None:
        super().__init__()
        c = config.channels
        self.config = config
        self.head = nn.Sequential(nn.Conv2d(3, c, 9, padding=4), nn.PReLU())
        self.trunk = nn.Sequential(*(ResidualBlock(c, config.norm) for _ in range(config.blocks)))
        self.trunk_tail = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), _norm(c, config.norm))
        stages = []
        for _ in range(int(math.log2(config.scale))):
            stages += [nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2), nn.PReLU()]
        self.upsample = nn.Sequential(*stages)
        self.tail = nn.Conv2d(c, 3, 9, padding=4)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        features = self.head(lr)
        features = features + self.trunk_tail(self.trunk(features))
        return self.tail(self.upsample(features))


def _receptive_radius(config: SRResNetConfig) -> int:
    """LR pixels that influence an output pixel on each side (head 4, 2 per block, 1 + 1/stage, tail)."""
    stages = int(math.log2(config.scale))
    return 4 + 2 * config.blocks + 1 + stages + math.ceil(4 / config.scale)


DESCRIPTOR = ModelDescriptor(
    id="srresnet",
    paper="Ledig et al., Photo-Realistic Single Image Super-Resolution Using a GAN, CVPR 2017",
    config_type=SRResNetConfig,
    build=SRResNet,
    receptive_radius=_receptive_radius,
    # fp32 activations alive at the last shuffle stage (a 4C map at scale/2 and C maps at scale,
    # about 2 * scale^2 * C floats per LR pixel) plus the LR trunk, doubled for allocator slack.
    bytes_per_input_pixel=lambda cfg: 2 * 4 * cfg.channels * (4 + 2 * cfg.scale**2),
    small_config={"scale": 4, "channels": 8, "blocks": 2},
)
