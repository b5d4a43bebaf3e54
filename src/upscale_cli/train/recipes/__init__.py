"""Training recipes: one module per model, each a `Recipe` that owns its networks and optimisers."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, Callable

import torch
from torch import nn

from upscale_cli.train.config import RECIPES, TrainConfig


AutocastFactory = Callable[[], Any]


class Recipe(ABC):
    """What the loop needs from a recipe: the generator to average and export, and one step."""

    arch_id: str
    arch_config: Any
    generator: nn.Module  # the unwrapped generator (EMA and export read it)
    selection_metric: str | None = "psnr_y"  # validation figure that picks the best checkpoint (None: keep last)
    recalibrate_batchnorm: bool = True  # re-estimate the EMA generator's BatchNorm statistics before use

    @abstractmethod
    def train_step(self, lr: torch.Tensor, hr: torch.Tensor, step: int,
                   autocast: AutocastFactory) -> dict[str, float]:
        """One optimisation step on a batch; returns the figures to log."""

    @abstractmethod
    def current_lr(self) -> float:
        """The generator's learning rate now."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Networks, optimisers and schedules: everything a bit-exact resume needs."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""


def make_recipe(config: TrainConfig, wrap: Callable[[nn.Module], nn.Module]) -> Recipe:
    """The recipe named by `config.model`, with its modules wrapped by `wrap` (DDP when distributed)."""
    if config.model not in RECIPES:
        raise ValueError(f"no training recipe for {config.model!r} (known: {', '.join(RECIPES)})")
    return importlib.import_module(f"{__name__}.{config.model}").build(config, wrap)
