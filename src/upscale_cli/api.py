"""A small Python API for scripts and notebooks: the CLI's models, defaults and engine, without files.

    from PIL import Image
    from upscale_cli import api

    model = api.load()                                   # the default model, on CUDA when present
    big = model.upscale(Image.open("photo.png"))         # PIL in, PIL out; numpy in, numpy out
    drawn = api.load(api.DEFAULT_SAMPLER).sample(Image.open("small.png"), n=4, tau=0.8)

Images are PIL images (L, LA, RGB, RGBA, P, I;16) or numpy arrays (H, W), (H, W, 3) or (H, W, 4) of
uint8, uint16 or floats in [0, 1]; results come back in the same kind (PIL results are 8-bit, as PIL has
no 16-bit colour). Alpha is resized with Lanczos as the CLI does, and grey inputs give grey outputs.
`progress=True` shows a tqdm bar over the tiles, which works in terminals and notebooks alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from upscale_cli.archs.base import RunOptions
from upscale_cli.archs.catalog import DEFAULT_MODEL, DEFAULT_SAMPLER

__all__ = ["DEFAULT_MODEL", "DEFAULT_SAMPLER", "Model", "load"]


def load(model: str = DEFAULT_MODEL, *, device: str = "auto", precision: str = "auto", tile: str = "auto",
         tta: bool = False, color_fix: bool = False, threads: int | None = None, backend: str = "torch") -> Model:
    """A model by name (`upscale models` lists them), `bicubic`, or a .safetensors path, ready to run
    (`backend`: as the CLI's `--backend`; torch unless asked, so that a script's results do not change with
    what else is installed)."""
    from upscale_cli.engine import load_upscaler

    upscaler = load_upscaler(model, None, device, precision, threads=threads, tta=tta, color_fix=color_fix,
                             backend=backend)
    if tile not in ("auto", "none") and int(tile) <= upscaler.overlap:
        raise ValueError(f"the tile ({tile}) must be larger than the overlap ({upscaler.overlap})")
    return Model(upscaler, tile)


@dataclass(frozen=True)
class _Layout:
    """How an input image was given, so that its result is given back the same way."""

    pil: bool
    dtype: Any
    grey: bool
    alpha: bool


class Model:
    """A loaded model: `upscale` for one output, `sample` for several plausible ones (stochastic models)."""

    def __init__(self, upscaler: Any, tile: str = "auto") -> None:
        self.upscaler = upscaler
        self.tile = tile

    name = property(lambda self: self.upscaler.name)
    scale = property(lambda self: self.upscaler.scale)
    task = property(lambda self: self.upscaler.task)
    stochastic = property(lambda self: self.upscaler.stochastic)
    device = property(lambda self: self.upscaler.device)
    precision = property(lambda self: self.upscaler.precision)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, x{self.scale}, {self.task}, {self.device}, {self.precision})"

    def upscale(self, image: Any, scale: float | None = None, width: int | None = None, height: int | None = None,
                *, seed: int = 0, tau: float | None = None, extras: Mapping[str, Any] | None = None,
                progress: bool = False) -> Any:
        """The model's output for `image` at its native scale, another `scale`, or `width` / `height`.

        `seed` and `tau` draw a stochastic model's sample (the CLI's defaults: seed 0, the model's tau);
        `extras` are a model's other inputs by name, as (1, C, h, w) tensors or (h, w, C) arrays."""
        rgb, alpha, layout = _planes(image)
        height_in, width_in = rgb.shape[:2]
        out_width, out_height = self.upscaler.output_size(width_in, height_in, scale, width, height)
        problem = self.upscaler.memory_problem(width_in, height_in, out_width, out_height)
        if problem:
            raise MemoryError(problem)
        options = RunOptions(seed, tau, {name: _tensor(value) for name, value in (extras or {}).items()})
        with _TileBar(progress, f"{self.name} x{out_width / width_in:g}") as bar:
            out = self.upscaler.upscale(rgb, out_width, out_height, self.tile, on_tile=bar.update, options=options)
        return _image(out, alpha, layout)

    def sample(self, image: Any, n: int = 4, tau: float | None = None, seed: int = 0,
               progress: bool = False) -> list[Any]:
        """`n` samples of a stochastic model at temperature `tau` (default: the model's), seeds seed..seed+n-1:
        the same images `upscale sample` writes."""
        if not self.stochastic:
            raise ValueError(f"{self.name} is deterministic: sample needs a stochastic model such as {DEFAULT_SAMPLER}")
        return [self.upscale(image, seed=seed + i, tau=tau, progress=progress) for i in range(n)]


def _planes(image: Any) -> tuple[np.ndarray, np.ndarray | None, _Layout]:
    """Float RGB planes (H, W, 3), the alpha plane or None, and the layout of `image`."""
    pil = not isinstance(image, np.ndarray)
    if pil:
        image = _pil_array(image)
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {array.shape}")
    if array.dtype == np.uint8 or array.dtype == np.uint16:
        planes = array.astype(np.float32) / np.iinfo(array.dtype).max
    elif np.issubdtype(array.dtype, np.floating):
        planes = array.astype(np.float32)
    else:
        raise ValueError(f"expected uint8, uint16 or float pixels, got {array.dtype}")
    grey, alpha = planes.shape[2] <= 2, planes.shape[2] in (2, 4)
    colour = planes[:, :, :1].repeat(3, axis=2) if grey else planes[:, :, :3]
    layout = _Layout(pil, np.uint8 if pil else array.dtype, grey, alpha)
    return np.ascontiguousarray(colour), (planes[:, :, -1].copy() if alpha else None), layout


def _pil_array(image: Any) -> np.ndarray:
    """A PIL image's pixels: 8-bit L, LA, RGB or RGBA (palettes expanded), or 16-bit grey as uint16."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(image).astype(np.uint16)
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        has_alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    return np.asarray(image)


def _image(rgb: np.ndarray, alpha: np.ndarray | None, layout: _Layout) -> Any:
    """The output planes in the input's layout (quantised like the CLI's files for integer layouts)."""
    from upscale_cli.image_io import lanczos_resize, luma, quantise

    height, width = rgb.shape[:2]
    planes = [luma(rgb)[:, :, None] if layout.grey else rgb]
    if alpha is not None:
        planes.append(lanczos_resize(alpha, width, height).clip(0, 1)[:, :, None])
    stacked = np.concatenate(planes, axis=2)
    if np.issubdtype(layout.dtype, np.floating):
        out = stacked.astype(layout.dtype)
    else:
        out = quantise(stacked, 16 if layout.dtype == np.uint16 else 8)
    out = out[:, :, 0] if out.shape[2] == 1 else out
    if not layout.pil:
        return out
    from PIL import Image

    return Image.fromarray(out)


def _tensor(value: Any) -> Any:
    """An extra input as a (1, C, h, w) float tensor: tensors as given, (h, w, C) arrays turned."""
    import torch

    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value, dtype=np.float32)
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


class _TileBar:
    """A tqdm bar over the tiles of one image when asked for, else nothing."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled, self.label, self.bar = enabled, label, None

    def __enter__(self) -> _TileBar:
        return self

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.label, unit="tile")
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()
