"""The `upscale` command group. `upscale IMAGE ...` means `upscale upscale IMAGE ...`.

Subcommand modules import torch only inside their functions, so `--help` and `--version` stay instant.
"""

from __future__ import annotations

import click

from upscale_cli import __version__
from upscale_cli.cli.bench import bench
from upscale_cli.cli.compare import compare
from upscale_cli.cli.convert import convert
from upscale_cli.cli.models import models
from upscale_cli.cli.sample import sample
from upscale_cli.cli.stylize import stylize
from upscale_cli.cli.train import train
from upscale_cli.cli.upscale import upscale

DEFAULT_COMMAND = "upscale"


class DefaultCommandGroup(click.Group):
    """A group that runs DEFAULT_COMMAND when the first argument is not a subcommand or group option.

    A file named like a subcommand is reached as `./sample`.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [DEFAULT_COMMAND, *args]
        ctx.meta["argv"] = list(args)  # the command line as given, for provenance records
        return super().parse_args(ctx, args)


@click.group(cls=DefaultCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="upscale")
def cli() -> None:
    """Super-resolution at the shell: upscale photos and folders, draw many plausible answers, train, benchmark.

    \b
    upscale photo.png -x4                    (same as: upscale upscale photo.png ...)
    upscale sample lr.png -n 8 --tau 0.8
    upscale stylize photo.png --style painting.jpg
    upscale compare photo.png --crop 64,0,48,40
    upscale models
    upscale convert model.pth                (another project's model file)
    """


for command in (upscale, sample, stylize, compare, convert, train, bench, models):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="upscale")
