"""From a model name to upscaled pixels: load the network, pick device and precision, run it tiled.

`Upscaler` is what the CLI, the benchmarks and the Python API hold. Everything model-specific comes
from the model's descriptor (`archs/base.py`): the runner, the extra inputs, the size requirements.
For super-resolution models it runs as many tiled passes as a requested factor needs and resamples to
the exact target size with Lanczos; image-to-image models (scale 1) run once at the input's size.
With `tta` a deterministic model runs on the 8 flips and rotations of its inputs and the results are
averaged (the self-ensemble of Lim et al. 2017: 8x the time for a small PSNR gain; `upscale bench
quality --tta`). With `color_fix` a super-resolution output's content at the input's scale (colour,
brightness, shading) is matched to the input by one back-projection step (`color_fix`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from upscale_cli.archs import get_architecture
from upscale_cli.archs.base import AT_OUTPUT, SUPER_RESOLUTION, WHOLE, ModelDescriptor, RunOptions
from upscale_cli.checkpoint import CheckpointInfo, load_model
from upscale_cli.convert import cached_conversion, is_foreign
from upscale_cli.cpu import CPU_LARGEST_AUTO_TILE, GPU_LARGEST_AUTO_TILE, OPENVINO_LARGEST_AUTO_TILE
from upscale_cli.device import resolve_device, resolve_precision
from upscale_cli.errors import InputError
from upscale_cli.image_io import lanczos_resize
from upscale_cli.models import BICUBIC, find_weights, looks_like_path, weights_digest
from upscale_cli.openvino_backend import Facts, OpenVinoNetwork, network_for
from upscale_cli.resize import imresize
from upscale_cli.rewrite import prepare_for_inference
from upscale_cli.sizes import OutputSizes
from upscale_cli.tiler import TileInput, TileSpec, auto_tile_size, available_memory, upscale_tiled


@dataclass
class Upscaler(OutputSizes):
    """A loaded model ready to upscale whole images (`descriptor` and `module` are None for bicubic)."""

    name: str
    scale: int
    device: torch.device
    precision: str
    descriptor: ModelDescriptor | None = None
    module: nn.Module | None = None
    info: CheckpointInfo | None = None
    path: Path | None = None
    overlap: int = 0  # input px between tiles; models take their descriptor's tile_overlap
    bytes_per_input_pixel: int = 0
    tta: bool = False  # average the 8 flips and rotations (deterministic models only)
    color_fix: bool = False  # back-project the input's low frequencies into the output (super-resolution)
    digest: str | None = None  # `weights_digest` of the checkpoint, for provenance tags
    network: OpenVinoNetwork | None = None  # the same network converted for OpenVINO (`--backend`), run instead
    backend_note: str | None = None  # why an asked-for backend is not used, for the user

    @property
    def backend(self) -> str:
        return "torch" if self.network is None else "openvino"

    @property
    def is_network(self) -> bool:
        return self.module is not None

    @property
    def task(self) -> str:
        return SUPER_RESOLUTION if self.descriptor is None else self.descriptor.task

    @property
    def stochastic(self) -> bool:
        return self.descriptor is not None and self.descriptor.stochastic

    @property
    def default_tau(self) -> float | None:
        return None if self.descriptor is None else self.descriptor.default_tau

    @property
    def nll(self) -> Callable[..., float] | None:
        """Density models: (hr, lr, seed=) -> NLL of the HR in bits/dim."""
        if self.descriptor is None or self.descriptor.likelihood is None:
            return None
        return partial(self.descriptor.likelihood, self.module, device=self.device)

    def check_extra_names(self, names: Iterable[str]) -> None:
        """ValueError for extra-input names (`--input NAME=...`) the model does not take from the command line."""
        loadable = [e.name for e in self.descriptor.extra_inputs if e.load is not None] if self.descriptor else []
        for name in names:
            if name not in loadable:
                raise ValueError(f"{self.name} takes no --input {name} (it takes {', '.join(loadable) or 'none'})")

    def load_extras(self, values: Mapping[str, str], height: int, width: int) -> dict[str, torch.Tensor]:
        """Extra inputs from the command line (name -> value) for a height x width input, each read by the
        loader its model declares; InputError (one line, naming the file) when a value cannot be used."""
        self.check_extra_names(values)
        if not values:
            return {}
        loaders = {extra.name: extra.load for extra in self.descriptor.extra_inputs}
        try:
            return {name: loaders[name](value, height, width) for name, value in values.items()}
        except ValueError as exc:
            raise InputError(str(exc)) from None

    def describe_input(self, rgb: np.ndarray) -> dict[str, float]:
        """What the model estimates about an input (float RGB (H, W, 3)); empty for models that estimate nothing."""
        if self.descriptor is None or self.descriptor.describe_input is None:
            return {}
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float().to(self.device)
        with torch.inference_mode():
            return self.descriptor.describe_input(self.module, image)

    def memory_problem(self, width: int, height: int, out_width: int, out_height: int, kept: int = 0,
                       converted: bool = False) -> str | None:
        """Why upscaling a `width` x `height` input to `out_width` x `out_height` would not fit in the host's
        free memory, or None if it does; `kept` earlier outputs the caller still holds count too, and
        `converted` says the caller passes `convert` to `upscale` (a streamed output needs far less).

        Asked before a long run, so that a batch reports one file too large for this machine and goes
        on, instead of being killed by the kernel halfway through it.
        """
        grown = self.scale ** self.passes(width, height, out_width, out_height) if self.is_network else 1
        pixels = max(width * height * grown * grown, out_width * out_height)
        if converted and not kept and self.streams(width, height, out_width, out_height):
            needed = pixels * STREAMED_BYTES_PER_OUTPUT_PIXEL
        else:
            copies = OUTPUT_FLOAT_COPIES + (1 if self.tta else 0) + (1 if self.color_fix else 0) + kept
            needed = pixels * 3 * 4 * copies
        free = available_memory(torch.device("cpu"))
        if needed <= free:
            return None
        return f"a {out_width} x {out_height} output needs about {_bytes(needed)} of memory and {_bytes(free)} is free"

    def choose_tile(self, spec: str, height: int, width: int) -> int | None:
        """`none`, an explicit size, or `auto`: the largest tile the free memory allows (None if the image fits)."""
        if spec == "none" or not self.is_network:
            return None
        if spec != "auto":
            return int(spec)
        assert self.descriptor is not None
        cpu_largest = self.descriptor.cpu_auto_tile or CPU_LARGEST_AUTO_TILE
        largest = (GPU_LARGEST_AUTO_TILE if self.device.type != "cpu" else cpu_largest if self.network is None
                   else OPENVINO_LARGEST_AUTO_TILE)
        tile = auto_tile_size(self.bytes_per_input_pixel, available_memory(self.device), self.overlap, self.precision,
                              maximum=largest)
        return None if max(height, width) <= tile else tile

    def tile_spec(self, spec: str, height: int, width: int) -> TileSpec:
        """The tiling of a `height` x `width` input: `choose_tile`, the overlap and the model's size requirements."""
        assert self.descriptor is not None
        size = self.descriptor.size_for(self.module.config)
        return TileSpec(tile=self.choose_tile(spec, height, width), overlap=self.overlap, align=size.multiple,
                        minimum=size.minimum)

    def upscale(self, rgb: np.ndarray, out_width: int, out_height: int, tile_spec: str = "auto",
                on_tile: Callable[[int, int], None] | None = None, warn: Callable[[str], None] | None = None,
                options: RunOptions = RunOptions(), convert: Callable[[np.ndarray], np.ndarray] | None = None,
                ) -> np.ndarray:
        """Float RGB (H, W, 3) in [0, 1] to (out_height, out_width, 3), unclamped float32.

        `options` carries a stochastic model's seed and temperature and the extra inputs the model declares
        ((1, C, h, w) tensors at any size: resized to where each pass needs them). With `convert` (float
        rows (h, W, 3) to the form they are kept in, e.g. quantised planes) the result is in that form; where
        the output streams (`streams`), each band of rows is converted as the tiler finishes it, so the whole
        output is never held in float32. Either way the values are the same.
        """
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float()
        if self.module is None:
            result = imresize(image[0], size=(out_height, out_width)).permute(1, 2, 0).numpy()
            return result if convert is None else convert(result)
        self._check_extras(options)
        runner = self._runner(options)
        height, width = image.shape[-2:]
        if convert is not None and self.streams(width, height, out_width, out_height):
            rows = _Rows(out_height, convert)
            self._tiled_pass(runner, image, options, tile_spec, on_tile, warn, sink=rows.add)
            return rows.result()
        source = image
        for _ in range(self.passes(width, height, out_width, out_height)):
            image = self._tiled_pass(runner, image, options, tile_spec, on_tile, warn)
        if self.color_fix:
            image = color_fix(image, source)
        result = image[0].permute(1, 2, 0).numpy()
        if result.shape[:2] != (out_height, out_width):
            result = lanczos_resize(result, out_width, out_height)
        return result if convert is None else convert(result)

    def streams(self, width: int, height: int, out_width: int, out_height: int) -> bool:
        """Whether the output of a `width` x `height` input can be handed on in bands as the tiles finish:
        one pass of a network gives exactly the output size, and no step needs the whole of it (the 8 views
        of --tta, --color-fix, a resize to another size)."""
        return (self.is_network and not self.tta and not self.color_fix
                and (out_width, out_height) == self.output_size(width, height))

    def _runner(self, options: RunOptions) -> Any:
        """The tile runner of one image: the converted network's where there is one, else the descriptor's."""
        if self.network is not None:
            from upscale_cli.archs.runners import OpenVinoRunner

            return OpenVinoRunner(self.network, self.scale)
        return self.descriptor.runner(self.module, self.device, self.precision, options)

    def _check_extras(self, options: RunOptions) -> None:
        """Every declared extra input given, and nothing else."""
        declared = {extra.name for extra in self.descriptor.extra_inputs}
        unknown = sorted(set(options.extras) - declared)
        if unknown:
            raise ValueError(f"{self.name} takes no input named {', '.join(unknown)}"
                             f" (it takes: {', '.join(sorted(declared)) or 'the image only'})")
        missing = sorted(e.name for e in self.descriptor.extra_inputs
                         if e.name not in options.extras and e.default is None)
        if missing:
            about = {extra.name: extra.about for extra in self.descriptor.extra_inputs}
            raise ValueError(f"{self.name} needs the input {', '.join(f'{m!r} ({about[m]})' for m in missing)}")

    def _pass_inputs(self, image: torch.Tensor, options: RunOptions) -> dict[str, TileInput]:
        """The extra inputs of one pass over `image`, each resized to the size that pass reads it at; an input
        not given is computed from `image` by its default (once per pass, before tiling)."""
        height, width = image.shape[-2:]
        inputs = {}
        for extra in self.descriptor.extra_inputs:
            given = options.extras.get(extra.name)
            tensor = (extra.default(image) if given is None else given).float()
            if extra.at == WHOLE:
                inputs[extra.name] = TileInput(tensor, None)
                continue
            factor = self.scale if extra.at == AT_OUTPUT else 1
            inputs[extra.name] = TileInput(_resized(tensor, height * factor, width * factor), factor)
        return inputs

    def _tiled_pass(self, runner: Any, image: torch.Tensor, options: RunOptions, tile_spec: str,
                    on_tile: Callable[[int, int], None] | None, warn: Callable[[str], None] | None,
                    sink: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor | None:
        """One run of the network over the whole image, or with `tta` the mean of its 8 dihedral views
        (every spatial input turned with the image); with `sink` (one view only) its output goes there in bands."""
        if sink is not None:
            return upscale_tiled(runner, image, self.tile_spec(tile_spec, *image.shape[-2:]),
                                 extras=self._pass_inputs(image, options), precision=self.precision,
                                 on_tile=on_tile, warn=warn, sink=sink)
        views = DIHEDRAL_VIEWS if self.tta else DIHEDRAL_VIEWS[:1]
        extras = self._pass_inputs(image, options)
        total = None
        for index, (turns, flip) in enumerate(views):
            view = dihedral(image, turns, flip)
            turned = {name: item if item.scale is None else TileInput(dihedral(item.tensor, turns, flip), item.scale)
                      for name, item in extras.items()}
            report = None if on_tile is None else partial(_report_view, on_tile, index, len(views))
            out = upscale_tiled(runner, view, self.tile_spec(tile_spec, *view.shape[-2:]), extras=turned,
                                precision=self.precision, on_tile=report, warn=warn)
            out = undo_dihedral(out, turns, flip)
            total = out if total is None else total.add_(out)
        assert total is not None
        return total.div_(len(views)) if len(views) > 1 else total


class _Rows:
    """An output assembled from converted bands of rows, top to bottom, into one array allocated at the first band."""

    def __init__(self, height: int, convert: Callable[[np.ndarray], np.ndarray]) -> None:
        self.height, self.convert, self.filled = height, convert, 0
        self.array: np.ndarray | None = None

    def add(self, band: torch.Tensor) -> None:
        """Convert a (1, 3, h, W) float band and store it below the rows already stored."""
        rows = self.convert(band[0].permute(1, 2, 0).numpy())
        if self.array is None:
            self.array = np.empty((self.height, *rows.shape[1:]), rows.dtype)
        self.array[self.filled : self.filled + len(rows)] = rows
        self.filled += len(rows)

    def result(self) -> np.ndarray:
        assert self.array is not None and self.filled == self.height, "the bands did not cover the output"
        return self.array


def _resized(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A (1, C, h, w) input at (height, width): unchanged when it is that size already, else bilinear
    (antialiased when shrinking), which keeps per-pixel probabilities summing to one."""
    if tuple(tensor.shape[-2:]) == (height, width):
        return tensor
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def variants(upscalers: list[Upscaler], tta: bool = False, color_fix: bool = False) -> list[Upscaler]:
    """Copies named MODEL+tta (deterministic networks) and MODEL+color-fix (super-resolution networks), to show
    beside the plain models in benchmarks and comparison sheets."""
    networks = [u for u in upscalers if u.is_network]
    extra = [replace(u, name=f"{u.name}+tta", tta=True) for u in networks if tta and not u.stochastic]
    return extra + [replace(u, name=f"{u.name}+color-fix", color_fix=True) for u in networks
                    if color_fix and u.task == SUPER_RESOLUTION]


def color_fix(sr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """One back-projection step (Irani and Peleg 1991): add to `sr` the upscaled difference between `lr` and
    `sr` shrunk to its size (MATLAB bicubic both ways). Colour and brightness drift at the input's scale
    goes; detail finer than the input's pixels stays. Sizes are (..., H, W); any ratio works."""
    shrunk = imresize(sr, size=tuple(lr.shape[-2:]))
    return sr + imresize(lr - shrunk, size=tuple(sr.shape[-2:])).to(sr.dtype)


def _bytes(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


# float32 RGB copies of the output the host holds at once beside the network's tiles (the tiler's sum and
# weights, the result, a resize; the TTA sum and the colour fix are one more each). Measured peak: 1.5 (a 16-block x4 network, 3072 x 2048
# output, 64 px tiles, `/usr/bin/time -f %M`); 3 leaves room for the encoder's buffers.
OUTPUT_FLOAT_COPIES = 3
# A streamed output: its 16-bit planes (6 bytes a pixel at most), the encoder's copy and the encoded file, and a
# band of float rows (a row of tiles).
STREAMED_BYTES_PER_OUTPUT_PIXEL = 16

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
                  color_fix: bool = False, backend: str = "torch") -> Upscaler:
    """Load `model` (a name, `bicubic`, or a .safetensors path) onto `device` at `precision`, to run on
    `backend` (`openvino_backend.BACKENDS`: `auto` is OpenVINO where it is installed and runs the model).

    `tta` (the 8-view self-ensemble) is refused for stochastic models: averaging views of samples would
    blur the very detail a sample draws. `color_fix` is refused for image-to-image models: there is no
    smaller input whose colours the output should match.
    """
    if threads:
        torch.set_num_threads(threads)
    torch_device = resolve_device(device)
    if model == BICUBIC:
        return Upscaler(BICUBIC, 4, torch_device, "fp32")
    path = Path(model) if looks_like_path(model) else find_weights(model, scale)
    if is_foreign(path):  # another project's file: converted once, cached by its digest
        path = cached_conversion(path)
    module, info = load_model(path)
    descriptor = get_architecture(info.arch)
    prepare_for_inference(module, descriptor.for_inference)
    if tta and descriptor.stochastic:
        raise ValueError(f"--tta is for deterministic models; {info.arch} draws samples (--tau 0 gives its mean)")
    if color_fix and descriptor.task != SUPER_RESOLUTION:
        raise ValueError(f"--color-fix is for super-resolution; {info.arch} is an {descriptor.task} model")
    network, backend_note = network_for(backend, torch_device.type, info.arch, _facts(module, info, descriptor),
                                        module, path, threads)
    return Upscaler(
        name=model if not looks_like_path(model) else (info.name or path.stem),
        scale=info.scale,
        device=torch_device,
        precision=resolve_precision(precision, torch_device, bf16=descriptor.bf16, fp16=descriptor.fp16),
        descriptor=descriptor,
        module=module,
        info=info,
        path=path,
        overlap=descriptor.tile_overlap if overlap is None else overlap,
        bytes_per_input_pixel=descriptor.bytes_per_input_pixel(module.config),
        tta=tta,
        color_fix=color_fix,
        digest=weights_digest(path),
        network=network,
        backend_note=backend_note,
    )


def _facts(module: nn.Module, info: CheckpointInfo, descriptor: ModelDescriptor) -> Facts | None:
    """What another runtime needs to run this feed-forward network (None: the model is not one)."""
    if not descriptor.feed_forward:
        return None
    size = descriptor.size_for(module.config)
    return Facts(name=info.name or "", task=descriptor.task, scale=info.scale, multiple=size.multiple,
                 minimum=size.minimum, overlap=descriptor.tile_overlap, bf16=descriptor.bf16)
