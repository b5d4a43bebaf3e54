"""`upscale compare IMAGE -m MODEL -m MODEL`: one labelled sheet of several models on the same crop.

Columns: the LR (pixels replicated), bicubic, each model, and with --hr the true HR; with --hr every
label also carries the crop's PSNR-Y against it, so the sheet shows quality and says it in numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from upscale_cli.cli.common import echo_err, run_guarded
from upscale_cli.cli.options import DEVICE_HELP, PRECISIONS, device_item, one
from upscale_cli.errors import ImageReadError, ImageWriteError

DEFAULT_CROP = 128  # LR px a side of the default centre crop: 512 px cells at x4
MIN_MARGIN = 8  # LR px of context around the crop, for models without a tile overlap (bicubic's reach is 2)


def crop_box(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int, int, int] | None:
    """`X,Y,W,H` (LR pixels) into a tuple of non-negative ints with a positive size."""
    if value is None:
        return None
    try:
        box = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give X,Y,W,H in LR pixels, e.g. 64,0,48,40") from None
    if len(box) != 4 or min(box) < 0 or box[2] < 1 or box[3] < 1:
        raise click.BadParameter(f"{value!r}: give X,Y,W,H in LR pixels with W and H of at least 1")
    return box  # type: ignore[return-value]


@click.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-m", "--model", "models", multiple=True, metavar="NAME|PATH",
              help="Model to show (repeatable; default: every shipped model). bicubic is always shown.")
@click.option("--crop", callback=crop_box, metavar="X,Y,W,H",
              help=f"The LR region to compare (default: the centre {DEFAULT_CROP} px square, or the whole image).")
@click.option("--hr", "hr_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The true high-resolution image: adds an HR column and each output's PSNR-Y on the crop.")
@click.option("--zoom", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Enlarge every cell this many times with nearest neighbour, so texture shows unsmoothed.")
@click.option("--tta", is_flag=True, help="Also show each deterministic model with `upscale --tta`.")
@click.option("--color-fix", is_flag=True, help="Also show each model with `upscale --color-fix`.")
@click.option("--tau", type=click.FloatRange(0, 2), help="Temperature for stochastic models (default: the model's).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed for stochastic models.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="The sheet (PNG). Default: IMAGE's stem + _compare.png, next to it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing sheet.")
@click.option("--device", default="auto", show_default=True, callback=one(device_item), help=DEVICE_HELP)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True)
@click.option("-v", "--verbose", is_flag=True, help="Tracebacks on errors.")
def compare(**opts: Any) -> None:
    """Show several models side by side on one crop of IMAGE, as one labelled PNG sheet.

    Exit codes: 0 written, 1 the image cannot be read or the sheet written, 2 usage error,
    3 a model cannot be loaded or run.
    """
    run_guarded(lambda: _run(opts), opts["verbose"])


def _run(opts: dict[str, Any]) -> int:
    from upscale_cli.cli.bench import model_list, super_resolution_only
    from upscale_cli.engine import load_upscaler, variants
    from upscale_cli.image_io import encode_image, read_image, write_image
    from upscale_cli.sheets import contact_sheet, nearest_resize

    output = opts["output"] or opts["image"].with_name(f"{opts['image'].stem}_compare.png")
    if output.exists() and not opts["overwrite"]:
        raise ImageWriteError(output, "exists (use --overwrite)")
    lr = read_image(opts["image"]).rgb
    try:
        upscalers = [load_upscaler(m, device=opts["device"], precision=opts["precision"])
                     for m in model_list(opts["models"])]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    super_resolution_only(upscalers, click.UsageError)
    upscalers += variants(upscalers, tta=opts["tta"], color_fix=opts["color_fix"])
    scale = max((u.scale for u in upscalers if u.is_network), default=4)  # bicubic takes any scale
    box = opts["crop"] or centre_box(lr.shape[1], lr.shape[0])
    check_box(box, lr.shape[1], lr.shape[0], opts["image"])
    hr = None if opts["hr_path"] is None else hr_crop(read_image(opts["hr_path"]).rgb, lr.shape, box, scale,
                                                       opts["hr_path"])
    columns = compare_columns(lr, box, upscalers, scale, hr, opts["tau"], opts["seed"])
    zoom = opts["zoom"]
    cells = [nearest_resize(cell, cell.shape[1] * zoom, cell.shape[0] * zoom) for _, cell in columns]
    sheet = contact_sheet([cells], [""], [name for name, _ in columns])
    write_image(output, encode_image(sheet.astype("float32") / 255, None, "png"), overwrite=opts["overwrite"])
    echo_err(f"wrote {output} ({len(columns)} columns, LR crop {box[2]}x{box[3]} at {box[0]},{box[1]}, x{scale}"
             f"{f', shown {zoom}x' if zoom > 1 else ''})")
    return 0


def compare_columns(lr: Any, box: tuple[int, int, int, int], upscalers: list[Any], scale: int, hr: Any | None,
                    tau: float | None, seed: int) -> list[tuple[str, Any]]:
    """(label, float RGB cell) per column: the LR, each model, and with `hr` the HR, the labels then
    carrying each output's PSNR-Y on the crop."""
    import torch

    columns = [("LR", lr_cell(lr, box, scale))]
    with torch.inference_mode():
        for upscaler in upscalers:
            columns.append((label(upscaler, tau, seed), upscale_box(upscaler, lr, box, scale, tau=tau, seed=seed)))
    if hr is None:
        return columns
    scored = [(f"{name} {psnr_y(cell, hr):.2f} dB" if name != "LR" else name, cell) for name, cell in columns]
    return scored + [("HR", hr)]


def centre_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The centre square of at most DEFAULT_CROP px a side (the whole of a smaller side)."""
    w, h = min(width, DEFAULT_CROP), min(height, DEFAULT_CROP)
    return (width - w) // 2, (height - h) // 2, w, h


def check_box(box: tuple[int, int, int, int], width: int, height: int, path: Path) -> None:
    x, y, w, h = box
    if x + w > width or y + h > height:
        raise click.BadParameter(f"{x},{y},{w},{h} reaches outside {path} ({width}x{height})", param_hint="--crop")


def hr_crop(hr: Any, lr_shape: tuple[int, ...], box: tuple[int, int, int, int], scale: int, path: Path) -> Any:
    """The HR pixels under the LR box; the HR must be `scale` times the LR (extra rows or columns are allowed,
    as benchmark HR images are often cropped to a multiple of the scale only for their LR)."""
    if hr.shape[0] // scale != lr_shape[0] or hr.shape[1] // scale != lr_shape[1]:
        raise ImageReadError(path, f"is {hr.shape[1]}x{hr.shape[0]}, not {scale}x the LR "
                                   f"({lr_shape[1]}x{lr_shape[0]})")
    x, y, w, h = box
    return hr[y * scale:(y + h) * scale, x * scale:(x + w) * scale]


def lr_cell(lr: Any, box: tuple[int, int, int, int], scale: int) -> Any:
    from upscale_cli.sheets import nearest_resize

    x, y, w, h = box
    return nearest_resize(lr[y:y + h, x:x + w], w * scale, h * scale)


def upscale_box(upscaler: Any, lr: Any, box: tuple[int, int, int, int], scale: int, tau: float | None,
                seed: int) -> Any:
    """The model's output over the LR box, computed on the box plus a margin of the model's tile overlap
    (at least MIN_MARGIN px, clipped to the image), so that the crop matches the whole image's output where
    the margin covers the receptive field, at the cost of the crop alone."""
    x, y, w, h = box
    margin = max(upscaler.overlap, MIN_MARGIN)
    left, top = max(0, x - margin), max(0, y - margin)
    right, bottom = min(lr.shape[1], x + w + margin), min(lr.shape[0], y + h + margin)
    from upscale_cli.archs.base import RunOptions

    out = upscaler.upscale(lr[top:bottom, left:right], (right - left) * scale, (bottom - top) * scale,
                           options=RunOptions(seed, tau))
    return out[(y - top) * scale:(y - top + h) * scale, (x - left) * scale:(x - left + w) * scale]


def label(upscaler: Any, tau: float | None, seed: int) -> str:
    if not upscaler.stochastic:
        return upscaler.name
    return f"{upscaler.name} tau {upscaler.default_tau if tau is None else tau:g} seed {seed}"


def psnr_y(cell: Any, hr: Any) -> float:
    """PSNR-Y (BT.601) of an 8-bit-rounded output against the HR crop, all of it: a crop has no image border
    to shave, unlike the whole images of `upscale bench`."""
    import torch

    from upscale_cli.metrics import psnr, rgb_to_y

    def luma(a: Any) -> torch.Tensor:
        return rgb_to_y(torch.from_numpy(a.transpose(2, 0, 1).copy()).double().clamp(0, 1).mul(255).round().div(255))

    return psnr(luma(cell), luma(hr))
