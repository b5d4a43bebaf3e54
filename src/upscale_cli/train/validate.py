"""Validation during training: the same figures as `upscale bench quality`, on the EMA generator."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from upscale_cli.bench.quality import evaluate, load_pairs
from upscale_cli.train.config import TrainConfig


def make_validator(config: TrainConfig) -> Callable[[nn.Module], dict[str, Any]] | None:
    """A function scoring a generator on `config.val` in fp32, or None without a val folder."""
    if not config.val:
        return None
    pairs = load_pairs(Path(config.val), config.scale)

    @torch.no_grad()
    def validate(model: nn.Module) -> dict[str, Any]:
        model.eval()
        result = evaluate(lambda lr: model(lr[None].contiguous())[0].float(), pairs, config.scale)
        return dict(result["mean"])

    return validate
