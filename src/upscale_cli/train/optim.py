"""Optimiser and learning-rate schedule shared by the recipes."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from upscale_cli.train.config import TrainConfig


def cosine_lambda(iters: int, warmup: int, floor: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up, then cosine from 1 down to `floor` at `iters`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, iters - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def adam_with_schedule(params: Any, lr: float, config: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """Adam (beta1 0.9, as SRGAN) with warm-up + cosine decay over `config.iters`."""
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_lambda(config.iters, config.warmup, config.lr_floor))
    return optimizer, schedule


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, schedule: Any,
                   parameters: Any = None, grad_clip: float = 0.0) -> None:
    """One update: zero the gradients, backpropagate `loss`, clip `parameters`' gradient norm to
    `grad_clip` (when > 0), step the optimiser, then its learning-rate schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()
    schedule.step()
