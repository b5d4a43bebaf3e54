"""From a model name to upscaled pixels: load the network, pick device and precision, run it tiled.

`Upscaler` is what the CLI and the benchmarks hold: it knows its native scale, runs as many tiled
passes as a requested factor needs, and resamples to the exact target size with Lanczos. With `tta`
a deterministic model runs on the 8 flips and rotations of its input and the results are averaged
(the self-ensemble of Lim et al. 2017: 8x the time for a small PSNR gain; `upscale bench quality --tta`).
With `color_fix` the output's content at the input's scale (colour, brightness, shading) is matched to
the input by one back-projection step (`color_fix`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from upscale_cli.archs import get_architecture
from upscale_cli.checkpoint import CheckpointInfo, load_model, weights_digest
from upscale_cli.device import autocast, channels_last_helps, resolve_device, resolve_precision
from upscale_cli.image_io import lanczos_resize
from upscale_cli.models import BICUBIC, find_weights, looks_like_path
from upscale_cli.resize import imresize
from upscale_cli.tiler import TileRunner, Window, auto_tile_size, available_memory, upscale_tiled


class NetworkRunner:
    """Runs a feed-forward SR network on tiles (the TileRunner of every deterministic model)."""

    def __init__(self, module: nn.Module, scale: int, device: torch.device, precision: str) -> None:
        self.scale = scale
        self.device = device
        self.channels_last = channels_last_helps(device, precision)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.module = module.eval().requires_grad_(False).to(device, memory_format=memory_format)

    def prepare(self, image: torch.Tensor) -> object:
        return None

    @torch.inference_mode()
    def run_tile(self, tile: torch.Tensor, state: object, windows: list[Window], precision: str) -> torch.Tensor:
        x = tile.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, precision):
            out = self.module(x)
        return out.float().cpu().contiguous()


@dataclass
class Upscaler:
    """A loaded model ready to upscale whole images."""

    name: str
    scale: int
    device: torch.device
    precision: str
    runner: TileRunner | None  # None for the bicubic baseline
    info: CheckpointInfo | None = None
    path: Path | None = None
    overlap: int = 0  # LR px between tiles; models take their architecture's tile_overlap
    bytes_per_lr_pixel: int = 0
    sampler: Callable[[float, int], TileRunner] | None = None  # stochastic models: (tau, seed) -> runner
    default_tau: float | None = None
    nll: Callable[..., float] | None = None  # density models: (hr, lr, seed=) -> NLL in bits/dim
    tta: bool = False  # average the 8 flips and rotations (deterministic models only)
    color_fix: bool = False  # back-project the input's low frequencies into the output
    digest: str | None = None  # `weights_digest` of the checkpoint, for provenance tags

    @property
    def stochastic(self) -> bool:
        return self.sampler is not None

    def passes(self, width: int, height: int, out_width: int, out_height: int) -> int:
        """How many runs of the model a `width` x `height` input needs to reach the output size."""
        factor = max(out_width / width, out_height / height)
        return max(1, math.ceil(math.log(factor) / math.log(self.scale) - 1e-9)) if factor > 1 else 1

    def memory_problem(self, width: int, height: int, out_width: int, out_height: int, kept: int = 0) -> str | None:
        """Why upscaling a `width` x `height` input to `out_width` x `out_height` would not fit in the host's
        free memory, or None if it does; `kept` earlier outputs the caller still holds count too.

        Asked before a long run, so that a batch reports one file too large for this machine and goes
        on, instead of being killed by the kernel halfway through it.
        """
        grown = self.scale ** self.passes(width, height, out_width, out_height) if self.runner is not None else 1
        pixels = max(width * height * grown * grown, out_width * out_height)
        copies = OUTPUT_FLOAT_COPIES + (1 if self.tta else 0) + (1 if self.color_fix else 0) + kept
        needed = pixels * 3 * 4 * copies
        free = available_memory(torch.device("cpu"))
        if needed <= free:
            return None
        return f"a {out_width} x {out_height} output needs about {_bytes(needed)} of memory and {_bytes(free)} is free"

    def choose_tile(self, spec: str, height: int, width: int) -> int | None:
        """`none`, an explicit size, or `auto`: the largest tile the free memory allows (None if the image fits)."""
        if spec == "none" or self.runner is None:
            return None
        if spec != "auto":
            return int(spec)
        tile = auto_tile_size(self.bytes_per_lr_pixel, available_memory(self.device), self.overlap, self.precision)
        return None if max(height, width) <= tile else tile

    def upscale(self, rgb: np.ndarray, out_width: int, out_height: int, tile_spec: str = "auto",
                on_tile: Callable[[int, int], None] | None = None, warn: Callable[[str], None] | None = None,
                seed: int = 0, tau: float | None = None) -> np.ndarray:
        """Float RGB (H, W, 3) in [0, 1] to (out_height, out_width, 3), unclamped float32.

        Stochastic models draw the sample of `seed` at temperature `tau` (default: the model's);
        deterministic models ignore both.
        """
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float()
        if self.runner is None:
            return imresize(image[0], size=(out_height, out_width)).permute(1, 2, 0).numpy()
        runner = self.runner
        if self.sampler is not None:
            runner = self.sampler(self.default_tau if tau is None else tau, seed)
        height, width = image.shape[-2:]
        source = image
        for _ in range(self.passes(width, height, out_width, out_height)):
            image = self._tiled_pass(runner, image, tile_spec, on_tile, warn)
        if self.color_fix:
            image = color_fix(image, source)
        result = image[0].permute(1, 2, 0).numpy()
        if result.shape[:2] != (out_height, out_width):
            result = lanczos_resize(result, out_width, out_height)
        return result

    def _tiled_pass(self, runner: TileRunner, image: torch.Tensor, tile_spec: str,
                    on_tile: Callable[[int, int], None] | None, warn: Callable[[str], None] | None) -> torch.Tensor:
        """One run of the network over the whole image, or with `tta` the mean of its 8 dihedral views."""
        views = DIHEDRAL_VIEWS if self.tta else DIHEDRAL_VIEWS[:1]
        total = None
        for index, (turns, flip) in enumerate(views):
            view = dihedral(image, turns, flip)
            report = None if on_tile is None else partial(_report_view, on_tile, index, len(views))
            out = upscale_tiled(runner, view, tile=self.choose_tile(tile_spec, *view.shape[-2:]), overlap=self.overlap,
                                precision=self.precision, on_tile=report, warn=warn, align=getattr(runner, "align", 1))
            out = undo_dihedral(out, turns, flip)
            total = out if total is None else total.add_(out)
        assert total is not None
        return total.div_(len(views)) if len(views) > 1 else total


def variants(upscalers: list[Upscaler], tta: bool = False, color_fix: bool = False) -> list[Upscaler]:
    """Copies named MODEL+tta (deterministic networks) and MODEL+color-fix (any network), to show beside
    the plain models in benchmarks and comparison sheets."""
    networks = [u for u in upscalers if u.runner is not None]
    extra = [replace(u, name=f"{u.name}+tta", tta=True) for u in networks if tta and not u.stochastic]
    return extra + [replace(u, name=f"{u.name}+color-fix", color_fix=True) for u in networks if color_fix]


def color_fix(sr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """One back-projection step (Irani and Peleg 1991): add to `sr` the upscaled difference between `lr` and
    `sr` shrunk to its size (MATLAB bicubic both ways). Colour and brightness drift at the input's scale
    goes; detail finer than the input's pixels stays. Sizes are (..., H, W); any ratio works."""
    shrunk = imresize(sr, size=tuple(lr.shape[-2:]))
    return sr + imresize(lr - shrunk, size=tuple(sr.shape[-2:])).to(sr.dtype)


def _bytes(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


# float32 RGB copies of the output the host holds at once beside the network's tiles (the tiler's sum and
# weights, the result, a resize; the TTA sum and the colour fix are one more each). Measured peak: 1.5 (srresnet, 3072 x 2048
# output, 64 px tiles, `/usr/bin/time -f %M`); 3 leaves room for the encoder's buffers.
OUTPUT_FLOAT_COPIES = 3

DIHEDRAL_VIEWS = tuple((turns, flip) for flip in (False, True) for turns in range(4))  # identity first


def dihedral(image: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """`image` (..., H, W) mirrored left-right if `flip`, then turned `turns` quarter turns."""
    return torch.rot90(image.flip(-1) if flip else image, turns, dims=(-2, -1))


def undo_dihedral(image: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """The inverse of `dihedral(., turns, flip)`."""
    image = torch.rot90(image, -turns, dims=(-2, -1))
    return image.flip(-1) if flip else image


def _report_view(on_tile: Callable[[int, int], None], index: int, views: int, done: int, total: int) -> None:
    """Tile progress across all views as one count."""
    on_tile(index * total + done, views * total)


def load_upscaler(model: str, scale: float | None = None, device: str = "auto", precision: str = "auto",
                  overlap: int | None = None, threads: int | None = None, tta: bool = False,
                  color_fix: bool = False) -> Upscaler:
    """Load `model` (a name, `bicubic`, or a .safetensors path) onto `device` at `precision`.

    `tta` (the 8-view self-ensemble) is refused for stochastic models: averaging views of samples would
    blur the very detail a sample draws.
    """
    if threads:
        torch.set_num_threads(threads)
    torch_device = resolve_device(device)
    if model == BICUBIC:
        return Upscaler(BICUBIC, 4, torch_device, "fp32", None)
    path = Path(model) if looks_like_path(model) else find_weights(model, scale)
    module, info = load_model(path)
    arch = get_architecture(info.arch)
    config = arch.make_config(info.config)
    chosen = resolve_precision(precision, torch_device, arch.supports_half)
    sampler = nll = None
    if arch.likelihood is not None:
        nll = partial(arch.likelihood, module, device=torch_device)
    if arch.sampler is not None:
        if tta:
            raise ValueError(f"--tta is for deterministic models; {info.arch} draws samples (--tau 0 gives its mean)")

        def sampler(tau: float, seed: int) -> TileRunner:
            return arch.sampler(module, torch_device, chosen, tau, seed)
    return Upscaler(
        name=model if not looks_like_path(model) else (info.name or path.stem),
        scale=info.scale,
        device=torch_device,
        precision=chosen,
        runner=NetworkRunner(module, info.scale, torch_device, chosen) if sampler is None else sampler(0.0, 0),
        info=info,
        path=path,
        overlap=arch.tile_overlap if overlap is None else overlap,
        bytes_per_lr_pixel=arch.bytes_per_lr_pixel(config),
        sampler=sampler,
        default_tau=arch.default_tau,
        nll=nll,
        tta=tta,
        color_fix=color_fix,
        digest=weights_digest(path),
    )
