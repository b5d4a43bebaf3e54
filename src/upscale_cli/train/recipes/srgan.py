"""SRGAN: the SRResNet generator (started from trained SRResNet weights) against the paper's discriminator.

Generator loss = content + adv_weight * non-saturating adversarial term (+ pixel_weight * pixel loss).
Content is the paper's VGG54 MSE when `--vgg-weights` is given; otherwise (no pretrained network can
be downloaded here) it is feature matching on the discriminator's own feature maps (L1 between the
maps of SR and HR, averaged over the eight layers), which needs no download. One D step per G step.
"""

from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from upscale_cli.train.config import TrainConfig
from upscale_cli.train.discriminator import Discriminator, VGG19Features
from upscale_cli.train.losses import pixel_loss
from upscale_cli.train.optim import adam_with_schedule
from upscale_cli.train.recipes import AutocastFactory, Batch, Recipe, RecipeSpec, TrainContext
from upscale_cli.train.recipes.srresnet import make_generator


@dataclass(frozen=True)
class GANOptions:
    """SRGAN's own settings: the adversarial and content terms of the generator loss, the discriminator's lr."""

    adv_weight: float = 1e-3
    content: str = "dfeat"  # vgg (needs vgg_weights) | dfeat (discriminator feature matching)
    content_weight: float = 1.0
    pixel_weight: float = 0.0
    vgg_weights: str = ""
    d_lr: float = 0.0  # 0 = same as lr


class SRGANRecipe(Recipe):
    arch_id = "srresnet"
    selection_metric = None  # PSNR would pick the least GAN-like weights: export the last EMA instead

    def __init__(self, config: TrainConfig, context: TrainContext) -> None:
        gan = config.options
        if gan.content not in ("vgg", "dfeat"):
            raise ValueError(f"content must be vgg or dfeat, not {gan.content!r}")
        if gan.content == "vgg" and not gan.vgg_weights:
            raise ValueError("content=vgg needs --vgg-weights FILE (torchvision VGG19 layout)")
        self.config = config
        self.arch_config, self.generator = make_generator(config)
        self.discriminator = Discriminator(patch=config.patch)
        for module in (self.generator, self.discriminator):
            module.to(context.device, memory_format=torch.channels_last)
        self.g_net, self.d_net = context.wrap(self.generator), context.wrap(self.discriminator)
        self.vgg = VGG19Features.from_file(Path(gan.vgg_weights)).to(context.device) if gan.content == "vgg" else None
        self.g_opt, self.g_schedule = adam_with_schedule(self.g_net.parameters(), config.lr, config)
        self.d_opt, self.d_schedule = adam_with_schedule(self.d_net.parameters(), gan.d_lr or config.lr, config)

    def _content(self, sr: torch.Tensor, hr: torch.Tensor, hr_maps: list[torch.Tensor],
                 sr_maps: list[torch.Tensor]) -> torch.Tensor:
        if self.vgg is not None:
            return F.mse_loss(self.vgg(sr).float(), self.vgg(hr).float())
        return sum(F.l1_loss(s.float(), h.float().detach()) for s, h in zip(sr_maps, hr_maps)) / len(sr_maps)

    def train_step(self, batch: Batch, step: int, autocast: AutocastFactory) -> dict[str, float]:
        cfg, gan = self.config, self.config.options
        hr = batch.hr.contiguous(memory_format=torch.channels_last)
        with autocast():
            sr = self.g_net(batch.lr.contiguous(memory_format=torch.channels_last))
        # Discriminator step: real HR -> 1, generated SR -> 0.
        with autocast():
            real_logit, _ = self.d_net(hr)
            fake_logit, _ = self.d_net(sr.detach())
        d_loss = (F.binary_cross_entropy_with_logits(real_logit.float(), torch.ones_like(real_logit, dtype=torch.float))
                  + F.binary_cross_entropy_with_logits(fake_logit.float(), torch.zeros_like(fake_logit, dtype=torch.float)))
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()
        self.d_schedule.step()
        accuracy = ((real_logit > 0).float().mean() + (fake_logit < 0).float().mean()).item() / 2
        # Generator step: fool the (updated) discriminator, match content. The unwrapped discriminator
        # is used so that DDP does not wait for discriminator gradients that this step does not make.
        self.discriminator.requires_grad_(False)
        with autocast():
            fake_logit, sr_maps = self.discriminator(sr)
            with torch.no_grad():
                _, hr_maps = self.discriminator(hr)
        self.discriminator.requires_grad_(True)
        adversarial = F.binary_cross_entropy_with_logits(fake_logit.float(), torch.ones_like(fake_logit, dtype=torch.float))
        content = self._content(sr, hr, hr_maps, sr_maps)
        g_loss = gan.content_weight * content + gan.adv_weight * adversarial
        if gan.pixel_weight:
            g_loss = g_loss + gan.pixel_weight * pixel_loss(cfg.loss, sr, hr)
        self.g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.g_net.parameters(), cfg.grad_clip)
        self.g_opt.step()
        self.g_schedule.step()
        return {"loss": g_loss.item(), "content": content.item(), "adv": adversarial.item(),
                "d_loss": d_loss.item(), "d_acc": accuracy}

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
