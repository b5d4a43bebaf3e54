"""SFT-GAN: the SFT generator, steered by the automatic prior, trained adversarially as SRGAN is.

* Batches (`SemanticPatches`): the automatic prior (`archs.sftgan.estimate_prior`) is computed once per
  training image, on its bicubic-downscaled LR as a whole, exactly as inference computes it; each patch
  crops the HR and its prior together (flips and turns alike). The patch's category for the
  discriminator's class head is the prior's most probable class over the patch; background patches
  have none (ignored), as in BasicSR's recipe.
* Generator start (`--init`, an srresnet or srgan checkpoint): the layers whose shapes match are
  copied, with each convolution's BatchNorm folded into it (the residual blocks' two convs, the trunk
  conv, the upsampler's two convs; in the `srresnet` variant also the 9x9 head and tail and every PReLU
  slope, so that it starts as the checkpoint does); the layers left (the SFT layers and the condition
  network; in the other variants also their 3x3 head and tail) start afresh (Kaiming x 0.1, zero bias:
  spec 4.3).
* Optimiser (spec 4.3): the new layers learn at `new_lr_factor` x lr from the start; the copied
  convolutions are held (learning rate 0) for the first `hold_fraction` of the steps, then learn at lr.
* Losses: the SRGAN recipe's (content, adversarial) plus the class head's cross-entropy on real and
  generated images for the discriminator and on the generated ones for the generator (weight
  `class_weight`); spec 4.3's weights 5e-3 / 5e-3 by default.
* Validation: PSNR-Y and friends with the automatic prior (the shared validator passes every input an
  architecture computes for itself); a GAN exports its last EMA weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from upscale_cli.archs.sftgan import CLASSES, SFTGAN, SFTGANConfig, estimate_prior
from upscale_cli.checkpoint import load_model
from upscale_cli.resize import imresize, quantize
from upscale_cli.train.config import TrainConfig
from upscale_cli.train.data import Batch, PatchSampler, data_folders
from upscale_cli.train.optim import cosine_lambda
from upscale_cli.train.recipes import RecipeSpec
from upscale_cli.train.recipes.srgan import GANOptions, SRGANRecipe

BACKGROUND = CLASSES.index("background")


@dataclass(frozen=True)
class SFTGANOptions(GANOptions):
    """SRGAN's settings with spec 4.3's weights, and the faster start of the new layers."""

    adv_weight: float = 5e-3
    class_weight: float = 5e-3
    new_lr_factor: float = 5.0  # SFT, condition, head and tail layers: this x lr
    hold_fraction: float = 0.1  # the copied convolutions learn only after this fraction of the steps


class SemanticPatches(PatchSampler):
    """HR patches with the matching crop of their image's automatic prior (see the module docstring)."""

    def __init__(self, folders: list[Path], patch: int, scale: int, batch: int, seed: int) -> None:
        super().__init__(folders, patch, scale, batch, seed)
        self.images = [with_prior(image, scale) for image in self.images]

    def next_batch(self) -> Batch:
        crops = torch.stack([self._crop() for _ in range(self.batch)])
        hr = crops[:, :3].float().div(255)
        prior = crops[:, 3:].float()
        prior = prior / prior.sum(dim=1, keepdim=True)
        lr = quantize(imresize(hr, scale=1 / self.scale))
        return Batch(lr, hr, {"prior": prior, "category": patch_category(prior)})


def with_prior(image: torch.Tensor, scale: int) -> torch.Tensor:
    """An HR image (3, H, W) uint8, cropped to a multiple of `scale`, with its automatic prior stacked
    below it as 8 more uint8 channels (probability x 255): one tensor, so one crop takes both."""
    _, height, width = image.shape
    hr = image[:, : height // scale * scale, : width // scale * scale]
    lr = quantize(imresize(hr.float().div(255)[None], scale=1 / scale))
    prior = estimate_prior(lr)[0]
    return torch.cat([hr, prior.mul(255).round().to(torch.uint8)])


def patch_category(prior: torch.Tensor) -> torch.Tensor:
    """The most probable class of each patch's mean prior (B,), -1 where that is background."""
    category = prior.mean(dim=(2, 3)).argmax(dim=1)
    return torch.where(category == BACKGROUND, -1, category)


def fold_batchnorm(conv: nn.Conv2d, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of one convolution equal to `conv` followed by `norm` in eval mode (or by
    nothing when `norm` is not a BatchNorm)."""
    weight = conv.weight.detach()
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros(weight.shape[0])
    if not isinstance(norm, nn.BatchNorm2d):
        return weight.clone(), bias.clone()
    factor = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
    return weight * factor[:, None, None, None], (bias - norm.running_mean) * factor + norm.bias.detach()


def copy_srresnet_convolutions(target: SFTGAN, path: Path) -> list[str]:
    """Copy an srresnet/srgan checkpoint's layers into `target` where the shapes match (see the module
    docstring); returns the target's parameter names that were set."""
    source, info = load_model(path)
    if info.arch != "srresnet" or info.scale != 4:
        raise ValueError(f"{path}: is {info.arch} x{info.scale}, need an srresnet (or srgan) x4 checkpoint")
    if source.config.channels != target.config.channels or len(source.trunk) != len(target.blocks):
        raise ValueError(f"{path}: {source.config.channels} channels x {len(source.trunk)} blocks do not match "
                         f"sftgan's {target.config.channels} x {len(target.blocks)}")
    variant = target.config.variant
    pairs = [(f"blocks.{i}.conv1", block.body[0], block.body[1]) for i, block in enumerate(source.trunk)]
    pairs += [(f"blocks.{i}.conv2", block.body[3], block.body[4]) for i, block in enumerate(source.trunk)]
    pairs.append(("trunk_conv", source.trunk_tail[0], source.trunk_tail[1]))
    if variant != "paper":  # the paper variant's upsampler convs are 64 -> 64, not -> 256
        pairs += [("upsample.0", source.upsample[0], nn.Identity()), ("upsample.3", source.upsample[3], nn.Identity())]
    if variant == "srresnet":  # its 9x9 ends and PReLUs are SRResNet's own
        pairs += [("head.0", source.head[0], nn.Identity()), ("tail", source.tail, nn.Identity())]
    modules = dict(target.named_modules())
    copied = []
    with torch.no_grad():
        for name, conv, norm in pairs:
            weight, bias = fold_batchnorm(conv, norm)
            modules[name].weight.copy_(weight)
            modules[name].bias.copy_(bias)
            copied += [f"{name}.weight", f"{name}.bias"]
        if variant == "srresnet":
            slopes = [("head.1", source.head[1]), ("upsample.2", source.upsample[2]), ("upsample.5", source.upsample[5])]
            slopes += [(f"blocks.{i}.act", block.body[2]) for i, block in enumerate(source.trunk)]
            for name, prelu in slopes:
                modules[name].weight.copy_(prelu.weight)
                copied.append(f"{name}.weight")
    return copied


def initialise_new_layers(model: SFTGAN, keep: set[str]) -> None:
    """Spec 4.3: every layer not copied gets Kaiming-normal weights x 0.1 and zero biases."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d) and f"{name}.weight" not in keep:
                nn.init.kaiming_normal_(module.weight)
                module.weight.mul_(0.1)
                if module.bias is not None:
                    module.bias.zero_()


def held_then(hold: int, config: TrainConfig) -> Callable[[int], float]:
    """A learning-rate factor of 0 for the first `hold` steps, then the shared warm-up and cosine."""
    schedule = cosine_lambda(config.iters, config.warmup, config.lr_floor)
    return lambda step: 0.0 if step < hold else schedule(step)


class SFTGANRecipe(SRGANRecipe):
    arch_id = "sftgan"
    categories = len(CLASSES)

    def make_generator(self, config: TrainConfig) -> tuple[SFTGANConfig, SFTGAN]:
        arch_config = SFTGANConfig(scale=config.scale, **config.arch)
        torch.manual_seed(config.seed)
        model = SFTGAN(arch_config)
        self.copied = copy_srresnet_convolutions(model, Path(config.init)) if config.init else []
        initialise_new_layers(model, set(self.copied))
        return arch_config, model

    def generator_optimizer(self) -> tuple[torch.optim.Optimizer, Any]:
        config, options = self.config, self.config.options
        named = dict(self.generator.named_parameters())
        copied = [named[name] for name in self.copied]
        new = [parameter for name, parameter in named.items() if name not in set(self.copied)]
        optimizer = torch.optim.Adam([{"params": new, "lr": config.lr * options.new_lr_factor},
                                      {"params": copied, "lr": config.lr}], betas=(0.9, 0.999))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [cosine_lambda(config.iters, config.warmup, config.lr_floor),
                        held_then(round(options.hold_fraction * config.iters), config)])
        return optimizer, schedule

    def generate(self, batch: Batch) -> torch.Tensor:
        return self.g_net(batch.lr.contiguous(memory_format=torch.channels_last), batch.extras["prior"])

    def batches(self, seed: int) -> SemanticPatches:
        config = self.config
        return SemanticPatches(data_folders(config.data), config.patch, config.scale, config.batch, seed)


RECIPE = RecipeSpec(build=SFTGANRecipe, options=SFTGANOptions, defaults={"lr": 1e-4})
