"""`upscale convert IN [-o OUT]`: another project's model file as an upscale checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from upscale_cli.cli.common import echo_err, run_guarded


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Where to write (default: NAME_xSCALE.safetensors in the user models folder, where -m NAME finds it).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks.")
def convert(source: Path, output: Path | None, overwrite: bool, verbose: bool) -> None:
    """Convert a .pth / .pt / .ckpt (read weights-only: no code runs) or foreign .safetensors model file.

    The family and sizes are read from the tensors; the result carries full metadata and where it came
    from (file, sha256, family), with a licence field to fill in. Exit codes: 0 written, 3 not
    convertible (the message says which families were tried and what did not fit), 1 not written.
    """
    run_guarded(lambda: _convert(source, output, overwrite), verbose)


def _convert(source: Path, output: Path | None, overwrite: bool) -> int:
    from upscale_cli.convert import convert as read_and_map
    from upscale_cli.convert import write_converted
    from upscale_cli.errors import ExitCode
    from upscale_cli.models import user_models_dir

    info, tensors = read_and_map(source)
    out = output or user_models_dir() / f"{info.name}_x{info.scale}.safetensors"
    try:
        write_converted(out, info, tensors, overwrite=overwrite)
    except FileExistsError:
        echo_err(f"error: {out}: exists (use --overwrite)")
        return int(ExitCode.SOME_FAILED)
    except OSError as exc:
        echo_err(f"error: {out}: cannot write: {exc.strerror or exc}")
        return int(ExitCode.SOME_FAILED)
    echo_err(f"converted {source} ({info.source['family']}: {info.arch} x{info.scale}, "
             f"{info.params / 1e6:.2f} M parameters) to {out}")
    default_place = output is None or out.parent == user_models_dir()
    echo_err(f"run it with: upscale IMAGE -m {info.name if default_place else out}")
    return int(ExitCode.OK)
