"""What the core needs to know about an architecture, independent of any weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class Architecture:
    """An architecture id, its config dataclass and constructor, and the numbers the tiler needs.

    `bytes_per_lr_pixel(config)` estimates fp32 activation memory per LR input pixel during inference
    (used by `--tile auto`); `receptive_radius(config)` is how many LR pixels on each side can change
    one output pixel (the default tile overlap, so tiled output equals untiled output).
    """

    id: str
    config_type: type
    build: Callable[[Any], nn.Module]
    bytes_per_lr_pixel: Callable[[Any], int]
    receptive_radius: Callable[[Any], int]
    paper: str
    supports_half: bool = True
    stochastic: bool = False
    # Stochastic models: builds the TileRunner that draws one sample, (model, device, precision, tau, seed).
    sampler: Callable[..., Any] | None = None
    default_tau: float | None = None
    # Density models: -log2 p(HR | LR) per dimension of one image, (model, hr, lr, device, seed) -> float.
    likelihood: Callable[..., float] | None = None
    tile_overlap: int = 16  # default overlap in LR px: feathering hides seams well before the full radius

    def make_config(self, values: dict[str, Any]) -> Any:
        """Build the config dataclass, rejecting unknown keys instead of ignoring them."""
        known = set(self.config_type.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {self.id} config keys: {', '.join(unknown)}")
        return self.config_type(**values)
