"""The runners of every feed-forward model: the network (or its OpenVINO conversion) applied to each batch of tiles."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from upscale_cli.device import autocast, channels_last_helps
from upscale_cli.tiler import IMAGE, Inputs, Tiles, Window


class NetworkRunner:
    """Runs a network on tiles: `module(image, **other_inputs)` under the precision's autocast.

    Extra inputs at the image's or the output's size arrive cropped like the image; whole ones as given.
    Channels-last memory is used where it makes the convolutions faster (reduced precision, CUDA).
    """

    def __init__(self, module: nn.Module, scale: int, device: torch.device, precision: str) -> None:
        self.scale = scale
        self.device = device
        self.channels_last = channels_last_helps(device, precision)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.module = module.eval().requires_grad_(False).to(device, memory_format=memory_format)

    def prepare(self, inputs: Inputs, max_pixels: int | None) -> object:
        return None

    def _on_device(self, tile: torch.Tensor) -> torch.Tensor:
        x = tile.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    @torch.inference_mode()
    def run_tile(self, tiles: Tiles, state: object, windows: list[Window], precision: str) -> torch.Tensor:
        image = self._on_device(tiles[IMAGE])
        others = {name: self._on_device(tile) for name, tile in tiles.items() if name != IMAGE}
        with autocast(self.device, precision):
            out = self.module(image, **others)
        return out.float().cpu().contiguous()


class OpenVinoRunner:
    """Runs a feed-forward network's OpenVINO conversion (`openvino_backend.OpenVinoNetwork`) on tiles."""

    def __init__(self, network: Callable[[np.ndarray, str], np.ndarray], scale: int) -> None:
        self.network, self.scale = network, scale

    def prepare(self, inputs: Inputs, max_pixels: int | None) -> object:
        return None

    def run_tile(self, tiles: Tiles, state: object, windows: list[Window], precision: str) -> torch.Tensor:
        return torch.from_numpy(self.network(tiles[IMAGE].numpy(), precision))
