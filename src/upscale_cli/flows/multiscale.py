"""The multi-level flow container (Glow, SRFlow): levels of squeeze, steps and an optional split.

Encode (data -> latents), level by level: squeeze 2x2 -> unconditional transition steps -> steps
given that level's condition -> a split that factors out half of the channels (standardised by its
learned prior). The latents are a list ordered finest first: the eps of every split, then the top z.
`forward(x, cond) -> (latents, logdet)` and `reverse(latents, cond) -> (x, logdet)`, where `cond` holds
one condition per level (None entries, or no list at all, for unconditional levels) and logdet is the
sum of the layers' log|det J| (the standard-normal terms of the latents are the caller's; see
`flows.layers`). A latent given as None in `reverse` is drawn at temperature `tau` from `generator`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from upscale_cli.flows.layers import FlowSequence, InvertibleLayer, Split, Squeeze


class FlowLevel(nn.Module):
    """One level: squeeze, transition steps, conditional steps and, if `split`, a split, all on the squeezed
    `channels` (4x the level's input channels)."""

    def __init__(self, channels: int, transitions: Sequence[InvertibleLayer], steps: Sequence[InvertibleLayer],
                 split: bool) -> None:
        super().__init__()
        self.squeeze = Squeeze()
        self.transitions = FlowSequence(transitions)
        self.steps = FlowSequence(steps)
        self.split = Split(channels) if split else None
        self.channels = channels
        self.out_channels = self.split.keep_channels if self.split is not None else channels


class MultiScaleFlow(InvertibleLayer):
    """Levels applied finest first when encoding, coarsest first when decoding (see the module docstring)."""

    def __init__(self, levels: Sequence[FlowLevel]) -> None:
        super().__init__()
        self.levels = nn.ModuleList(levels)
        self.top_channels = levels[-1].out_channels

    @property
    def splits(self) -> int:
        return sum(level.split is not None for level in self.levels)

    def _conditions(self, cond: Sequence[torch.Tensor | None] | None) -> Sequence[torch.Tensor | None]:
        if cond is None:
            return [None] * len(self.levels)
        if len(cond) != len(self.levels):
            raise ValueError(f"one condition per level is needed: {len(self.levels)} levels, {len(cond)} conditions")
        return cond

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, cond: Sequence[torch.Tensor | None] | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        total = x.new_zeros(x.shape[0])
        latents = []
        for level, u in zip(self.levels, self._conditions(cond)):
            x, _ = level.squeeze(x)
            x, logdet = level.transitions(x)
            total = total + logdet
            x, logdet = level.steps(x, u)
            total = total + logdet
            if level.split is not None:
                x, logdet = level.split(x)
                total = total + logdet
                x, eps = x[:, : level.split.keep_channels], x[:, level.split.keep_channels :]
                latents.append(eps)
        latents.append(x)
        return latents, total

    def reverse(  # type: ignore[override]
        self,
        z: Sequence[torch.Tensor | None],
        cond: Sequence[torch.Tensor | None] | None = None,
        *,
        tau: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if len(z) != self.splits + 1:
            raise ValueError(f"expected {self.splits + 1} latent tensors, got {len(z)}")
        x = z[-1]
        if x is None:
            raise ValueError("the top-level latent must be given")
        total = x.new_zeros(x.shape[0])
        eps_index = self.splits
        for level, u in zip(reversed(self.levels), reversed(list(self._conditions(cond)))):
            if level.split is not None:
                eps_index -= 1
                eps = z[eps_index]
                if eps is None:
                    eps = level.split.draw(x, tau, generator)
                if eps.shape[1:] != (level.split.out_channels, *x.shape[2:]) or eps.shape[0] != x.shape[0]:
                    raise ValueError(f"split noise has shape {tuple(eps.shape)}, expected "
                                     f"{(x.shape[0], level.split.out_channels, *x.shape[2:])}")
                x, logdet = level.split.reverse(torch.cat([x, eps.to(x.dtype)], 1))
                total = total + logdet
            x, logdet = level.steps.reverse(x, u)
            total = total + logdet
            x, logdet = level.transitions.reverse(x)
            total = total + logdet
            x, _ = level.squeeze.reverse(x)
        return x, total
