"""RRDBNet (Wang et al., ESRGAN, ECCVW 2018): the network of ESRGAN, Real-ESRGAN and most community models.

Layer order (from the ESRGAN paper and BasicSR's documented architecture; written here from those facts):

* an optional pixel-unshuffle by 2 or 4 in front (Real-ESRGAN's x2 and x1 models: the image becomes
  4 or 16 times the channels at half or a quarter of the size, and the rest runs as x4);
* `conv_first` 3x3 to F features;
* `body`: B residual-in-residual dense blocks (RRDB). Each holds three residual dense blocks (RDB) of five
  3x3 convolutions: conv k sees the block input and every earlier conv's output concatenated
  (F + (k-1) G channels) and gives G channels (the last gives F); LeakyReLU(0.2) after convs 1-4; the
  block returns input + 0.2 x conv5. An RRDB returns input + 0.2 x rdb3(rdb2(rdb1(input)));
* `conv_body` 3x3, added to the `conv_first` features (the long skip);
* per x2 of upsampling: nearest-neighbour x2, a 3x3 conv (`conv_up1`, `conv_up2`, ...), LeakyReLU(0.2);
* `conv_hr` 3x3 + LeakyReLU(0.2), `conv_last` 3x3 to RGB.

Input and output are RGB in [0, 1]. The module's tensor names are BasicSR's (the "new" layout); the
original ESRGAN release's names ("old" layout: `model.0`, `model.1.sub.N.RDB1.conv1.0`, ...) and
the ESRGAN repository's later ones (`RRDB_trunk.N.RDB1.conv1`, `trunk_conv`, `upconv1`, `HRconv`) are
mapped onto them by `recognise`, which also reads the sizes (F, G, B, the scale, the unshuffle) from the shapes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from upscale_cli.archs.base import ModelDescriptor, Recognised, SizeRequirements

SLOPE = 0.2  # LeakyReLU's negative slope throughout
RESIDUAL_SCALE = 0.2  # of every dense block's and every RRDB's residual


@dataclass(frozen=True)
class RRDBNetConfig:
    scale: int = 4
    unshuffle: int = 1  # pixel-unshuffle in front: 1 (none), 2 (Real-ESRGAN x2) or 4 (x1)
    features: int = 64
    blocks: int = 23
    growth: int = 32
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        if self.unshuffle not in (1, 2, 4):
            raise ValueError(f"rrdbnet unshuffle must be 1, 2 or 4, not {self.unshuffle}")
        stages = self.scale * self.unshuffle
        if self.scale < 1 or stages < 2 or stages & (stages - 1):
            raise ValueError(f"rrdbnet: scale {self.scale} with unshuffle {self.unshuffle} is not a power-of-two upsampling")

    @property
    def upsample_stages(self) -> int:
        return int(math.log2(self.scale * self.unshuffle))


class DenseBlock(nn.Module):
    """Five 3x3 convolutions, each fed everything before it; input + 0.2 x the last."""

    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        for k in range(1, 6):
            setattr(self, f"conv{k}", nn.Conv2d(features + (k - 1) * growth, growth if k < 5 else features, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = [x]
        for k in range(1, 5):
            seen.append(F.leaky_relu(getattr(self, f"conv{k}")(torch.cat(seen, 1)), SLOPE))
        return x + RESIDUAL_SCALE * self.conv5(torch.cat(seen, 1))


class RRDB(nn.Module):
    def __init__(self, features: int, growth: int) -> None:
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (DenseBlock(features, growth) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL_SCALE * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    def __init__(self, config: RRDBNetConfig) -> None:
        super().__init__()
        self.config = config
        f = config.features
        self.conv_first = nn.Conv2d(config.in_channels * config.unshuffle**2, f, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(f, config.growth) for _ in range(config.blocks)))
        self.conv_body = nn.Conv2d(f, f, 3, padding=1)
        for stage in range(1, config.upsample_stages + 1):
            setattr(self, f"conv_up{stage}", nn.Conv2d(f, f, 3, padding=1))
        self.conv_hr = nn.Conv2d(f, f, 3, padding=1)
        self.conv_last = nn.Conv2d(f, config.out_channels, 3, padding=1)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        x = F.pixel_unshuffle(lr, self.config.unshuffle) if self.config.unshuffle > 1 else lr
        features = self.conv_first(x)
        features = features + self.conv_body(self.body(features))
        for stage in range(1, self.config.upsample_stages + 1):
            upsampled = F.interpolate(features, scale_factor=2, mode="nearest")
            features = F.leaky_relu(getattr(self, f"conv_up{stage}")(upsampled), SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(features), SLOPE))


# ----- recognising other projects' files -----------------------------------------------------------------

_OLD_BODY = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_NEW_BODY = re.compile(r"^body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)$")
_TRUNK_BODY = re.compile(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\.(weight|bias)$")
_TRUNK_NAMES = {"trunk_conv": "conv_body", "HRconv": "conv_hr", **{f"upconv{i}": f"conv_up{i}" for i in range(1, 5)}}


def _from_trunk_layout(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The ESRGAN repository's 2019 names (its `RRDB_ESRGAN_x4.pth`, SRFlow's `RRDB_*.pth` encoders) mapped
    to BasicSR's: `RRDB_trunk.N.RDBj.convk`, `trunk_conv`, `upconv{i}`, `HRconv`."""
    if "RRDB_trunk.0.RDB1.conv1.weight" not in tensors:
        return None
    mapped = {}
    for key, tensor in tensors.items():
        if m := _TRUNK_BODY.match(key):
            key = f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"
        else:
            name, _, part = key.rpartition(".")
            key = f"{_TRUNK_NAMES.get(name, name)}.{part}"
        mapped[key] = tensor
    return mapped


def _from_old_layout(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The original ESRGAN release's names mapped to BasicSR's: `model.1.sub.N.RDBj.convk.0` are the
    blocks, `model.1.sub.{B}` is conv_body, then per upsample stage i a conv at `model.{3i}`, then
    conv_hr at `model.{3S+2}` and conv_last at `model.{3S+4}` (S stages; an upsample, conv, LeakyReLU each)."""
    if "model.0.weight" not in tensors:
        return None
    blocks = {int(m[1]) for key in tensors if (m := _OLD_BODY.match(key))}
    stages = sum(f"model.{3 * i}.weight" in tensors for i in range(1, 5))
    renamed = {"conv_first": "model.0", "conv_body": f"model.1.sub.{len(blocks)}",
               "conv_hr": f"model.{3 * stages + 2}", "conv_last": f"model.{3 * stages + 4}",
               **{f"conv_up{i}": f"model.{3 * i}" for i in range(1, stages + 1)}}
    mapped = {}
    for new, old in renamed.items():
        for part in ("weight", "bias"):
            if f"{old}.{part}" in tensors:
                mapped[f"{new}.{part}"] = tensors[f"{old}.{part}"]
    for key, tensor in tensors.items():
        if m := _OLD_BODY.match(key):
            mapped[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = tensor
    used = {f"{old}.{part}" for old in renamed.values() for part in ("weight", "bias")}
    leftovers = {k: v for k, v in tensors.items() if k not in used and not _OLD_BODY.match(k)}
    return {**mapped, **leftovers}  # leftovers stay under their own names: the strict check names them


def _config_from(tensors: Mapping[str, torch.Tensor]) -> RRDBNetConfig:
    first = tensors["conv_first.weight"]
    blocks = {int(m[1]) for key in tensors if (m := _NEW_BODY.match(key))}
    stages = sum(f"conv_up{i}.weight" in tensors for i in range(1, 5))
    unshuffle = math.isqrt(max(first.shape[1] // 3, 1))
    return RRDBNetConfig(scale=2**stages // unshuffle, unshuffle=unshuffle, features=first.shape[0],
                         blocks=len(blocks), growth=tensors["body.0.rdb1.conv1.weight"].shape[0],
                         in_channels=first.shape[1] // unshuffle**2,
                         out_channels=tensors["conv_last.weight"].shape[0])


def recognise(tensors: Mapping[str, torch.Tensor]) -> Recognised | None:
    """An ESRGAN-family state dict in either layout as this architecture's config and tensors, or None
    when it is nothing like one."""
    old, trunk = _from_old_layout(tensors), _from_trunk_layout(tensors)
    layout, named = (("old ESRGAN keys", old) if old is not None else ("ESRGAN repository keys", trunk)
                     if trunk is not None else ("BasicSR keys", dict(tensors)))
    if "conv_first.weight" not in named or "body.0.rdb1.conv1.weight" not in named:
        return None
    try:
        config = _config_from(named)
    except (KeyError, ValueError, IndexError) as exc:
        return Recognised(f"ESRGAN RRDBNet ({layout})", {}, named, problems=[f"sizes not readable: {exc}"])
    return Recognised(f"ESRGAN RRDBNet ({layout})", _config_dict(config), named)


def _config_dict(config: RRDBNetConfig) -> dict[str, int]:
    from dataclasses import asdict

    return asdict(config)


def _receptive_radius(config: RRDBNetConfig) -> int:
    """LR pixels reaching an output pixel on each side: 1 + 15 per RRDB + 1 at the (unshuffled) LR size,
    then 1 per conv at each doubling (halving in LR terms, rounded up), all times the unshuffle."""
    at_lr = 1 + 15 * config.blocks + 1
    upsampled = sum(math.ceil(1 / 2**stage) for stage in range(1, config.upsample_stages + 1)) + 2
    return (at_lr + upsampled) * config.unshuffle


DESCRIPTOR = ModelDescriptor(
    id="rrdbnet",
    paper="Wang et al., ESRGAN: Enhanced Super-Resolution GANs, ECCVW 2018 (and Real-ESRGAN, ICCVW 2021)",
    config_type=RRDBNetConfig,
    build=RRDBNet,
    receptive_radius=_receptive_radius,
    # fp32 activations per LR pixel: the dense block's concatenation (F + 4G) and its outputs at LR, and
    # F maps at each upsampled size (scale^2 pixels at the end), twice for allocator slack.
    bytes_per_input_pixel=lambda c: 2 * 4 * (3 * (c.features + 4 * c.growth) + 3 * c.features * c.scale**2),
    size_of=lambda c: SizeRequirements(multiple=c.unshuffle),  # the unshuffle needs whole 2x2 or 4x4 cells
    recognise=recognise,
    small_config={"scale": 4, "features": 8, "blocks": 1, "growth": 4},
)
