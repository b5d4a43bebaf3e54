"""The SRGAN discriminator (Ledig et al. 2017) and the fixed VGG19 feature extractor for content loss."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

# (channels, stride) of the eight 3x3 convolutions, as in the paper.
_CONV_PLAN = ((64, 1), (64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1), (512, 2))


class Judgement(NamedTuple):
    """What the discriminator says of a batch: real-vs-generated logits (B,), its feature maps (for feature
    matching) and, with a class head, logits over the image categories (B, classes), else None."""

    logit: torch.Tensor
    maps: list[torch.Tensor]
    classes: torch.Tensor | None


class Discriminator(nn.Module):
    """Eight conv-BN-LReLU layers (no BN on the first), dense 1024, LReLU, dense 1 (a logit).

    With `patch` given the features are flattened as in the paper (512 x patch/16 x patch/16);
    with `patch=None` they are averaged globally, so any input size works. With `classes` > 0 a second
    head of the same shape classifies the image's category (SFT-GAN's auxiliary head, AC-GAN style).
    """

    def __init__(self, patch: int | None = 96, width: int = 64, classes: int = 0) -> None:
        super().__init__()
        layers = []
        channels_in = 3
        for index, (channels, stride) in enumerate(_CONV_PLAN):
            channels = channels * width // 64
            block = [nn.Conv2d(channels_in, channels, 3, stride=stride, padding=1)]
            if index > 0:
                block.append(nn.BatchNorm2d(channels))
            block.append(nn.LeakyReLU(0.2))
            layers.append(nn.Sequential(*block))
            channels_in = channels
        self.features = nn.ModuleList(layers)
        self.pool = nn.Identity() if patch else nn.AdaptiveAvgPool2d(1)
        flat = channels_in * ((patch // 16) ** 2 if patch else 1)

        def head(outputs: int) -> nn.Sequential:
            return nn.Sequential(nn.Flatten(), nn.Linear(flat, 1024), nn.LeakyReLU(0.2), nn.Linear(1024, outputs))

        self.head = head(1)
        self.class_head = head(classes) if classes else None

    def forward(self, image: torch.Tensor) -> Judgement:
        maps = []
        x = image
        for layer in self.features:
            x = layer(x)
            maps.append(x)
        pooled = self.pool(x)
        classes = self.class_head(pooled) if self.class_head is not None else None
        return Judgement(self.head(pooled).squeeze(1), maps, classes)


# torchvision's VGG19 `features` indices: convolutions, with ReLU after each and max-pools between blocks.
_VGG19_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)
VGG54_INDEX = 35  # index of the ReLU after conv5_4 in torchvision's layout


class VGG19Features(nn.Module):
    """VGG19 `features` up to and including the ReLU after conv5_4 (phi_5,4 of the SRGAN paper), frozen.

    Inputs are RGB in [0, 1]; ImageNet normalisation is applied inside. Feature maps are divided by
    12.75 as in the paper, so the MSE is on the paper's scale.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels_in = 3
        for item in _VGG19_PLAN:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels_in, int(item), 3, padding=1), nn.ReLU()]
                channels_in = int(item)
        self.features = nn.Sequential(*layers[: VGG54_INDEX + 1])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.features((image - self.mean) / self.std) / 12.75

    @classmethod
    def from_file(cls, path: Path) -> VGG19Features:
        """Load torchvision-layout VGG19 weights (`features.N.weight`) from safetensors, or a .pth with weights_only."""
        if Path(path).suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        model = cls()
        wanted = model.state_dict()
        picked = {k: tensors[k] for k in wanted if k in tensors}
        missing = sorted(set(wanted) - set(picked))
        if missing:
            raise ValueError(f"{path}: not torchvision VGG19 weights (missing {', '.join(missing[:4])})")
        model.load_state_dict(picked)
        return model.eval().requires_grad_(False)
