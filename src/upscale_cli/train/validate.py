"""Validation during training: the same figures as `upscale bench quality`, on the EMA generator.

SRFlow gets its own figures (`make_flow_validator`): NLL, PSNR-Y at two temperatures, LR-consistency
and diversity, on centre crops so that validation stays cheap on a CPU.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from upscale_cli.bench.quality import ImagePair, diversity, evaluate, load_pairs, lr_consistency, mean_figures
from upscale_cli.metrics import sr_figures
from upscale_cli.train.config import TrainConfig


def make_validator(config: TrainConfig) -> Callable[[nn.Module], dict[str, Any]] | None:
    """A function scoring a generator on `config.val` in fp32, or None without a val folder."""
    if not config.val:
        return None
    if config.model == "srflow":
        return make_flow_validator(config)
    pairs = load_pairs(Path(config.val), config.scale)

    @torch.no_grad()
    def validate(model: nn.Module) -> dict[str, Any]:
        model.eval()
        result = evaluate(lambda lr: model(lr[None].contiguous())[0].float(), pairs, config.scale)
        return dict(result["mean"])

    return validate


FLOW_TAU = 0.8  # sampling temperature of the stochastic figures
FLOW_SAMPLES = 3  # samples per image for the tau 0.8 figures and the diversity


def center_crop_pair(pair: ImagePair, scale: int, multiple: int, size: int) -> ImagePair:
    """The centre crop (at most `size` HR px a side, a multiple of `multiple`) of HR and the matching LR."""
    _, height, width = pair.hr.shape
    crop_h, crop_w = min(size, height) // multiple * multiple, min(size, width) // multiple * multiple
    if crop_h < multiple or crop_w < multiple:
        raise ValueError(f"{pair.name}: HR {height}x{width} is smaller than the {multiple} px the flow needs")
    top = (height - crop_h) // 2 // multiple * multiple
    left = (width - crop_w) // 2 // multiple * multiple
    hr = pair.hr[:, top : top + crop_h, left : left + crop_w]
    lr = pair.lr[:, top // scale : (top + crop_h) // scale, left // scale : (left + crop_w) // scale]
    return ImagePair(pair.name, hr, lr)


def make_flow_validator(config: TrainConfig) -> Callable[[nn.Module], dict[str, Any]]:
    """SRFlow figures on HR centre crops of at most `config.val_crop` px, averaged over the images:

    nll_bpd (bits/dim with the training noise, fixed seed), psnr_y_tau0 and lr_psnr_tau0 of the tau 0
    output, psnr_y_tau08 / lr_psnr_tau08 (means over 3 samples at tau 0.8), diversity_tau08 (mean
    per-pixel std of those samples, 0..255). Seeds are fixed per image, so figures are reproducible.
    """
    levels = int(math.log2(config.scale)) + 1
    pairs = [center_crop_pair(p, config.scale, 2**levels, config.val_crop)
             for p in load_pairs(Path(config.val), config.scale)]

    @torch.no_grad()
    def validate(model: nn.Module) -> dict[str, Any]:
        model.eval()
        figures = []
        for index, pair in enumerate(pairs):
            generator = torch.Generator().manual_seed(index)
            hr, lr = pair.hr[None], pair.lr[None]
            nll = model.nll_bits_per_dim(hr, lr, noise=config.hr_noise, generator=generator).item()
            mean = model.sample(lr, tau=0.0)[0]
            draws = list(model.sample(lr.expand(FLOW_SAMPLES, -1, -1, -1), tau=FLOW_TAU, generator=generator))
            figures.append({
                "nll_bpd": nll,
                "psnr_y_tau0": sr_figures(mean, pair.hr, border=config.scale)["psnr_y"],
                "lr_psnr_tau0": lr_consistency(mean, pair.lr),
                "psnr_y_tau08": mean_figures([sr_figures(d, pair.hr, border=config.scale) for d in draws])["psnr_y"],
                "lr_psnr_tau08": sum(lr_consistency(d, pair.lr) for d in draws) / len(draws),
                "diversity_tau08": diversity(draws),
            })
        return mean_figures(figures)

    return validate
