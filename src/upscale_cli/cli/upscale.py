"""`upscale [upscale] INPUT... [options]`: upscale files, folders, globs or stdin, safely."""

from __future__ import annotations

import sys
import time
from functools import partial
from typing import Any

import click

from upscale_cli.cli.batch import (JOB_ERRORS, Job, Outcome, Reporter, check_output_usage, destination,
                                   existing_output, failed_outcome, format_scale, load_model_for_cli, output_options,
                                   provenance, skipped, start_batch, write_output)
from upscale_cli.archs.base import RunOptions
from upscale_cli.archs.catalog import DEFAULT_MODEL
from upscale_cli.cli.common import run_guarded
from upscale_cli.cli.options import one, scale_item
from upscale_cli.cli.pipeline import OrderedWrites, Pending
from upscale_cli.cli.progress import BatchProgress
from upscale_cli.errors import ImageWriteError
from upscale_cli.openvino_backend import BACKENDS, INSTALL_HINT

DEFAULT_NAME = "{stem}_x{scale}.{ext}"


@click.command(name="upscale")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("-x", "--scale", callback=one(scale_item), help="Upscaling factor (default: the model's native scale).")
@click.option("--width", type=click.IntRange(min=1), help="Target width in pixels (height follows unless given).")
@click.option("--height", type=click.IntRange(min=1), help="Target height in pixels (width follows unless given).")
@click.option("-m", "--model", default=DEFAULT_MODEL, show_default=True,
              help="Model name, 'bicubic', a .safetensors path, or another project's .pth/.pt/.ckpt (converted once, cached).")
@click.option("--seed", type=click.IntRange(min=0), help="Seed for stochastic models (0 is a valid seed).")
@click.option("--tau", type=click.FloatRange(0, 2),
              help="Sampling temperature for stochastic models (default: the model's own).")
@click.option("--tta", is_flag=True,
              help="Average the model's output over the 8 flips and rotations of the input: 8x the time, "
                   "slightly higher PSNR (deterministic models).")
@click.option("--color-fix", is_flag=True,
              help="Match the output's colour and brightness at the input's scale to the input "
                   "(one bicubic back-projection step); finer detail is kept.")
@click.option("--input", "extra_inputs", multiple=True, metavar="NAME=VALUE",
              help="An extra input of models that take one, e.g. --input prior=seg.png (repeatable).")
@click.option("--seg", metavar="FILE",
              help="A semantic prior for models that take one: an index image (classes 0..7) or a probability "
                   "map (.npy or .safetensors, 8 channels), at the input's or the output's size. Same as "
                   "--input prior=FILE.")
@click.option("--seg-class", metavar="NAME",
              help="One class of the semantic prior everywhere (e.g. sky, grass, building, water): texture "
                   "steered by hand. Same as --input prior=class:NAME.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True, envvar="UPSCALE_BACKEND",
              show_envvar=True,
              help="What runs the network on the CPU: auto is OpenVINO where it is installed "
                   f"({INSTALL_HINT}) and converts the model (once, cached), else torch.")
@output_options(DEFAULT_NAME)
def upscale(**opts: Any) -> None:
    """Upscale images: files, folders (-r for subfolders), glob patterns, or '-' for stdin.

    Exit codes: 0 all written, 1 some inputs failed (the rest were written), 2 usage error,
    3 the model could not be loaded or run, 130 interrupted, 143 terminated.
    """
    run_guarded(lambda: _run(opts), opts["verbose"])


def parse_inputs(items: tuple[str, ...]) -> dict[str, str]:
    """`--input NAME=VALUE` items as name -> value."""
    values: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise click.BadParameter(f"{item!r}: give NAME=VALUE", param_hint="--input")
        values[name] = value
    return values


def extra_values(opts: dict[str, Any]) -> dict[str, str]:
    """The extra inputs the options name: --input NAME=VALUE, and --seg / --seg-class for the prior."""
    values = parse_inputs(opts["extra_inputs"])
    for flag, value in (("seg", opts["seg"]), ("seg_class", opts["seg_class"] and f"class:{opts['seg_class']}")):
        if value:
            if "prior" in values:
                raise click.UsageError("give the prior once: --seg, --seg-class or --input prior=...")
            values["prior"] = value
    return values


def _run(opts: dict[str, Any]) -> int:
    check_output_usage(opts)
    opts["extras"] = extra_values(opts)
    if opts["scale"] is not None and (opts["width"] or opts["height"]):
        raise click.UsageError("give either --scale or --width/--height, not both")
    jobs, report = start_batch(opts, opts["output"])
    if jobs:
        upscaler = load_model_for_cli(opts, report, opts["scale"], opts["tta"], opts["color_fix"])
        for flag in ("seed", "tau"):
            if opts[flag] is not None and not upscaler.stochastic:
                report.note(f"--{flag} has no effect on {upscaler.name}: the model is deterministic")
        for flag in ("tta", "color_fix"):
            if opts[flag] and not upscaler.is_network:
                report.note(f"--{flag.replace('_', '-')} has no effect on bicubic")
        try:
            upscaler.output_size(1, 1, opts["scale"], opts["width"], opts["height"])
            upscaler.check_extra_names(opts["extras"])
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        report.note(f"{upscaler.name} (x{upscaler.scale}) on {upscaler.device}, {upscaler.precision}"
                    f"{', openvino' if upscaler.backend == 'openvino' else ''}, "
                    f"tile {opts['tile']}, overlap {upscaler.overlap}{', 8-view tta' if upscaler.tta else ''}"
                    f"{', color-fix' if upscaler.color_fix else ''}; "
                    f"{len(jobs)} image(s)")
        with BatchProgress(len(jobs), enabled=report.show_progress) as progress, report.running(), \
                OrderedWrites(report, progress) as writes:
            report.printer = progress.print
            for job in jobs:
                writes.add(_process(job, upscaler, opts, progress, report, writes))
    return report.finish()


def shorter_side(image: Any, size: int) -> Any:
    """The image resized (Lanczos, float) so that its shorter side is `size` px, alpha alike."""
    from dataclasses import replace

    from upscale_cli.image_io import lanczos_resize

    factor = size / min(image.width, image.height)
    width, height = max(1, round(image.width * factor)), max(1, round(image.height * factor))
    alpha = None if image.alpha is None else lanczos_resize(image.alpha, width, height)
    return replace(image, rgb=lanczos_resize(image.rgb, width, height), alpha=alpha)


def _process(job: Job, upscaler: Any, opts: dict[str, Any], progress: BatchProgress, report: Reporter,
             writes: OrderedWrites, name_fields: dict[str, str] | None = None) -> Pending:
    """Read and upscale one image, and have `writes` encode and write it; every failure becomes an Outcome,
    never an exception. `name_fields` are more fields for the name template (stylize's {style})."""
    from upscale_cli.image_io import colour_planes, extension, output_depth, output_format, read_image

    started = time.perf_counter()
    try:
        source = sys.stdin.buffer if job.source is None else job.source
        image = read_image(source, max_pixels=opts["max_pixels"], name=job.label)
        for note in image.notes:
            report.note(f"{job.label}: {note}")
        if opts.get("size"):
            image = shorter_side(image, opts["size"])
        extras = upscaler.load_extras(opts["extras"], image.height, image.width)
        out_w, out_h = upscaler.output_size(image.width, image.height, opts["scale"], opts["width"], opts["height"])
        fmt = output_format(opts["fmt"], image.format, image.alpha is not None)
        if opts["fmt"] not in ("same", fmt):
            report.note(f"{job.label}: {opts['fmt']} cannot hold the alpha channel; writing {fmt}")
        seed = 0 if opts["seed"] is None else opts["seed"]
        tau = upscaler.default_tau if opts["tau"] is None else opts["tau"]
        path = destination(job, opts["name_template"], model=upscaler.name, scale=format_scale(out_w / image.width),
                           ext=extension(fmt).lstrip("."), seed=seed if upscaler.stochastic else "",
                           tau=f"{tau:g}" if upscaler.stochastic else "", **(name_fields or {}))
        shown = "<stdout>" if path is None else str(path)
        extra = {"model": upscaler.name, "width": out_w, "height": out_h, "format": fmt,
                 "scale": round(out_w / image.width, 4)}
        if upscaler.stochastic:
            extra.update(seed=seed, tau=tau)
        if opts["as_json"] or opts["verbose"]:
            estimates = upscaler.describe_input(image.rgb)
            if estimates:
                extra["estimates"] = estimates
                report.note(f"{job.label}: {upscaler.name} estimates "
                            + ", ".join(f"{name.replace('_', ' ')} {value:g}" for name, value in estimates.items()),
                            verbose_only=True)
        strength, method = opts.get("strength", 1.0), opts.get("method")
        made_by = provenance(upscaler, out_w, out_h, seed, tau, opts["extras"], strength, method)
        writes.settle(path)
        why = existing_output(path, opts, made_by)
        if why is not None:
            return skipped(job.label, shown, why, extra)
        if opts["dry_run"]:
            return Outcome(job.label, "dry-run", shown, extra=extra)
        problem = upscaler.memory_problem(image.width, image.height, out_w, out_h, converted=True)
        if problem:
            raise ImageWriteError(shown, f"{problem} (ask for less with --scale, --width or --height)")
        progress.start_image(job.label, image.width * image.height)
        planes = upscaler.upscale(image.rgb, out_w, out_h, opts["tile"], on_tile=progress.tile_done,
                                  warn=lambda m: report.note(f"{job.label}: {m}"),
                                  options=RunOptions(seed, tau, extras, strength, method),
                                  convert=partial(colour_planes, grayscale=image.grayscale,
                                                  depth=output_depth(fmt, image.bit_depth)))
    except JOB_ERRORS as exc:
        return failed_outcome(job.label, exc, opts["verbose"])

    def finish() -> Outcome:
        try:
            raced = write_output(path, planes, image, fmt, opts, made_by)
        except JOB_ERRORS as exc:
            return failed_outcome(job.label, exc, opts["verbose"])
        progress.image_done(out_w * out_h)
        if raced:
            return skipped(job.label, shown, raced, extra)
        extra["seconds"] = round(time.perf_counter() - started, 3)
        return Outcome(job.label, "ok", shown, extra=extra)

    return writes.later(finish, path, out_w * out_h)
