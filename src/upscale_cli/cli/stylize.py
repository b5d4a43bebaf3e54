"""`upscale stylize CONTENT... --style FILE [--style FILE ...]`: each content image in each style, safely."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from upscale_cli.archs.catalog import DEFAULT_STYLIZER, TRANSFER_METHODS
from upscale_cli.cli.batch import check_output_usage, load_model_for_cli, output_options, start_batch
from upscale_cli.cli.common import run_guarded
from upscale_cli.cli.pipeline import OrderedWrites
from upscale_cli.cli.progress import BatchProgress

DEFAULT_NAME = "{stem}_{style}.{ext}"
STYLE_INPUT = "style"  # the extra input a stylising model takes


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="CONTENT...")
@click.option("--style", "styles", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False),
              help="A style image (repeatable: every content image is made in every style).")
@click.option("--strength", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="How far to go: 0 keeps the content, 1 takes the style's statistics in full.")
@click.option("--method", type=click.Choice(TRANSFER_METHODS),
              help="The statistics moved: adain (channel means and stds) or wct (means and covariances, "
                   "whitening and colouring). Default: the model's own.")
@click.option("--size", type=click.IntRange(min=8), metavar="N",
              help="Resize each content image first so that its shorter side is N px (Lanczos). Default: "
                   "keep its size.")
@click.option("-m", "--model", default=DEFAULT_STYLIZER, show_default=True,
              help="A style-transfer model name or checkpoint.")
@output_options(DEFAULT_NAME)
def stylize(**opts: Any) -> None:
    """Restyle images: files, folders (-r) or globs, in the style of each --style image.

    Exit codes as for upscale: 0 all written, 1 some failed (the rest were written), 2 usage, 3 model.
    """
    run_guarded(lambda: _run(opts), opts["verbose"])


def _run(opts: dict[str, Any]) -> int:
    from upscale_cli.cli.upscale import _process

    check_output_usage(opts)
    if "-" in opts["inputs"]:
        raise click.UsageError("stylize reads files, not stdin: give CONTENT files or folders")
    jobs, report = start_batch(opts, opts["output"])
    if jobs:
        upscaler = load_model_for_cli(opts, report)
        if not any(extra.name == STYLE_INPUT for extra in (upscaler.descriptor.extra_inputs if upscaler.descriptor
                                                           else ())):
            raise click.UsageError(f"{upscaler.name} takes no style image: stylize needs a style-transfer model "
                                   f"such as {DEFAULT_STYLIZER}")
        settings = {**opts, "scale": None, "width": None, "height": None, "seed": None, "tau": None}
        report.note(f"{upscaler.name} on {upscaler.device}, {len(jobs)} image(s) x {len(opts['styles'])} style(s), "
                    f"strength {opts['strength']:g}, method {opts['method'] or 'its own'}")
        with BatchProgress(len(jobs) * len(opts["styles"]), enabled=report.show_progress) as progress, \
                report.running(), OrderedWrites(report, progress) as writes:
            report.printer = progress.print
            for job in jobs:
                for style in opts["styles"]:
                    job_opts = {**settings, "extras": {STYLE_INPUT: style}}
                    writes.add(_process(job, upscaler, job_opts, progress, report, writes,
                                        {"style": Path(style).stem}))
    return report.finish()
