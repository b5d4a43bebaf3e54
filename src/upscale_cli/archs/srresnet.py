"""SRResNet (Ledig et al., CVPR 2017): the generator of SRGAN.

9x9 head conv + PReLU, B residual blocks (conv-BN-PReLU-conv-BN + skip), a conv-BN with a long skip,
log2(scale) pixel-shuffle x2 stages (conv to 4C, shuffle, PReLU), 9x9 tail conv. Input and output are
RGB in [0, 1]; the output is linear (trained against [0, 1] targets) and clamped only when saved.
`norm="none"` drops the BatchNorms (the EDSR finding), kept as an option for comparison.

leftthomas/SRGAN's released generators (`netG_epoch_{2,4,8}_100.pth`) are this network with two
variants, read by `recognise`: the conv before the long skip is followed by a PReLU instead of a BN
(`trunk_tail="prelu"`), and the output is (tanh(y) + 1) / 2 (`output="tanh"`). Their files carry no
`num_batches_tracked`; it is set to 0, which evaluation never reads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from upscale_cli.archs.base import ModelDescriptor, Recognised, unexpected_tensors
from upscale_cli.rewrite import convolve_tail_before_shuffle


@dataclass(frozen=True)
class SRResNetConfig:
    scale: int = 4
    channels: int = 64
    blocks: int = 16
    norm: str = "batch"
    trunk_tail: str = "norm"  # after the conv before the long skip: the norm above, or a PReLU (leftthomas)
    output: str = "linear"  # or "tanh": (tanh(y) + 1) / 2 (leftthomas)

    def __post_init__(self) -> None:
        if self.scale not in (2, 4, 8):
            raise ValueError(f"srresnet scale must be 2, 4 or 8, not {self.scale}")
        for name, allowed in (("norm", ("batch", "none")), ("trunk_tail", ("norm", "prelu")),
                              ("output", ("linear", "tanh"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"srresnet {name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")


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
        return self.body(x).add_(x)  # in place on the body's fresh output: one map less to allocate and fault in


class SRResNet(nn.Module):
    """The SRResNet / SRGAN generator."""

    def __init__(self, config: SRResNetConfig) -> None:
        super().__init__()
        c = config.channels
        self.config = config
        self.head = nn.Sequential(nn.Conv2d(3, c, 9, padding=4), nn.PReLU())
        self.trunk = nn.Sequential(*(ResidualBlock(c, config.norm) for _ in range(config.blocks)))
        tail_after = nn.PReLU() if config.trunk_tail == "prelu" else _norm(c, config.norm)
        self.trunk_tail = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), tail_after)
        stages = []
        for _ in range(int(math.log2(config.scale))):
            stages += [nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2), nn.PReLU()]
        self.upsample = nn.Sequential(*stages)
        self.tail = nn.Conv2d(c, 3, 9, padding=4)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        features = self.head(lr)
        features = features + self.trunk_tail(self.trunk(features))
        out = self.tail(self.upsample(features))
        return (torch.tanh(out) + 1) / 2 if self.config.output == "tanh" else out


def _receptive_radius(config: SRResNetConfig) -> int:
    """LR pixels that influence an output pixel on each side (head 4, 2 per block, 1 + 1/stage, tail)."""
    stages = int(math.log2(config.scale))
    return 4 + 2 * config.blocks + 1 + stages + math.ceil(4 / config.scale)


_LEFTTHOMAS_BLOCK = {"conv1": 0, "bn1": 1, "prelu": 2, "conv2": 3, "bn2": 4}
_LEFTTHOMAS_KEY = re.compile(r"^block(\d+)\.(\w+)\.(\w+)(?:\.(\w+))?$")


def recognise(tensors: Mapping[str, torch.Tensor]) -> Recognised | None:
    """leftthomas/SRGAN's generator (both its released files and its later code, whose block7 has a BN)
    under this architecture's names, or None when it is nothing like one."""
    if "block1.0.weight" not in tensors or "block2.bn1.running_mean" not in tensors or "block8.0.conv.weight" not in tensors:
        return None
    family = "leftthomas/SRGAN generator"
    residual = sorted({int(m[1]) for key in tensors if (m := _LEFTTHOMAS_KEY.match(key)) and m[2] == "conv1"})
    stages = len({key.split(".")[1] for key in tensors if key.startswith("block8.") and ".conv." in key})
    tail_block, final = max(residual, default=1) + 1, f"block8.{stages}"
    named, unknown = {}, []
    for key, value in tensors.items():
        ours = _leftthomas_name(key, residual, tail_block, final)
        if ours is None:
            unknown.append(key)
        else:
            named[ours] = value
    with_bn_tail = tensors.get(f"block{tail_block}.1.weight", torch.empty(0)).shape != (1,)
    config = SRResNetConfig(scale=2**stages, channels=tensors["block1.0.weight"].shape[0], blocks=len(residual),
                            trunk_tail="norm" if with_bn_tail else "prelu", output="tanh")
    for key in [k for k in named if k.endswith("running_mean")]:
        named.setdefault(key.replace("running_mean", "num_batches_tracked"), torch.tensor(0, dtype=torch.int64))
    problems = unexpected_tensors(unknown)
    return Recognised(family, asdict(config), named, problems)


def _leftthomas_name(key: str, residual: list[int], tail_block: int, final: str) -> str | None:
    """Our name for one of leftthomas's tensor names (None: no such tensor in our network)."""
    head, _, leaf = key.rpartition(".")
    if head.startswith("block1."):
        return f"head.{head[7:]}.{leaf}"
    if head == final:
        return f"tail.{leaf}"
    if head.startswith(f"block{tail_block}."):
        return f"trunk_tail.{head.split('.')[1]}.{leaf}"
    match = re.fullmatch(r"block8\.(\d+)\.(conv|prelu)", head)
    if match:
        return f"upsample.{3 * int(match[1]) + (0 if match[2] == 'conv' else 2)}.{leaf}"
    match = re.fullmatch(r"block(\d+)\.(\w+)", head)
    if match and int(match[1]) in residual and match[2] in _LEFTTHOMAS_BLOCK:
        return f"trunk.{residual.index(int(match[1]))}.body.{_LEFTTHOMAS_BLOCK[match[2]]}.{leaf}"
    return None


DESCRIPTOR = ModelDescriptor(
    id="srresnet",
    paper="Ledig et al., Photo-Realistic Single Image Super-Resolution Using a GAN, CVPR 2017",
    config_type=SRResNetConfig,
    build=SRResNet,
    receptive_radius=_receptive_radius,
    # fp32 activations alive at the last shuffle stage (a 4C map at scale/2 and C maps at scale,
    # about 2 * scale^2 * C floats per LR pixel) plus the LR trunk, doubled for allocator slack.
    bytes_per_input_pixel=lambda cfg: 2 * 4 * cfg.channels * (4 + 2 * cfg.scale**2),
    recognise=recognise,
    for_inference=convolve_tail_before_shuffle,  # the 9x9 RGB tail, before the last shuffle
    small_config={"scale": 4, "channels": 8, "blocks": 2},
)
