"""SFT-GAN (Wang et al., CVPR 2018): super-resolution steered by a semantic prior through Spatial Feature
Transform layers.

Written from the paper and `shared/research/model_specs.md` section 4 (the official code was not copied).

* The prior: 8 per-pixel class probabilities at HR size, in the paper's channel order (`CLASSES`).
* Condition network (shared by every SFT layer): conv 4x4 stride 4 (8 -> 128), LReLU(0.1), three
  [conv 1x1 128 -> 128, LReLU(0.1)], conv 1x1 128 -> 32: a 32-channel condition at LR size.
* SFT layer: gamma and beta each from the condition by conv 1x1 (32 -> 32), LReLU, conv 1x1 (32 -> 64);
  output F * gamma + beta (`variant="paper"`, the Torch model of the paper) or F * (gamma + 1) + beta
  (`variant="pytorch"`, the released PyTorch model), so that gamma = 1 (paper) or 0 (pytorch) with
  beta = 0 is the identity.
* Generator: conv 3x3 -> F0; `blocks` residual blocks (SFT, conv, ReLU, SFT, conv, + input; the paper
  variant has a ReLU after each SFT); SFT, conv, + F0; upsampling x2 twice (pytorch: conv to 4C, pixel
  shuffle, ReLU; paper: nearest x2, conv, ReLU); conv, ReLU, conv to RGB. No normalisation.
  Parameters: 1.83 M (pytorch) and 1.61 M (paper) at 64 channels and 16 blocks.
* `variant="srresnet"`: the pytorch variant laid out on our SRResNet's shapes (9x9 head + PReLU, PReLU
  after each block's first conv and each pixel shuffle, one 9x9 conv to RGB), so that spec 4.3's start
  from a trained SR generator is exact: with every SFT at the identity, it computes what the srresnet/srgan
  checkpoint it was copied from computes (BatchNorm folded in). 1.82 M parameters.

Images are RGB in [0, 1]; the prior is the extra input `prior` at the output's size, which the tiler
crops, pads and turns with the image.

The authors' generators (xinntao/SFTGAN: `SFTGAN_noBN_OST_bg.pth`, trained in PyTorch, is the pytorch
variant; `SFTGAN_torch.pth`, converted from Torch7, the paper variant; `official_checkpoints.md` section 3)
are read by `recognise`, the variant told by the upsampler's layout. Their segmentation network
(`segmentation_OST_bic.pth`, a 52 M-parameter ResNet-101 OutdoorSceneSeg) is a network upscale does not
have: it is refused, saying so; the converted generators take the automatic prior or `--input prior=`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from upscale_cli.archs.base import AT_OUTPUT, ExtraInput, ModelDescriptor, Recognised, unexpected_tensors
from upscale_cli.rewrite import convolve_tail_before_shuffle

CLASSES = ("background", "sky", "water", "grass", "mountain", "building", "plant", "animal")
CONDITION_CHANNELS = 32
VARIANTS = ("pytorch", "paper", "srresnet")


@dataclass(frozen=True)
class SFTGANConfig:
    scale: int = 4
    channels: int = 64
    blocks: int = 16
    variant: str = "srresnet"  # the one shipped: see the module docstring

    def __post_init__(self) -> None:
        if self.scale != 4:
            raise ValueError(f"sftgan is an x4 model (its condition network reads 4x4 prior cells), not x{self.scale}")
        if self.variant not in VARIANTS:
            raise ValueError(f"sftgan variant must be one of {', '.join(VARIANTS)}, not {self.variant!r}")
        if self.channels < 1 or self.blocks < 1:
            raise ValueError("sftgan channels and blocks must be at least 1")


class ConditionNetwork(nn.Module):
    """The prior (B, 8, 4h, 4w) -> the shared condition (B, 32, h, w)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(len(CLASSES), 128, 4, stride=4), nn.LeakyReLU(0.1)]
        for _ in range(3):
            layers += [nn.Conv2d(128, 128, 1), nn.LeakyReLU(0.1)]
        self.body = nn.Sequential(*layers, nn.Conv2d(128, CONDITION_CHANNELS, 1))

    def forward(self, prior: torch.Tensor) -> torch.Tensor:
        return self.body(prior)


class SFTLayer(nn.Module):
    """A per-pixel affine transform of the features, predicted from the condition."""

    def __init__(self, channels: int, variant: str) -> None:
        super().__init__()
        slope = 0.01 if variant == "paper" else 0.1
        self.offset = 0.0 if variant == "paper" else 1.0

        def branch() -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(CONDITION_CHANNELS, CONDITION_CHANNELS, 1), nn.LeakyReLU(slope),
                                 nn.Conv2d(CONDITION_CHANNELS, channels, 1))

        self.gamma, self.beta = branch(), branch()

    def forward(self, features: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return features * (self.gamma(condition) + self.offset) + self.beta(condition)


def activation(variant: str) -> nn.Module:
    """ReLU, or SRResNet's PReLU (one learned slope) in the srresnet variant."""
    return nn.PReLU() if variant == "srresnet" else nn.ReLU()


class SFTBlock(nn.Module):
    """SFT, conv, ReLU, SFT, conv, + input (the paper variant: a ReLU after each SFT instead)."""

    def __init__(self, channels: int, variant: str) -> None:
        super().__init__()
        self.sft1, self.sft2 = SFTLayer(channels, variant), SFTLayer(channels, variant)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = activation(variant)
        self.paper = variant == "paper"

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if self.paper:
            h = self.conv1(self.act(self.sft1(x, condition)))
            return x + self.conv2(self.act(self.sft2(h, condition)))
        h = self.act(self.conv1(self.sft1(x, condition)))
        return x + self.conv2(self.sft2(h, condition))


class SFTGAN(nn.Module):
    """The SFT-GAN generator; `forward(lr, prior)` with the prior at 4x the LR's size."""

    def __init__(self, config: SFTGANConfig) -> None:
        super().__init__()
        c = config.channels
        self.config = config
        self.condition = ConditionNetwork()
        srresnet = config.variant == "srresnet"
        self.head = nn.Sequential(nn.Conv2d(3, c, 9, padding=4), nn.PReLU()) if srresnet else nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.ModuleList(SFTBlock(c, config.variant) for _ in range(config.blocks))
        self.trunk_sft = SFTLayer(c, config.variant)
        self.trunk_conv = nn.Conv2d(c, c, 3, padding=1)
        stages: list[nn.Module] = []
        for _ in range(2):
            if config.variant == "paper":
                stages += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1), nn.ReLU()]
            else:
                stages += [nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2), activation(config.variant)]
        self.upsample = nn.Sequential(*stages)
        self.tail = nn.Conv2d(c, 3, 9, padding=4) if srresnet else nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, 3, 3, padding=1))

    def forward(self, lr: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        if tuple(prior.shape[-2:]) != (4 * lr.shape[-2], 4 * lr.shape[-1]):
            raise ValueError(f"the prior {tuple(prior.shape[-2:])} must be 4x the LR {tuple(lr.shape[-2:])}")
        condition = self.condition(prior.to(lr.dtype))
        features = self.head(lr)
        h = features
        for block in self.blocks:
            h = block(h, condition)
        h = features + self.trunk_conv(self.trunk_sft(h, condition))
        return self.tail(self.upsample(h))


def receptive_radius(config: SFTGANConfig) -> int:
    """LR pixels on each side that can change one output pixel: the head 1, 2 per block, the trunk conv 1,
    the upsampler's convs 1 + 1 (at LR and 2x LR, counted whole) and the tail's 2 at 4x (1 LR px); the
    srresnet variant's 9x9 head adds 3 and its 9x9 tail 4 HR px (1 LR px, as before). The prior's condition
    is per LR pixel (4x4 cells, then 1x1 convs) and adds nothing."""
    head = 4 if config.variant == "srresnet" else 1
    return head + 2 * config.blocks + 1 + 2 + 1


_SFT_PARTS = {"SFT_scale_conv0": "gamma.0", "SFT_scale_conv1": "gamma.2", "SFT_shift_conv0": "beta.0",
              "SFT_shift_conv1": "beta.2"}
_HR_BRANCH = {"pytorch": {"0": "upsample.0", "3": "upsample.3", "6": "tail.0", "8": "tail.2"},
              "paper": {"1": "upsample.1", "4": "upsample.4", "6": "tail.0", "8": "tail.2"}}


def recognise(tensors: Mapping[str, torch.Tensor]) -> Recognised | None:
    """The authors' SFT-GAN generators under our names; their segmentation network is named and refused."""
    if "deconv.weight" in tensors and "feature.47.weight" in tensors:
        return Recognised("SFT-GAN's segmentation network (OutdoorSceneSeg)", {}, {}, problems=[
            "upscale has no network for it (a 52 M-parameter ResNet-101 segmenter); convert the SFT-GAN generator "
            "instead, which takes upscale's automatic prior or --input prior=FILE"])
    if "CondNet.0.weight" not in tensors or "sft_branch.0.sft0.SFT_scale_conv0.weight" not in tensors:
        return None
    variant = "pytorch" if "HR_branch.0.weight" in tensors else "paper"
    family = f"SFT-GAN official release ({'SFTGAN_noBN_OST_bg, PyTorch' if variant == 'pytorch' else 'SFTGAN_torch, Torch7'})"
    blocks = len({key.split(".")[1] for key in tensors if key.startswith("sft_branch.")}) - 2
    named, unknown = {}, []
    for key, value in tensors.items():
        ours = _official_name(key, blocks, variant)
        if ours is None:
            unknown.append(key)
        else:
            named[ours] = value
    problems = unexpected_tensors(unknown)
    config = SFTGANConfig(channels=tensors["conv0.weight"].shape[0], blocks=max(blocks, 0), variant=variant)
    return Recognised(family, asdict(config), named, problems)


def _official_name(key: str, blocks: int, variant: str) -> str | None:
    head, _, leaf = key.rpartition(".")
    if head == "conv0":
        return f"head.{leaf}"
    if head.startswith("CondNet."):
        return f"condition.body.{head[8:]}.{leaf}"
    if head.startswith("HR_branch."):
        ours = _HR_BRANCH[variant].get(head[10:])
        return None if ours is None else f"{ours}.{leaf}"
    if head == f"sft_branch.{blocks + 1}":
        return f"trunk_conv.{leaf}"
    sft = re.fullmatch(r"sft_branch\.(\d+)\.(?:(sft[01])\.)?(\w+)", head)
    if sft is None:
        return None
    index, layer, part = int(sft[1]), sft[2], sft[3]
    if index == blocks and layer is None and part in _SFT_PARTS:
        return f"trunk_sft.{_SFT_PARTS[part]}.{leaf}"
    if index < blocks and layer is not None and part in _SFT_PARTS:
        return f"blocks.{index}.sft{int(layer[-1]) + 1}.{_SFT_PARTS[part]}.{leaf}"
    if index < blocks and layer is None and part in ("conv0", "conv1"):
        return f"blocks.{index}.conv{int(part[-1]) + 1}.{leaf}"
    return None


DESCRIPTOR = ModelDescriptor(
    id="sftgan",
    paper="Wang et al., Recovering Realistic Texture in Image Super-resolution by Deep Spatial Feature Transform, "
          "CVPR 2018",
    config_type=SFTGANConfig,
    build=SFTGAN,
    receptive_radius=receptive_radius,
    # fp32 activations per LR pixel: the upsampler's 4C maps at 2x and C maps at 4x, and the prior's 8 and
    # 128-channel condition maps at HR and LR, x2 for allocator slack.
    bytes_per_input_pixel=lambda cfg: 2 * 4 * (cfg.channels * (6 + 2 * 16) + 8 * 16 + 4 * 128),
    extra_inputs=(ExtraInput("prior", len(CLASSES), AT_OUTPUT,
                             "8 class probabilities per output pixel: " + ", ".join(CLASSES),
                             load=lambda value, height, width: prior_from(value, height, width),
                             default=lambda image: estimate_prior(image)),),
    recognise=recognise,
    for_inference=convolve_tail_before_shuffle,  # the srresnet variant's 9x9 RGB tail, before the last shuffle
    small_config={"scale": 4, "channels": 8, "blocks": 2},
)


# ----- the automatic prior ------------------------------------------------------------------------------

TEXTURE_WINDOW = 9  # HR px (about 2 LR px): the local standard deviation of luma that tells smooth from textured


def _box_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    pad = size // 2
    return F.avg_pool2d(F.pad(x, (pad,) * 4, mode="reflect"), size, stride=1)


def prior_cues(lr: torch.Tensor) -> dict[str, torch.Tensor]:
    """The cues of the automatic prior, each (B, 4h, 4w) on the bicubic-upsampled LR (B, 3, h, w)."""
    from upscale_cli.resize import imresize

    up = imresize(lr.float(), scale=4).clamp(0, 1)
    r, g, b = up[:, 0], up[:, 1], up[:, 2]
    brightest, darkest = up.amax(dim=1), up.amin(dim=1)
    luma = (0.299 * r + 0.587 * g + 0.114 * b)[:, None]
    variance = (_box_mean(luma**2, TEXTURE_WINDOW) - _box_mean(luma, TEXTURE_WINDOW) ** 2).clamp(min=0)
    smooth = torch.exp(-variance.sqrt()[:, 0] / 0.03)  # 1: flat, 0: strongly textured
    rows = torch.linspace(1.0, -1.0, up.shape[-2], dtype=up.dtype, device=up.device)[None, :, None]
    return {
        "smooth": smooth,
        "bright": luma[:, 0],
        "blue": ((b - torch.maximum(r, g)) * 4).clamp(-1, 1),
        "green": ((g - torch.maximum(r, b)) * 4).clamp(-1, 1),
        "grey": 1 - ((brightest - darkest) / (brightest + 1e-6) * 2).clamp(0, 1),
        "top": rows.expand_as(smooth),  # 1 at the top of the image, -1 at the bottom
    }


def estimate_prior(lr: torch.Tensor) -> torch.Tensor:
    """The automatic prior (B, 8, 4h, 4w) for LR images (B, 3, h, w): class probabilities from a fixed,
    hand-set rule on colour, smoothness and height in the image, on the bicubic-upsampled LR.

    What it is: a softmax over additive scores (sky: smooth, bright, blue or grey, high; water: smooth, blue,
    low; grass: green, smooth, low; plant: green, textured; building: grey, textured; mountain and animal
    rare; background the reference 0). Deterministic, computed on the whole image before tiling, and used
    alike in training and inference. What it is not: a segmentation network. It knows nothing of shapes or
    objects, takes a blue car for water and a green wall for a plant, and never finds an animal; its
    figures on labelled scenes are in weights/README.md (benchmarks/prior_iou.py). No labelled data for
    the eight classes exists on this project's machines to train a better one.
    """
    c = prior_cues(lr)
    sky_colour = torch.maximum(c["blue"], c["grey"] * c["bright"])
    scores = [
        torch.zeros_like(c["smooth"]),  # background
        2.5 * c["smooth"] + 2.0 * c["top"] + 2.0 * (c["bright"] - 0.5) + 2.0 * sky_colour - 2.5,  # sky
        2.0 * c["smooth"] + 2.5 * c["blue"] - 1.5 * c["top"] - 2.5,  # water
        3.0 * c["green"] + 1.0 * c["smooth"] - 1.0 * c["top"] - 1.5,  # grass
        torch.full_like(c["smooth"], -2.0),  # mountain
        1.5 * c["grey"] + 1.5 * (1 - c["smooth"]) + 0.5 * c["top"] - 1.5,  # building
        3.0 * c["green"] + 1.5 * (1 - c["smooth"]) - 1.0,  # plant
        torch.full_like(c["smooth"], -3.0),  # animal
    ]
    return torch.softmax(torch.stack(scores, dim=1), dim=1)


# ----- priors given by the user -------------------------------------------------------------------------

PROBABILITY_TOLERANCE = 1e-3  # how far a given probability map may sum from 1 per pixel


def prior_from(value: str, lr_height: int, lr_width: int) -> torch.Tensor:
    """A prior from the command line: `class:NAME` (one class everywhere) or a prior file (`load_prior`)."""
    if value.startswith("class:"):
        return class_prior(value[len("class:"):], 4 * lr_height, 4 * lr_width)
    return load_prior(value, lr_height, lr_width)


def class_prior(name: str, height: int, width: int) -> torch.Tensor:
    """One class everywhere: (1, 8, height, width), the paper's demonstration of steering texture by the prior."""
    if name not in CLASSES:
        raise ValueError(f"unknown class {name!r} (the classes are {', '.join(CLASSES)})")
    prior = torch.zeros(1, len(CLASSES), height, width)
    prior[:, CLASSES.index(name)] = 1.0
    return prior


def load_prior(path: str | Path, lr_height: int, lr_width: int) -> torch.Tensor:
    """A prior file as probabilities (1, 8, 4 * lr_height, 4 * lr_width).

    Accepted: an index image (PNG, TIFF, ... of values 0..7) or a probability map (`.npy`, or a
    `.safetensors` file holding one tensor; 8 channels first or last, values in [0, 1] summing to 1 per
    pixel), at the LR's or the output's size; an LR-size prior is repeated to 4x4 cells (nearest).
    Anything else is a ValueError naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        probabilities = _read_probabilities(path) if path.suffix.lower() in (".npy", ".safetensors") \
            else _read_index_image(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    height, width = probabilities.shape[-2:]
    if (height, width) == (lr_height, lr_width):
        probabilities = probabilities.repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1)
    elif (height, width) != (4 * lr_height, 4 * lr_width):
        raise ValueError(f"{path}: the prior is {width}x{height}; it must be the LR's size ({lr_width}x{lr_height}) "
                         f"or the output's ({4 * lr_width}x{4 * lr_height})")
    return probabilities[None].float()


def _read_index_image(path: Path) -> torch.Tensor:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"an index image has one channel of class numbers 0..7, not mode {image.mode}")
            indices = np.asarray(image).astype(np.int64)
    except UnidentifiedImageError:
        raise ValueError("not an image, .npy or .safetensors file") from None
    if indices.min() < 0 or indices.max() >= len(CLASSES):
        raise ValueError(f"class numbers must lie in 0..{len(CLASSES) - 1}, found {indices.min()}..{indices.max()}")
    return F.one_hot(torch.from_numpy(indices), len(CLASSES)).permute(2, 0, 1).double()


def _read_probabilities(path: Path) -> torch.Tensor:
    import numpy as np

    if path.suffix.lower() == ".npy":
        array = torch.from_numpy(np.load(path, allow_pickle=False)).double()
    else:
        from safetensors.torch import load_file

        tensors = load_file(str(path))
        if len(tensors) != 1:
            raise ValueError(f"a prior .safetensors file holds one tensor, this one holds {len(tensors)}")
        array = next(iter(tensors.values())).double()
    array = array[0] if array.ndim == 4 and array.shape[0] == 1 else array
    if array.ndim != 3 or len(CLASSES) not in (array.shape[0], array.shape[-1]):
        raise ValueError(f"a probability map has {len(CLASSES)} channels (first or last), got shape {tuple(array.shape)}")
    probabilities = array if array.shape[0] == len(CLASSES) else array.permute(2, 0, 1)
    if probabilities.min() < 0 or probabilities.max() > 1:
        raise ValueError("probabilities must lie in [0, 1]")
    worst = (probabilities.sum(dim=0) - 1).abs().max().item()
    if worst > PROBABILITY_TOLERANCE:
        raise ValueError(f"the probabilities of a pixel must sum to 1 (within {PROBABILITY_TOLERANCE}); "
                         f"one sums to {1 + worst:.4f} or {1 - worst:.4f}")
    return probabilities
