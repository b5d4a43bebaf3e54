"""SRResNet: the generator alone, trained with a pixel loss (L1 or MSE), Adam and a cosine schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from upscale_cli.archs.srresnet import SRResNet, SRResNetConfig
from upscale_cli.checkpoint import load_model
from upscale_cli.train.config import TrainConfig
from upscale_cli.train.losses import pixel_loss
from upscale_cli.train.optim import adam_with_schedule, optimizer_step
from upscale_cli.train.recipes import AutocastFactory, Batch, Recipe, RecipeSpec, TrainContext


def make_generator(config: TrainConfig) -> tuple[SRResNetConfig, SRResNet]:
    """The SRResNet of `config`, started from `config.init` weights when given."""
    if config.init:
        model, info = load_model(Path(config.init))
        if info.arch != "srresnet" or info.scale != config.scale:
            raise ValueError(f"{config.init}: is {info.arch} x{info.scale}, need srresnet x{config.scale}")
        return model.config, model.train()
    arch_config = SRResNetConfig(scale=config.scale, **config.arch)
    return arch_config, SRResNet(arch_config)


class SRResNetRecipe(Recipe):
    arch_id = "srresnet"

    def __init__(self, config: TrainConfig, context: TrainContext) -> None:
        self.config = config
        self.arch_config, self.generator = make_generator(config)
        self.generator.to(context.device, memory_format=torch.channels_last)
        self.net = context.wrap(self.generator)
        self.optimizer, self.schedule = adam_with_schedule(self.net.parameters(), config.lr, config)

    def train_step(self, batch: Batch, step: int, autocast: AutocastFactory) -> dict[str, float]:
        with autocast():
            sr = self.net(batch.lr.contiguous(memory_format=torch.channels_last))
        loss = pixel_loss(self.config.loss, sr, batch.hr)
        optimizer_step(loss, self.optimizer, self.schedule, self.net.parameters(), self.config.grad_clip)
        return {"loss": loss.item()}

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])


RECIPE = RecipeSpec(build=SRResNetRecipe)
