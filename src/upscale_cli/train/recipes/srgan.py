"""SRGAN: the SRResNet generator (started from trained SRResNet weights) against the paper's discriminator.

Generator loss = content + adv_weight * non-saturating adversarial term (+ pixel_weight * pixel loss).
Content (`content`): `vgg`, the paper's VGG54 MSE, with `--vgg-weights`; `dfeat` (the default: no
pretrained network can be downloaded here), feature matching on the discriminator's own feature maps (L1
between the maps of SR and HR, averaged over the eight layers); `stvgg`, L1 on the deepest features of
the shift-tolerant VGG16 the `perceptual` extra's wheel ships (ST-LPIPS's network, read before its learned
per-channel weights, so the metric itself is not what is optimised). One D step per G step.
"""

from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from upscale_cli.train.config import TrainConfig
from upscale_cli.train.discriminator import Discriminator, Judgement, VGG19Features
from upscale_cli.train.losses import pixel_loss
from upscale_cli.train.optim import adam_with_schedule, optimizer_step
from upscale_cli.train.recipes import AutocastFactory, Batch, Recipe, RecipeSpec, TrainContext
from upscale_cli.train.recipes.srresnet import make_generator


@dataclass(frozen=True)
class GANOptions:
    """SRGAN's own settings: the adversarial and content terms of the generator loss, the discriminator's lr."""

    adv_weight: float = 1e-3
    content: str = "dfeat"  # dfeat | vgg (needs vgg_weights) | stvgg (needs the perceptual extra): see above
    content_weight: float = 1.0
    pixel_weight: float = 0.0
    vgg_weights: str = ""
    d_lr: float = 0.0  # 0 = same as lr
    class_weight: float = 0.0  # of the auxiliary class term in the generator loss (recipes with a class head)


CONTENT_LOSSES = ("dfeat", "vgg", "stvgg")


def content_network(content: str, vgg_weights: str) -> nn.Module | None:
    """The frozen network the content loss reads: VGG19 from a file, the shift-tolerant VGG16, or none."""
    if content == "vgg":
        return VGG19Features.from_file(Path(vgg_weights))
    if content == "stvgg":
        from upscale_cli.perceptual import trainable_copy_or_error

        return trainable_copy_or_error("content=stvgg")
    return None


class SRGANRecipe(Recipe):
    arch_id = "srresnet"
    selection_metric = None  # PSNR would pick the least GAN-like weights: export the last EMA instead
    categories = 0  # image categories of the discriminator's auxiliary class head (0: no head)

    def __init__(self, config: TrainConfig, context: TrainContext) -> None:
        gan = config.options
        if gan.content not in CONTENT_LOSSES:
            raise ValueError(f"content must be one of {', '.join(CONTENT_LOSSES)}, not {gan.content!r}")
        if gan.content == "vgg" and not gan.vgg_weights:
            raise ValueError("content=vgg needs --vgg-weights FILE (torchvision VGG19 layout)")
        self.config = config
        self.arch_config, self.generator = self.make_generator(config)
        self.discriminator = Discriminator(patch=config.patch, classes=self.categories)
        for module in (self.generator, self.discriminator):
            module.to(context.device, memory_format=torch.channels_last)
        self.g_net, self.d_net = context.wrap(self.generator), context.wrap(self.discriminator)
        self.content_net = content_network(gan.content, gan.vgg_weights)
        if self.content_net is not None:
            self.content_net.to(context.device)
        self.g_opt, self.g_schedule = self.generator_optimizer()
        self.d_opt, self.d_schedule = adam_with_schedule(self.d_net.parameters(), gan.d_lr or config.lr, config)

    # ----- what a recipe built on this one may change ----------------------------------------------------
    def make_generator(self, config: TrainConfig) -> tuple[Any, nn.Module]:
        """The generator and its config: SRResNet, from `--init` weights when given."""
        return make_generator(config)

    def generator_optimizer(self) -> tuple[torch.optim.Optimizer, Any]:
        return adam_with_schedule(self.g_net.parameters(), self.config.lr, self.config)

    def generate(self, batch: Batch) -> torch.Tensor:
        return self.g_net(batch.lr.contiguous(memory_format=torch.channels_last))

    # ----- one step -------------------------------------------------------------------------------------
    def _content(self, sr: torch.Tensor, hr: torch.Tensor, hr_maps: list[torch.Tensor],
                 sr_maps: list[torch.Tensor]) -> torch.Tensor:
        if self.config.options.content == "vgg":
            return F.mse_loss(self.content_net(sr).float(), self.content_net(hr).float())
        if self.config.options.content == "stvgg":
            with torch.no_grad():
                target = self.content_net.features(hr)[-1].float()
            return F.l1_loss(self.content_net.features(sr)[-1].float(), target)
        return sum(F.l1_loss(s.float(), h.float().detach()) for s, h in zip(sr_maps, hr_maps)) / len(sr_maps)

    @staticmethod
    def _class_loss(judgement: Judgement, batch: Batch) -> torch.Tensor | None:
        """Cross-entropy of the class head against the batch's `category` (-1: none, ignored); None without."""
        if judgement.classes is None:
            return None
        category = batch.extras["category"]
        if not (category >= 0).any():
            return judgement.classes.sum() * 0.0  # keep every parameter in the graph (DDP) at no cost
        return F.cross_entropy(judgement.classes.float(), category, ignore_index=-1)

    def train_step(self, batch: Batch, step: int, autocast: AutocastFactory) -> dict[str, float]:
        cfg, gan = self.config, self.config.options
        hr = batch.hr.contiguous(memory_format=torch.channels_last)
        with autocast():
            sr = self.generate(batch)
        # Discriminator step: real HR -> 1, generated SR -> 0 (and, with a class head, both -> their category).
        with autocast():
            real = self.d_net(hr)
            fake = self.d_net(sr.detach())
        d_loss = (F.binary_cross_entropy_with_logits(real.logit.float(), torch.ones_like(real.logit, dtype=torch.float))
                  + F.binary_cross_entropy_with_logits(fake.logit.float(), torch.zeros_like(fake.logit, dtype=torch.float)))
        figures: dict[str, float] = {}
        real_class, fake_class = self._class_loss(real, batch), self._class_loss(fake, batch)
        if real_class is not None and fake_class is not None:
            d_loss = d_loss + real_class + fake_class
            figures["d_class"] = real_class.item()
        optimizer_step(d_loss, self.d_opt, self.d_schedule)
        accuracy = ((real.logit > 0).float().mean() + (fake.logit < 0).float().mean()).item() / 2
        # Generator step: fool the (updated) discriminator, match content. The unwrapped discriminator
        # is used so that DDP does not wait for discriminator gradients that this step does not make.
        self.discriminator.requires_grad_(False)
        with autocast():
            fake = self.discriminator(sr)
            with torch.no_grad():
                hr_maps = self.discriminator(hr).maps
        self.discriminator.requires_grad_(True)
        adversarial = F.binary_cross_entropy_with_logits(fake.logit.float(), torch.ones_like(fake.logit, dtype=torch.float))
        content = self._content(sr, hr, hr_maps, fake.maps)
        g_loss = gan.content_weight * content + gan.adv_weight * adversarial
        g_class = self._class_loss(fake, batch)
        if g_class is not None:
            g_loss = g_loss + gan.class_weight * g_class
            figures["g_class"] = g_class.item()
        if gan.pixel_weight:
            g_loss = g_loss + gan.pixel_weight * pixel_loss(cfg.loss, sr, hr)
        optimizer_step(g_loss, self.g_opt, self.g_schedule, self.g_net.parameters(), cfg.grad_clip)
        return {"loss": g_loss.item(), "content": content.item(), "adv": adversarial.item(),
                "d_loss": d_loss.item(), "d_acc": accuracy, **figures}

    def current_lr(self) -> float:
        return self.g_opt.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                "g_opt": self.g_opt.state_dict(), "d_opt": self.d_opt.state_dict(),
                "g_schedule": self.g_schedule.state_dict(), "d_schedule": self.d_schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.g_opt.load_state_dict(state["g_opt"])
        self.d_opt.load_state_dict(state["d_opt"])
        self.g_schedule.load_state_dict(state["g_schedule"])
        self.d_schedule.load_state_dict(state["d_schedule"])


RECIPE = RecipeSpec(build=SRGANRecipe, options=GANOptions)
