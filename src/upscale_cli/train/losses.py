"""Losses shared by the recipes."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_loss(kind: str, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """L1 or MSE between SR and HR, computed in float32 whatever the autocast precision."""
    if kind == "l1":
        return F.l1_loss(sr.float(), hr.float())
    if kind == "mse":
        return F.mse_loss(sr.float(), hr.float())
    raise ValueError(f"unknown pixel loss {kind!r} (use l1 or mse)")
