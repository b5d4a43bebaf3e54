"""Training recipes: one module per model, each declaring a `RECIPE` that builds a `Recipe`.

A recipe owns its networks and optimisers, supplies its batches (LR, HR and any extra inputs the
model takes) and its validator, and declares its own typed settings; the loop (`train/loop.py`)
knows nothing else about it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import nn

from upscale_cli.archs.catalog import entry, recipes
from upscale_cli.train.config import TrainConfig
from upscale_cli.train.data import Batch, PatchSampler, data_folders

AutocastFactory = Callable[[], Any]


class BatchSource(Protocol):
    """Where a run's batches come from; its state is part of the training state (bit-exact resumes)."""

    def next_batch(self) -> Batch: ...

    def fork(self, seed: int) -> BatchSource: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class TrainContext:
    """Where a recipe's modules live: the training device, and `wrap` (DDP when distributed)."""

    device: torch.device
    wrap: Callable[[nn.Module], nn.Module]


Validator = Callable[[nn.Module], dict[str, Any]]


class Recipe(ABC):
    """What the loop needs from a recipe: the generator to average and export, batches, one step, validation."""

    arch_id: str
    arch_config: Any
    generator: nn.Module  # the unwrapped generator (EMA and export read it)
    config: TrainConfig
    selection_metric: str | None = "psnr_y"  # validation figure that picks the best checkpoint (None: keep last)
    recalibrate_batchnorm: bool = True  # re-estimate the EMA generator's BatchNorm statistics before use

    def batches(self, seed: int) -> BatchSource:
        """Random augmented HR patches with LR made by MATLAB bicubic (override for other degradations or inputs)."""
        config = self.config
        return PatchSampler(data_folders(config.data), config.patch, config.scale, config.batch, seed=seed)

    def validator(self) -> Validator | None:
        """PSNR-Y and friends of the generator on `config.val` (override for other figures); None without one."""
        from upscale_cli.train.validate import make_validator

        return make_validator(self.config, self.arch_id)

    @abstractmethod
    def train_step(self, batch: Batch, step: int, autocast: AutocastFactory) -> dict[str, float]:
        """One optimisation step on a batch (already on the training device); returns the figures to log."""

    @abstractmethod
    def current_lr(self) -> float:
        """The generator's learning rate now."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Networks, optimisers and schedules: everything a bit-exact resume needs."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""


@dataclass(frozen=True)
class NoOptions:
    """The settings of a recipe that has none beyond the shared ones."""


@dataclass(frozen=True)
class RecipeSpec:
    """A recipe module's declaration: its typed settings, the shared settings it starts from other than
    TrainConfig's defaults, and its builder."""

    build: Callable[[TrainConfig, TrainContext], Recipe]
    options: type = NoOptions
    defaults: dict[str, Any] = field(default_factory=dict)


def recipe_spec(model: str) -> RecipeSpec:
    """The RECIPE of the catalog's recipe module for `model`."""
    known = entry(model)
    if known is None or known.recipe_module is None:
        raise ValueError(f"no training recipe for {model!r} (known: {', '.join(recipes())})")
    return importlib.import_module(known.recipe_module).RECIPE


def make_recipe(config: TrainConfig, context: TrainContext | Callable[[nn.Module], nn.Module]) -> Recipe:
    """The recipe named by `config.model`, built on `context` (a bare wrap function means the CPU)."""
    if not isinstance(context, TrainContext):
        context = TrainContext(torch.device("cpu"), context)
    return recipe_spec(config.model).build(config, context)
