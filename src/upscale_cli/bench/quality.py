"""Quality figures of an upscaler on a benchmark folder (HR/ + LR_x{s}/, or HR only).

Besides the paper figures of `sr_figures` (PSNR-Y, SSIM-Y, RGB PSNR, sharpness), every model gets
LR-consistency (does the output shrink back to its input?), stochastic models also diversity
(how much their samples differ) and density models the NLL of the true HR in bits/dim.
`--degrade` makes LR from HR with blur and noise, as blind super-resolution papers' tables do.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from upscale_cli.archs.base import RunOptions
from upscale_cli.bench.report import BenchError, typed_errors
from upscale_cli.degrade import Degradation
from upscale_cli.errors import ImageReadError, InferenceError
from upscale_cli.metrics import psnr, sr_figures
from upscale_cli.models import BICUBIC, looks_like_path
from upscale_cli.resize import imresize, quantize
from upscale_cli.train.data import list_images, load_rgb

DEFAULT_SAMPLES = 4
LR_FILE_MISMATCH_DB = 50.0  # 8-bit rounding alone keeps an HR's own LR-PSNR near 59 dB


@dataclass
class ImagePair:
    """One benchmark image: its name, HR and LR as float RGB in [0, 1]."""

    name: str
    hr: torch.Tensor
    lr: torch.Tensor


def load_pairs(folder: Path, scale: int) -> list[ImagePair]:
    """Pairs from `folder/HR` + `folder/LR_x{scale}` (LR used as given), or from HR images alone.

    With HR only (no `LR_x{scale}` folder, or `folder` itself holds the images), LR is made with the
    MATLAB-compatible bicubic and rounded to 8 bits, after cropping HR to a multiple of `scale`.
    """
    folder = Path(folder)
    hr_dir = folder / "HR" if (folder / "HR").is_dir() else folder
    lr_dir = folder / f"LR_x{scale}"
    pairs = []
    for path in list_images(hr_dir):
        hr = load_rgb(path)
        if lr_dir.is_dir():
            lr = load_rgb(lr_dir / path.name)
        else:
            hr = crop_to_multiple(hr, scale)
            lr = quantize(imresize(hr, scale=1 / scale))
        if tuple(lr.shape[-2:]) != (hr.shape[-2] // scale, hr.shape[-1] // scale):
            raise ValueError(f"{path.name}: LR {tuple(lr.shape[-2:])} is not HR {tuple(hr.shape[-2:])} / {scale}")
        pairs.append(ImagePair(path.stem, hr, lr))
    if not pairs:
        raise ValueError(f"{hr_dir}: no images")
    return pairs


def crop_to_multiple(image: torch.Tensor, scale: int) -> torch.Tensor:
    """Drop right and bottom pixels so that both sides are multiples of `scale`."""
    h, w = (image.shape[-2] // scale) * scale, (image.shape[-1] // scale) * scale
    return image[..., :h, :w]


def figures_key(dataset: str, tau: float | None) -> str:
    """The name a checkpoint's recorded figures go under: the dataset, per temperature for stochastic models."""
    return dataset if tau is None else f"{dataset}@tau{tau:g}"


def mean_figures(figures: list[dict[str, float]]) -> dict[str, float]:
    """The mean of every figure over a list of per-image (or per-sample) figures."""
    return {k: math.fsum(f[k] for f in figures) / len(figures) for k in figures[0]}


def evaluate(upscale: Callable[[torch.Tensor], torch.Tensor], pairs: list[ImagePair],
             scale: int) -> dict[str, object]:
    """Mean and per-image PSNR-Y / SSIM-Y / PSNR-RGB / sharpness of `upscale(lr) -> sr` on `pairs`."""
    per_image = {}
    for pair in pairs:
        sr = upscale(pair.lr)
        if sr.shape != pair.hr.shape:
            raise ValueError(f"{pair.name}: output {tuple(sr.shape)} does not match HR {tuple(pair.hr.shape)}")
        per_image[pair.name] = sr_figures(sr, pair.hr, border=scale)
    return {"mean": mean_figures(list(per_image.values())), "images": per_image}


def perceptual_distance(sr: torch.Tensor, hr: torch.Tensor) -> dict[str, float]:
    """{"stlpips": ST-LPIPS of the 8-bit output against HR (lower is closer)} when the `perceptual` extra is
    installed, else nothing: a figure that does not reward blur the way PSNR does."""
    from upscale_cli.perceptual import stlpips

    metric = stlpips()
    if metric is None:
        return {}
    with torch.no_grad():
        return {"stlpips": metric(quantize(sr)[None].float(), hr[None].float()).item()}


def lr_consistency(sr: torch.Tensor, lr: torch.Tensor) -> float:
    """PSNR (dB, RGB, 0..255, whole image) between `lr` and the MATLAB-bicubic downscale of the 8-bit `sr`."""
    shrunk = imresize(quantize(sr), size=tuple(lr.shape[-2:]))
    return psnr(shrunk * 255, lr * 255)


def diversity(samples: list[torch.Tensor]) -> float:
    """Mean per-pixel standard deviation across samples (images in [0, 1]), on the 0..255 scale."""
    if len(samples) < 2:
        raise ValueError("diversity needs at least two samples")
    stack = torch.stack([s.double() for s in samples])
    return stack.std(dim=0, correction=0).mean().item() * 255


@dataclass
class Dataset:
    """A benchmark folder loaded: its name, its pairs, and where their LR came from."""

    name: str
    folder: Path
    pairs: list[ImagePair]
    lr_source: str  # short label for tables
    lr_note: str  # one line for the terminal
    hr_lr_psnr: float | None = None  # mean LR-PSNR of the HR images themselves against given LR files


def audit_lr_files(pairs: list[ImagePair], scale: int) -> tuple[float, str]:
    """The HR images' own mean LR-PSNR against the given LR files, and a note naming mismatched files.

    That mean is the ceiling of the LR-PSNR column: no output can shrink back to the LR files better
    than the true HR does. An LR file the HR misses by far (under 50 dB) was not made from exactly that
    HR by MATLAB bicubic, and caps every model's LR-PSNR on that image.
    """
    own = {pair.name: lr_consistency(crop_to_multiple(pair.hr, scale), pair.lr) for pair in pairs}
    ceiling = math.fsum(own.values()) / len(own)
    note = f"LR_x{scale}/ files used as given; the HR images themselves score {ceiling:.2f} dB LR-PSNR"
    mismatched = [f"{name} ({value:.2f} dB)" for name, value in own.items() if value < LR_FILE_MISMATCH_DB]
    if mismatched:
        note += f"; LR files their HR misses by more than 8-bit rounding, capping LR-PSNR: {', '.join(mismatched)}"
    return ceiling, note


def dataset_name(folder: Path) -> str:
    """`Set5` for both `.../Set5` and `.../Set5/HR`."""
    folder = Path(folder).resolve()
    return folder.parent.name if folder.name == "HR" else folder.name


def load_dataset(folder: Path, scale: int, degradation: Degradation | None = None, seed: int = 0) -> Dataset:
    """Load a folder as `load_pairs` does; with a degradation, LR is remade from HR (noise seeded by `seed`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"--data {folder}: no such folder")
    try:
        pairs = load_pairs(folder, scale)
        has_lr = (folder / f"LR_x{scale}").is_dir()
        if degradation is None and has_lr:
            ceiling, note = audit_lr_files(pairs, scale)
            return Dataset(dataset_name(folder), folder, pairs, f"LR_x{scale}", note, ceiling)
        if degradation is None:
            note = f"no LR_x{scale}/ folder: LR made from HR with MATLAB bicubic"
            return Dataset(dataset_name(folder), folder, pairs, "bicubic", note)
        generator = torch.Generator().manual_seed(seed)
        for pair in pairs:
            pair.hr = crop_to_multiple(pair.hr, scale)
            pair.lr = degradation.apply(pair.hr, scale, generator)
    except (OSError, ValueError, ImageReadError) as exc:
        raise BenchError(f"--data {folder}: {exc}") from None
    note = (f"LR made from HR with {degradation.label} (21x21 Gaussian blur, MATLAB bicubic x1/{scale}, Gaussian "
            "noise, 8-bit rounding: upscale_cli.degrade)")
    if has_lr:
        note += f" (the given LR_x{scale}/ files are NOT used)"
    return Dataset(dataset_name(folder), folder, pairs, degradation.label, note)


def open_upscaler(model: str, scale: int, device: str = "auto", precision: str = "fp32",
                  threads: int | None = None) -> Any:
    """`load_upscaler`, with an impossible device or precision as a BenchError.

    A checkpoint given as a file is labelled by its file name, not the architecture name in its metadata, so that
    two runs of one architecture (`-m runs/l1.safetensors -m runs/mse.safetensors`) stay apart in the tables.
    """
    from upscale_cli.engine import load_upscaler

    try:
        upscaler = load_upscaler(model, scale, device, precision, threads=threads)
    except ValueError as exc:
        raise BenchError(f"{model} in {precision}: {exc}") from None
    return replace(upscaler, name=Path(model).stem) if looks_like_path(model) else upscaler


def precisions_for(model: str, precisions: tuple[str, ...]) -> tuple[str, ...]:
    """The precisions to measure `model` in: bicubic has no reduced-precision path and runs once, in fp32."""
    return ("fp32",) if model == BICUBIC else precisions


def check_tile(upscaler: Any, tile: str) -> None:
    """Refuse, before any measuring, a tile size that the tiler cannot use with this model's overlap."""
    if upscaler.is_network and tile.isdigit() and int(tile) <= upscaler.overlap:
        raise BenchError(f"--tile {tile}: a tile must be larger than the tile overlap ({upscaler.overlap} px)")


def tensor_upscaler(upscaler: Any, scale: int, tile: str) -> Callable[..., torch.Tensor]:
    """`upscaler.upscale` as (3, h, w) tensor -> (3, h*scale, w*scale) tensor, with the run's options."""

    def run(lr: torch.Tensor, options: RunOptions = RunOptions()) -> torch.Tensor:
        height, width = lr.shape[-2:]
        out = upscaler.upscale(lr.permute(1, 2, 0).numpy(), width * scale, height * scale, tile, options=options)
        return torch.from_numpy(out).permute(2, 0, 1)

    return run


def score_draws(draw: Callable[[torch.Tensor], list[torch.Tensor]], pairs: list[ImagePair],
                scale: int) -> dict[str, Any]:
    """Figures of `draw(lr) -> [sr, ...]` per image (averaged over its samples) and their means, plus throughput.

    Each sample gets `sr_figures` and `lr_psnr`; with two or more samples an image also gets `diversity`.
    """
    per_image: dict[str, dict[str, float]] = {}
    seconds, pixels = 0.0, 0
    for pair in pairs:
        started = time.perf_counter()
        outputs = draw(pair.lr)
        seconds += time.perf_counter() - started
        for sr in outputs:
            if sr.shape != pair.hr.shape:
                raise InferenceError(f"{pair.name}: output {tuple(sr.shape)} does not match HR {tuple(pair.hr.shape)}")
            pixels += sr.shape[-1] * sr.shape[-2]
        figures = [{**sr_figures(sr, pair.hr, border=scale), "lr_psnr": lr_consistency(sr, pair.lr),
                    **perceptual_distance(sr, pair.hr)} for sr in outputs]
        per_image[pair.name] = mean_figures(figures)
        if len(outputs) > 1:
            per_image[pair.name]["diversity"] = diversity(outputs)
    return {"mean": mean_figures(list(per_image.values())), "images": per_image, "seconds": seconds,
            "megapixels_per_second": pixels / 1e6 / seconds if seconds > 0 else math.nan}


def evaluate_upscaler(upscaler: Any, pairs: list[ImagePair], scale: int, tile: str = "auto",
                      taus: tuple[float, ...] = (), samples: int = DEFAULT_SAMPLES,
                      seed: int = 0, inputs: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Score a loaded `Upscaler` after one warm-up image: one result, or one per temperature if stochastic.

    A stochastic upscaler (`.stochastic`, `upscale(..., options=RunOptions(seed, tau))`) draws `samples` outputs per
    image with seeds `seed`, `seed + 1`, ...; figures are averaged over the samples. No `taus` means
    the model's own default temperature. `inputs` are extra inputs as on the command line (name -> value),
    read for each image's size; without them a model computes its own.
    """
    run = tensor_upscaler(upscaler, scale, tile)

    def options(lr: torch.Tensor, seed: int = 0, tau: float | None = None) -> RunOptions:
        return RunOptions(seed, tau, upscaler.load_extras(inputs, *lr.shape[-2:]) if inputs else {})

    with typed_errors(upscaler.name):
        if not upscaler.stochastic:
            run(pairs[0].lr, options(pairs[0].lr))
            return [{"tau": None, "samples": 1, **score_draws(lambda lr: [run(lr, options(lr))], pairs, scale)}]
        results = []
        for tau in taus or (upscaler.default_tau,):
            run(pairs[0].lr, options(pairs[0].lr, seed, tau))

            def draw(lr: torch.Tensor, tau: float = tau) -> list[torch.Tensor]:
                return [run(lr, options(lr, seed + i, tau)) for i in range(samples)]

            results.append({"tau": tau, "samples": samples, **score_draws(draw, pairs, scale)})
        if upscaler.nll is not None:
            add_likelihood(results, upscaler.nll, pairs, seed)
        return results


def add_likelihood(results: list[dict[str, Any]], nll: Callable[..., float], pairs: list[ImagePair],
                   seed: int) -> None:
    """Put each image's NLL (bits/dim; it does not depend on tau) and their mean into every result."""
    values = {pair.name: nll(pair.hr, pair.lr, seed=seed) for pair in pairs}
    for result in results:
        for name, value in values.items():
            result["images"][name]["nll_bpd"] = value
        result["mean"]["nll_bpd"] = math.fsum(values.values()) / len(values)
