"""Validation during training: the same figures as `upscale bench quality`, on the EMA generator.

This is the validator of every recipe whose generator maps LR to SR (`model(lr)`); recipes with other
figures (a flow's likelihood and samples) bring their own through `Recipe.validator`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from upscale_cli.archs import get_architecture
from upscale_cli.bench.quality import ImagePair, evaluate, load_pairs
from upscale_cli.train.config import TrainConfig


def make_validator(config: TrainConfig, arch_id: str) -> Callable[[nn.Module], dict[str, Any]] | None:
    """A function scoring a generator on `config.val` in fp32 on its own device, or None without a val folder.
    Inputs besides the image that the architecture computes for itself (an automatic prior) are passed."""
    if not config.val:
        return None
    pairs = load_pairs(Path(config.val), config.scale)
    computed = [extra for extra in get_architecture(arch_id).extra_inputs if extra.default is not None]

    @torch.no_grad()
    def validate(model: nn.Module) -> dict[str, Any]:
        model.eval()
        device = next(model.parameters()).device

        def run(lr: torch.Tensor) -> torch.Tensor:
            image = lr[None].to(device).contiguous()
            return model(image, **{extra.name: extra.default(image) for extra in computed})[0].float().cpu()

        return dict(evaluate(run, pairs, config.scale)["mean"])

    return validate


def center_crop_pair(pair: ImagePair, scale: int, multiple: int, size: int) -> ImagePair:
    """The centre crop (at most `size` HR px a side, a multiple of `multiple`) of HR and the matching LR."""
    _, height, width = pair.hr.shape
    crop_h, crop_w = min(size, height) // multiple * multiple, min(size, width) // multiple * multiple
    if crop_h < multiple or crop_w < multiple:
        raise ValueError(f"{pair.name}: HR {height}x{width} is smaller than the {multiple} px the model needs")
    top = (height - crop_h) // 2 // multiple * multiple
    left = (width - crop_w) // 2 // multiple * multiple
    hr = pair.hr[:, top : top + crop_h, left : left + crop_w]
    lr = pair.lr[:, top // scale : (top + crop_h) // scale, left // scale : (left + crop_w) // scale]
    return ImagePair(pair.name, hr, lr)
