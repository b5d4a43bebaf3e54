"""DASR (Wang et al., CVPR 2021): blind super-resolution with an unsupervised degradation representation.

Written from the paper and `shared/research/model_specs.md` section 3 (the official code was not copied).

* Degradation encoder E: six 3x3 convs with BatchNorm and LeakyReLU(0.1) (3->64, 64->64,
  64->128 stride 2, 128->128, 128->256 stride 2, 256->256), global average pooling: a 256-d
  representation of how the LR image was degraded. It is trained MoCo-style by the recipe (whose
  projection head and key encoder are not part of this model); here it runs in eval mode.
* SR network G, conditioned on the representation compressed to `channels` (Linear, no bias, LReLU):
  head conv, `groups` residual groups of `blocks` DA blocks (DA conv, LReLU, conv, LReLU, DA conv,
  LReLU, conv, + input) each followed by a conv and the group's skip, a conv and the long skip, the
  EDSR upsampler (conv to 4C + pixel shuffle, per factor 2) and a conv to RGB. The input has the DIV2K
  mean subtracted and the output gets it back.
* DA conv: a per-sample 3x3 depth-wise kernel predicted from the representation (two bias-free Linears
  with LReLU), applied as one grouped convolution over the batch folded into channels, LReLU, a 1x1
  conv; plus channel attention predicted from the representation alone (1x1 convs, reduction 8,
  sigmoid) scaling the input. Output: the sum of both branches.
* A probe (Linear, LReLU, Linear) reads the representation and estimates the input's blur width (HR px)
  and noise level (0..255), trained on the known degradations of the training batches with the
  representation detached: a report for users, not part of the SR path.

Images are RGB in [0, 1]. The representation is computed once per image before tiling (`DASRRunner`):
on the whole LR image when it has at most REPRESENTATION_PIXELS pixels, else on a bounded view (see
`representation`). The paper's configuration (64 channels, 5 x 5 blocks) has 5.84 M parameters.

The authors' released `model_600.pt` files (LongguangWang/DASR; `official_checkpoints.md` section 2) are
read by `recognise`: the same network on 0..255 images, so the first encoder conv and the head take
their weights x255 and the tail's weights and bias /255 (everything between is unchanged); their
MeanShift layers must hold DIV2K's mean (checked, then dropped as our fixed `rgb_mean`), their MoCo
projection head (`E.encoder_q.mlp`, training only) is dropped, and they have no probe (`probe=False`:
no estimates are reported).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from upscale_cli.archs.base import ModelDescriptor, Recognised, unexpected_tensors, RunOptions
from upscale_cli.archs.runners import NetworkRunner
from upscale_cli.tiler import IMAGE, Inputs, Tiles, Window

RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K's mean colour, subtracted at G's input as in the paper
ENCODER_WIDTHS = ((3, 64, 1), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1))
REPRESENTATION_DIM = 256
REPRESENTATION_PIXELS = 1024 * 1024  # larger images are represented by a bounded view (`representation`)
VIEW_GRID = 4  # that view: VIEW_GRID x VIEW_GRID evenly spread square crops
MAX_WIDTH, MAX_NOISE = 4.0, 25.0  # the probe's outputs are fractions of these


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.1)


@dataclass(frozen=True)
class DASRConfig:
    scale: int = 4
    channels: int = 64
    groups: int = 5
    blocks: int = 5
    reduction: int = 8
    probe: bool = True  # the blur and noise probe (the authors' files have none)

    def __post_init__(self) -> None:
        if self.scale not in (2, 3, 4, 8):
            raise ValueError(f"dasr scale must be 2, 3, 4 or 8, not {self.scale}")
        for name in ("channels", "groups", "blocks", "reduction"):
            if getattr(self, name) < 1:
                raise ValueError(f"dasr {name} must be at least 1, not {getattr(self, name)}")
        if self.channels % self.reduction:
            raise ValueError(f"dasr channels ({self.channels}) must be a multiple of the reduction ({self.reduction})")


class DegradationEncoder(nn.Module):
    """E: LR image (B, 3, H, W) -> the 256-d degradation representation (B, 256)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for in_channels, out_channels, stride in ENCODER_WIDTHS:
            layers += [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
                       nn.BatchNorm2d(out_channels), nn.LeakyReLU(0.1)]
        self.body = nn.Sequential(*layers)

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        return self.body(lr).mean(dim=(2, 3))


class DAConv(nn.Module):
    """Degradation-aware convolution: a per-sample depth-wise kernel and channel attention from r."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.channels = channels
        self.kernel = nn.Sequential(nn.Linear(channels, channels, bias=False), nn.LeakyReLU(0.1),
                                    nn.Linear(channels, channels * 9, bias=False))
        self.conv = nn.Conv2d(channels, channels, 1)
        self.attention = nn.Sequential(nn.Conv2d(channels, channels // reduction, 1, bias=False), nn.LeakyReLU(0.1),
                                       nn.Conv2d(channels // reduction, channels, 1, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        kernels = self.kernel(r).reshape(batch * channels, 1, 3, 3).float()
        folded = x.reshape(1, batch * channels, height, width).float()
        # In fp32 always: oneDNN has a fast grouped convolution for it, while bf16 on the CPU falls back to
        # one slow convolution per group (50x slower for a batch of 16 here).
        with torch.autocast(x.device.type, enabled=False):
            depthwise = F.conv2d(folded, kernels, padding=1, groups=batch * channels).reshape(x.shape).to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last):  # keep the layout the following convs are fast in
            depthwise = depthwise.contiguous(memory_format=torch.channels_last)
        attention = self.attention(r[:, :, None, None]).to(x.dtype)
        return self.conv(_lrelu(depthwise)) + x * attention


class DABlock(nn.Module):
    """DA conv, LReLU, conv, LReLU, DA conv, LReLU, conv, + input."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.da1, self.da2 = DAConv(channels, reduction), DAConv(channels, reduction)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        h = _lrelu(self.conv1(_lrelu(self.da1(x, r))))
        return x + self.conv2(_lrelu(self.da2(h, r)))


class DAGroup(nn.Module):
    """`blocks` DA blocks, a conv, + the group's input."""

    def __init__(self, channels: int, blocks: int, reduction: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(DABlock(channels, reduction) for _ in range(blocks))
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        h = x
        for block in self.blocks:
            h = block(h, r)
        return x + self.conv(h)


class DASR(nn.Module):
    """The degradation encoder, the degradation-aware SR network and the probe. See the module docstring."""

    def __init__(self, config: DASRConfig) -> None:
        super().__init__()
        c = config.channels
        self.config = config
        self.encoder = DegradationEncoder()
        self.compress = nn.Sequential(nn.Linear(REPRESENTATION_DIM, c, bias=False), nn.LeakyReLU(0.1))
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.groups = nn.ModuleList(DAGroup(c, config.blocks, config.reduction) for _ in range(config.groups))
        self.body_tail = nn.Conv2d(c, c, 3, padding=1)
        stages: list[nn.Module] = []
        for factor in _shuffles(config.scale):
            stages += [nn.Conv2d(c, factor**2 * c, 3, padding=1), nn.PixelShuffle(factor)]
        self.upsample = nn.Sequential(*stages)
        self.tail = nn.Conv2d(c, 3, 3, padding=1)
        self.probe = (nn.Sequential(nn.Linear(REPRESENTATION_DIM, 64), nn.LeakyReLU(0.1), nn.Linear(64, 2))
                      if config.probe else None)
        self.register_buffer("rgb_mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)

    def sr_parameters(self) -> list[nn.Parameter]:
        """G's parameters: everything but the encoder and the probe."""
        probe = [] if self.probe is None else [*self.probe.parameters()]
        skip = {id(p) for p in [*self.encoder.parameters(), *probe]}
        return [p for p in self.parameters() if id(p) not in skip]

    def super_resolve(self, lr: torch.Tensor, representation: torch.Tensor) -> torch.Tensor:
        """G: LR (B, 3, H, W) and its representation (B, 256) -> SR (B, 3, H*s, W*s)."""
        r = self.compress(representation)
        mean = self.rgb_mean.to(lr.dtype)
        features = self.head(lr - mean)
        h = features
        for group in self.groups:
            h = group(h, r)
        return self.tail(self.upsample(features + self.body_tail(h))) + mean

    def estimate(self, representation: torch.Tensor) -> dict[str, torch.Tensor]:
        """The probe's estimates of the blur width (HR px) and noise level (0..255), each (B,); none without one."""
        if self.probe is None:
            return {}
        out = self.probe(representation.float())
        return {"blur_width": out[:, 0] * MAX_WIDTH, "noise_level": out[:, 1] * MAX_NOISE}

    def forward(self, lr: torch.Tensor, representation: torch.Tensor | None = None) -> torch.Tensor:
        return self.super_resolve(lr, self.encoder(lr) if representation is None else representation)


def _shuffles(scale: int) -> list[int]:
    """The upsampler's pixel-shuffle factors: one 3 for x3, else a 2 per doubling (EDSR's upsampler)."""
    return [3] if scale == 3 else [2] * int(math.log2(scale))


def view_crops(height: int, width: int, max_pixels: int) -> list[tuple[int, int, int]]:
    """The bounded view of an image larger than `max_pixels`: VIEW_GRID x VIEW_GRID square crops (top, left,
    side), evenly spread, all the same size, together at most `max_pixels` pixels."""
    side = min(height, width, math.isqrt(max_pixels // VIEW_GRID**2)) // 4 * 4
    side = max(side, 4)
    tops = [round(i * (height - side) / (VIEW_GRID - 1)) for i in range(VIEW_GRID)]
    lefts = [round(j * (width - side) / (VIEW_GRID - 1)) for j in range(VIEW_GRID)]
    return [(top, left, side) for top in tops for left in lefts]


def representation(model: DASR, image: torch.Tensor, max_pixels: int | None = None) -> torch.Tensor:
    """The representation (1, 256) of a whole LR image (1, 3, H, W).

    Up to `max_pixels` (default REPRESENTATION_PIXELS) the encoder sees the whole image. A larger image is
    represented by `view_crops`: the mean of the crops' pooled features, which is the pooled feature over
    the union of those equal-sized crops (no resampling: downscaling would make the blur look smaller).
    """
    limit = REPRESENTATION_PIXELS if max_pixels is None else min(max_pixels, REPRESENTATION_PIXELS)
    height, width = image.shape[-2:]
    if height * width <= limit:
        return model.encoder(image)
    crops = [image[..., top : top + side, left : left + side] for top, left, side in view_crops(height, width, limit)]
    return torch.cat([model.encoder(crop) for crop in crops]).mean(dim=0, keepdim=True)


class DASRRunner(NetworkRunner):
    """The representation is computed once per image in `prepare` (inside the tiler's out-of-memory back-off,
    whose pixel budget bounds the view) and shared by every tile."""

    def prepare(self, inputs: Inputs, max_pixels: int | None) -> torch.Tensor:
        return representation(self.module, self._on_device(inputs[IMAGE].tensor), max_pixels).float()

    @torch.inference_mode()
    def run_tile(self, tiles: Tiles, state: object, windows: list[Window], precision: str) -> torch.Tensor:
        from upscale_cli.device import autocast

        assert isinstance(state, torch.Tensor), "call prepare() first"
        image = self._on_device(tiles[IMAGE])
        with autocast(self.device, precision):
            out = self.module.super_resolve(image, state.expand(image.shape[0], -1))
        return out.float().cpu().contiguous()


def make_runner(model: DASR, device: torch.device, precision: str, options: RunOptions) -> DASRRunner:
    return DASRRunner(model, model.config.scale, device, precision)


def receptive_radius(config: DASRConfig) -> int:
    """LR pixels on each side that can change one output pixel, the representation held fixed: head 1, per DA
    block 4 (two depth-wise and two dense 3x3 convs), per group 1, the body tail 1, the upsampler 1 per stage
    (its 3x3 convs at 2^k x LR) and the tail's 1 HR px."""
    return 1 + config.groups * (4 * config.blocks + 1) + 1 + len(_shuffles(config.scale)) + 1


def bytes_per_lr_pixel(config: DASRConfig) -> int:
    """fp32 activations per LR pixel at inference, x2 for allocator slack: the widest maps are the upsampler's
    4C at scale/2 and C at scale, beside a few C maps at LR (the block's input, the depth-wise output)."""
    return 2 * 4 * config.channels * (6 + 2 * config.scale**2)


def describe_input(model: DASR, image: torch.Tensor) -> dict[str, float]:
    """The probe's estimates for an LR image: blur width in HR px and noise level on 0..255."""
    if model.probe is None:
        return {}
    estimates = model.estimate(representation(model, image))
    return {name: round(float(value[0]), 2) for name, value in estimates.items()}


def initialize_statistics(model: DASR, lr: torch.Tensor) -> None:
    """Give a fresh encoder's BatchNorm statistics from a batch (for tests: eval mode then normalises sanely)."""
    was_training = model.training
    model.encoder.train()
    with torch.no_grad():
        model.encoder(lr)
    model.train(was_training)


_OFFICIAL_NAMES = (  # the authors' tensor names -> ours (groups g, blocks b, DA convs n)
    (r"E\.encoder_q\.E\.(\d+)\.", r"encoder.body.\1."),
    (r"G\.compress\.0\.", "compress.0."),
    (r"G\.head\.0\.", "head."),
    (r"G\.body\.(\d+)\.body\.(\d+)\.da_conv(\d)\.kernel\.", r"groups.\1.blocks.\2.da\3.kernel."),
    (r"G\.body\.(\d+)\.body\.(\d+)\.da_conv(\d)\.conv\.", r"groups.\1.blocks.\2.da\3.conv."),
    (r"G\.body\.(\d+)\.body\.(\d+)\.da_conv(\d)\.ca\.conv_du\.", r"groups.\1.blocks.\2.da\3.attention."),
    (r"G\.body\.(\d+)\.body\.(\d+)\.conv(\d)\.", r"groups.\1.blocks.\2.conv\3."),
    (r"G\.tail\.0\.(\d+)\.", r"upsample.\1."),
    (r"G\.tail\.1\.", "tail."),
)
_DROPPED = ("E.encoder_q.mlp.", "G.sub_mean.", "G.add_mean.")  # the training-only head; the checked MeanShifts


def recognise(tensors: Mapping[str, torch.Tensor]) -> Recognised | None:
    """The authors' DASR release under our names, with its 0..255 convention converted (module docstring)."""
    if "G.compress.0.weight" not in tensors or "E.encoder_q.E.0.weight" not in tensors:
        return None
    family = "DASR official release (LongguangWang/DASR)"
    groups = len({k.split(".")[2] for k in tensors if k.startswith("G.body.")}) - 1
    blocks = len({k.split(".")[4] for k in tensors if k.startswith("G.body.0.body.")}) - 1
    named, unknown = {}, []
    for key, value in tensors.items():
        ours = _official_name(key, groups, blocks)
        if ours is None and not key.startswith(_DROPPED):
            unknown.append(key)
        elif ours is not None:
            named[ours] = value
    problems = unexpected_tensors(unknown)
    problems += _mean_shift_problems(tensors)
    try:
        channels = tensors["G.head.0.weight"].shape[0]
        stages = [k for k in tensors if re.fullmatch(r"G\.tail\.0\.\d+\.weight", k)]
        first = tensors["G.tail.0.0.weight"].shape[0] // channels
        scale = 4 if len(stages) == 2 else 8 if len(stages) == 3 else math.isqrt(first)
        config = DASRConfig(scale=scale, channels=channels, groups=groups, blocks=blocks,
                            reduction=channels // tensors["G.body.0.body.0.da_conv1.ca.conv_du.0.weight"].shape[0],
                            probe=False)
    except (KeyError, ValueError, ZeroDivisionError) as exc:
        return Recognised(family, {}, named, problems=problems + [f"sizes not readable: {exc}"])
    for name, factor in (("encoder.body.0.weight", 255.0), ("head.weight", 255.0), ("tail.weight", 1 / 255),
                         ("tail.bias", 1 / 255)):
        if name in named:
            named[name] = named[name].double() * factor
    return Recognised(family, asdict(config), named, problems)


def _official_name(key: str, groups: int, blocks: int) -> str | None:
    for pattern, replacement in _OFFICIAL_NAMES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key, count=1)
    group_tail = re.fullmatch(rf"G\.body\.(\d+)\.body\.{blocks}\.(weight|bias)", key)
    if group_tail:
        return f"groups.{group_tail[1]}.conv.{group_tail[2]}"
    if re.fullmatch(rf"G\.body\.{groups}\.(weight|bias)", key):
        return f"body_tail.{key.rsplit('.', 1)[1]}"
    return None


def _mean_shift_problems(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Whether the release's MeanShift 1x1 convs are the identity plus or minus 255 x DIV2K's mean."""
    mean = 255 * torch.tensor(RGB_MEAN, dtype=torch.float64)
    for name, sign in (("G.sub_mean", -1), ("G.add_mean", 1)):
        weight, bias = tensors.get(f"{name}.weight"), tensors.get(f"{name}.bias")
        if weight is None or bias is None or weight.shape != (3, 3, 1, 1) or bias.shape != (3,):
            return [f"missing tensors: {name}.weight, {name}.bias (3 x 3 x 1 x 1 and 3)"]
        if not (torch.allclose(weight.double().flatten(1), torch.eye(3, dtype=torch.float64), atol=1e-4)
                and torch.allclose(bias.double(), sign * mean, atol=1e-2)):
            return [f"{name} is not the identity {'+' if sign > 0 else '-'} 255 x DIV2K's mean colour"]
    return []


DESCRIPTOR = ModelDescriptor(
    id="dasr",
    paper="Wang et al., Unsupervised Degradation Representation Learning for Blind Super-Resolution, CVPR 2021",
    config_type=DASRConfig,
    build=DASR,
    receptive_radius=receptive_radius,
    bytes_per_input_pixel=bytes_per_lr_pixel,
    make_runner=make_runner,
    initialize=initialize_statistics,
    describe_input=describe_input,
    recognise=recognise,
    small_config={"scale": 4, "channels": 16, "groups": 1, "blocks": 2, "reduction": 8},
)
