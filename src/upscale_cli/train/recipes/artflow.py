"""ArtFlow: the projection flow trained with content and style losses on a frozen loss network (spec 5.3).

* Batches (`StylePairs`): content patches from `--data` (every training folder) and style patches from
  the `style` folder, each image first resized so its shorter side is twice the patch (the paper: 512,
  then random 256 crops), then cropped, flipped and turned at random.
* Step: the first step only initialises ActNorm from a content batch (no gradient), as the paper's
  code does. Then output = PFN^-1(T(PFN(content), PFN(style))) and
  loss = content_weight x MSE(deepest features of output, of content)
       + style_weight x sum over the layers of [MSE(channel means) + MSE(channel stds)] against the style's.
* Loss networks (`loss_net`), all frozen: `vgg19` (the paper's relu1_1 .. relu4_1, from `vgg_weights`, a
  torchvision-layout file); `stvgg` (the shift-tolerant VGG16 of the `perceptual` extra, its first four
  stages); `random` (a fixed, seeded, randomly initialised multi-scale network: four 3x3 conv + ReLU
  stages at 1, 1/2, 1/4, 1/8 of the size; random features capture texture statistics without any
  pretrained weights).
* Validation: the val folder's images (centre crops of 2 x patch) stylised by each style image; the
  mean content and style losses, and `style_closer`, the fraction of pairs whose output's style
  statistics lie closer to the style's than to the content's (the issue's bar). A style model exports
  its last EMA weights (no figure ranks style transfer the way PSNR ranks SR).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from upscale_cli.archs.artflow import ArtFlow, ArtFlowConfig, initialize_from
from upscale_cli.resize import imresize
from upscale_cli.train.config import TrainConfig
from upscale_cli.train.data import Batch, PatchSampler, data_folders, list_images, load_rgb_u8
from upscale_cli.train.discriminator import VGG19Features
from upscale_cli.train.optim import adam_with_schedule, optimizer_step
from upscale_cli.train.recipes import AutocastFactory, Recipe, RecipeSpec, TrainContext, Validator

LOSS_NETS = ("stvgg", "random", "vgg19")
RANDOM_NET_WIDTHS = (64, 128, 256, 512)
RANDOM_NET_SEED = 0


@dataclass(frozen=True)
class ArtFlowOptions:
    style: str = "../shared/data/style"  # folder of style images
    loss_net: str = "stvgg"  # stvgg | random | vgg19 (needs vgg_weights)
    vgg_weights: str = ""
    content_weight: float = 0.1
    style_weight: float = 1.0


class LossNetwork(nn.Module):
    """A frozen network returning a list of feature maps, shallow to deep; the last is the content layer."""

    def __init__(self, stages: nn.ModuleList, prepare: nn.Module | None = None) -> None:
        super().__init__()
        self.stages, self.prepare = stages, prepare or nn.Identity()
        self.eval().requires_grad_(False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x, features = self.prepare(image), []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class _ImageNetNormalise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean) / self.std


class _LPIPSNormalise(nn.Module):
    def __init__(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("shift", shift.clone(), persistent=False)
        self.register_buffer("scale", scale.clone(), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return ((2 * image - 1) - self.shift) / self.scale


VGG19_RELU_X_1 = (1, 6, 11, 20)  # torchvision `features` indices of relu1_1, relu2_1, relu3_1, relu4_1


def loss_network(options: ArtFlowOptions) -> LossNetwork:
    """The frozen loss network `options.loss_net` names (see the module docstring)."""
    if options.loss_net == "vgg19":
        if not options.vgg_weights:
            raise ValueError("loss_net=vgg19 needs --vgg-weights FILE (torchvision VGG19 layout)")
        vgg = VGG19Features.from_file(Path(options.vgg_weights))
        layers, stages, start = list(vgg.features), [], 0
        for end in VGG19_RELU_X_1:
            stages.append(nn.Sequential(*layers[start : end + 1]))
            start = end + 1
        return LossNetwork(nn.ModuleList(stages), _ImageNetNormalise())
    if options.loss_net == "stvgg":
        from upscale_cli.perceptual import trainable_copy_or_error

        net = trainable_copy_or_error("loss_net=stvgg")
        stages = nn.ModuleList(getattr(net.net, f"slice{k}") for k in range(1, 5))
        return LossNetwork(stages, _LPIPSNormalise(net.shift, net.scale))
    if options.loss_net == "random":
        generator = torch.Generator().manual_seed(RANDOM_NET_SEED)
        stages, channels = [], 3
        for index, width in enumerate(RANDOM_NET_WIDTHS):
            conv = nn.Conv2d(channels, width, 3, stride=1 if index == 0 else 2, padding=1, padding_mode="reflect")
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2 / (9 * channels)) ** 0.5)
                conv.bias.zero_()
            stages.append(nn.Sequential(conv, nn.ReLU()))
            channels = width
        return LossNetwork(nn.ModuleList(stages))
    raise ValueError(f"loss_net must be one of {', '.join(LOSS_NETS)}, not {options.loss_net!r}")


def mean_std(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = features.float().flatten(2)
    return flat.mean(2), (flat.var(2, unbiased=False) + 1e-5).sqrt()


def style_distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Spec 5.3's style loss: over the layers, MSE of channel means plus MSE of channel stds."""
    total = a[0].new_zeros((), dtype=torch.float32)
    for fa, fb in zip(a, b):
        (ma, sa), (mb, sb) = mean_std(fa), mean_std(fb)
        total = total + F.mse_loss(ma, mb) + F.mse_loss(sa, sb)
    return total


def resized_for_patches(image: torch.Tensor, patch: int) -> torch.Tensor:
    """A uint8 image (3, H, W) resized so its shorter side is 2 x patch."""
    height, width = image.shape[1:]
    factor = 2 * patch / min(height, width)
    size = (max(2 * patch, round(height * factor)), max(2 * patch, round(width * factor)))
    resized = imresize(image.float().div(255)[None], size=size)[0]
    return resized.clamp(0, 1).mul(255).round().to(torch.uint8)


class StylePairs(PatchSampler):
    """Content patches from the training folders with style patches beside them (see the docstring)."""

    def __init__(self, folders: list[Path], style_folder: Path, patch: int, batch: int, seed: int) -> None:
        super().__init__(folders, 1, 1, batch, seed)  # any image serves: all are resized below
        self.patch = patch
        self.images = [resized_for_patches(image, patch) for image in self.images]
        styles = list_images(style_folder) if style_folder.is_dir() else []
        if not styles:
            raise ValueError(f"{style_folder}: no style images found")
        self.styles = [resized_for_patches(load_rgb_u8(path), patch) for path in styles]

    def next_batch(self) -> Batch:
        content = torch.stack([self._crop() for _ in range(self.batch)]).float().div(255)
        style = torch.stack([self._crop(self.styles[self._randint(len(self.styles))])
                             for _ in range(self.batch)]).float().div(255)
        return Batch(content, content, {"style": style})


class ArtFlowRecipe(Recipe):
    arch_id = "artflow"
    selection_metric = None
    recalibrate_batchnorm = False

    def __init__(self, config: TrainConfig, context: TrainContext) -> None:
        self.config = config
        self.arch_config = ArtFlowConfig(**config.arch)
        torch.manual_seed(config.seed)
        self.generator = ArtFlow(self.arch_config).to(context.device)
        self.loss_net = loss_network(config.options).to(context.device)
        self.net = context.wrap(self.generator)
        self.optimizer, self.schedule = adam_with_schedule(self.net.parameters(), config.lr, config)
        self.initialised = False

    def losses(self, output: torch.Tensor, content: torch.Tensor, style: torch.Tensor) -> dict[str, torch.Tensor]:
        """The content and style terms, and (as `to_content_style`, for validation) the output's style
        distance to the content image."""
        out_features = self.loss_net(output)
        with torch.no_grad():
            content_features, style_features = self.loss_net(content), self.loss_net(style)
            to_content_style = style_distance(out_features, content_features)
        return {"content": F.mse_loss(out_features[-1].float(), content_features[-1].float()),
                "style": style_distance(out_features, style_features), "to_content_style": to_content_style}

    def train_step(self, batch: Batch, step: int, autocast: AutocastFactory) -> dict[str, float]:
        if not self.initialised:  # the paper's first iteration: ActNorm from a content batch, no update
            initialize_from(self.generator, batch.lr)
            self.initialised = True
            return {}
        options = self.config.options
        self.generator.train()
        output = self.net(batch.lr, batch.extras["style"])
        terms = self.losses(output, batch.lr, batch.extras["style"])
        loss = options.content_weight * terms["content"] + options.style_weight * terms["style"]
        optimizer_step(loss, self.optimizer, self.schedule, self.net.parameters(), self.config.grad_clip)
        return {"loss": loss.item(), "content": terms["content"].item(), "style": terms["style"].item()}

    def batches(self, seed: int) -> StylePairs:
        config = self.config
        return StylePairs(data_folders(config.data), Path(config.options.style), config.patch, config.batch, seed)

    def validator(self) -> Validator | None:
        return make_validator(self) if self.config.val else None

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "initialised": self.initialised}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.initialised = bool(state["initialised"])


def _centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    height, width = image.shape[1:]
    side = min(size, height, width) // 4 * 4
    top, left = (height - side) // 2, (width - side) // 2
    return image[:, top : top + side, left : left + side]


def make_validator(recipe: ArtFlowRecipe) -> Validator:
    """Content and style losses and `style_closer` over every val image x style image pair."""
    config = recipe.config
    folder = Path(config.val) / "HR" if (Path(config.val) / "HR").is_dir() else Path(config.val)

    def centred(paths: list[Path]) -> list[torch.Tensor]:
        return [_centre_crop(resized_for_patches(load_rgb_u8(p), config.patch), 2 * config.patch).float().div(255)
                for p in paths]

    contents, styles = centred(list_images(folder)), centred(list_images(Path(config.options.style)))

    @torch.no_grad()
    def validate(model: nn.Module) -> dict[str, Any]:
        model.eval()
        device = next(model.parameters()).device
        content_losses, style_losses, closer = [], [], []
        for content in contents:
            for style in styles:
                c, s = content[None].to(device), style[None].to(device)
                terms = recipe.losses(model(c, s), c, s)
                content_losses.append(terms["content"].item())
                style_losses.append(terms["style"].item())
                closer.append(float(terms["style"].item() < terms["to_content_style"].item()))
        return {"content": sum(content_losses) / len(content_losses), "style": sum(style_losses) / len(style_losses),
                "style_closer": sum(closer) / len(closer)}

    return validate


RECIPE = RecipeSpec(build=ArtFlowRecipe, options=ArtFlowOptions,
                    defaults={"lr": 1e-4, "patch": 256, "batch": 4, "grad_clip": 5.0, "ema": 0.0})
