"""SRVGGNetCompact (Wang et al., Real-ESRGAN, ICCVW 2021): Real-ESRGAN's small anime and video models.

Layer order (written from the Real-ESRGAN paper's and release's description): a 3x3 conv to F features
and a PReLU (one slope per channel), then C more 3x3 F->F convs each with its PReLU, then a 3x3 conv to
3 x scale^2 channels and a pixel shuffle; the nearest-neighbour upscaled input is added to the result
(the network learns the residual over nearest). All layers sit in one Sequential, `body`, so the
release's tensors are `body.{2i}.weight/bias` (convs) and `body.{2i+1}.weight` (PReLU slopes).
Only the PReLU variant is read from files: the released models use it, and a ReLU variant's file holds
no tensor that tells its activation apart from LeakyReLU's.
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


@dataclass(frozen=True)
class CompactConfig:
    scale: int = 4
    features: int = 64
    convs: int = 16  # F->F convolutions between the first and the last
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"compact scale must be at least 1, not {self.scale}")


class Compact(nn.Module):
    def __init__(self, config: CompactConfig) -> None:
        super().__init__()
        self.config = config
        f = config.features
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, f, 3, padding=1), nn.PReLU(f)]
        for _ in range(config.convs):
            layers += [nn.Conv2d(f, f, 3, padding=1), nn.PReLU(f)]
        layers += [nn.Conv2d(f, config.out_channels * config.scale**2, 3, padding=1), nn.PixelShuffle(config.scale)]
        self.body = nn.Sequential(*layers)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.body(lr) + F.interpolate(lr, scale_factor=self.config.scale, mode="nearest")


_BODY = re.compile(r"^body\.(\d+)\.(weight|bias)$")


def recognise(tensors: Mapping[str, torch.Tensor]) -> Recognised | None:
    """Real-ESRGAN's compact layout: only `body.N.*` keys, even N 4-D convs, odd N 1-D PReLU slopes."""
    indices = [int(m[1]) for key in tensors if (m := _BODY.match(key))]
    if not indices or len(indices) != len(tensors) or "body.1.weight" not in tensors:
        return None
    if tensors["body.1.weight"].dim() != 1 or tensors["body.0.weight"].dim() != 4:
        return None
    last = max(indices)
    out = tensors[f"body.{last}.weight"].shape[0]
    scale = math.isqrt(out // 3)
    if scale * scale * 3 != out:
        return Recognised("Real-ESRGAN SRVGGNetCompact", {}, dict(tensors),
                          problems=[f"the last conv gives {out} channels, not 3 x scale^2"])
    config = CompactConfig(scale=scale, features=tensors["body.0.weight"].shape[0], convs=last // 2 - 1,
                           in_channels=tensors["body.0.weight"].shape[1])
    return Recognised("Real-ESRGAN SRVGGNetCompact", asdict(config), dict(tensors))


DESCRIPTOR = ModelDescriptor(
    id="compact",
    paper="Wang et al., Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic Data, ICCVW 2021",
    config_type=CompactConfig,
    build=Compact,
    receptive_radius=lambda c: c.convs + 2,  # one LR pixel per 3x3 conv, all at LR size
    # fp32 per LR pixel: two F maps (a conv's input and output) and the shuffled output, twice for slack.
    bytes_per_input_pixel=lambda c: 2 * 4 * (2 * c.features + 2 * c.out_channels * c.scale**2),
    recognise=recognise,
    small_config={"scale": 4, "features": 8, "convs": 2},
)
