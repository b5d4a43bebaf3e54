"""`upscale [upscale] INPUT... [options]`: upscale files, folders, globs or stdin, safely."""

from __future__ import annotations

import glob
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from upscale_cli.cli.common import echo_err, run_guarded
from upscale_cli.cli.progress import BatchProgress
from upscale_cli.errors import ExitCode, ImageWriteError, UpscaleError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
NAME_FIELDS = {"stem": "x", "model": "m", "scale": "4", "ext": "png", "seed": "0", "tau": "0.8", "i": "0"}
DEFAULT_NAME = "{stem}_x{scale}.{ext}"


@dataclass
class Job:
    """One input and where its result goes (None = stdin / stdout)."""

    source: Path | None
    out_dir: Path | None  # folder for the output (None with an explicit output file or stdout)
    out_file: Path | None = None
    to_stdout: bool = False

    @property
    def label(self) -> str:
        return "<stdin>" if self.source is None else str(self.source)


@dataclass
class Outcome:
    input: str
    status: str  # ok | failed | skipped | dry-run
    output: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        data = {"input": self.input, "status": self.status, "output": self.output, **self.extra}
        if self.error:
            data["error"] = self.error
        return data


def tile_option(value: str) -> str:
    if value in ("auto", "none"):
        return value
    if value.isdigit() and int(value) >= 8:
        return value
    raise click.BadParameter("must be auto, none, or a tile size in pixels (>= 8)")


@click.command(name="upscale")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("-x", "--scale", type=click.FloatRange(min=1, min_open=False), help="Upscaling factor (default: the model's native scale).")
@click.option("--width", type=click.IntRange(min=1), help="Target width in pixels (height follows unless given).")
@click.option("--height", type=click.IntRange(min=1), help="Target height in pixels (width follows unless given).")
@click.option("-m", "--model", default="srgan", show_default=True, help="Model name, 'bicubic', or a .safetensors path.")
@click.option("-o", "--output", help="Output file (one input), folder, or '-' for stdout.")
@click.option("--name", "name_template", default=DEFAULT_NAME, show_default=True,
              help="Output file name: {stem} {model} {scale} {ext} (and {seed} {tau} {i} when sampling).")
@click.option("-r", "--recursive", is_flag=True, help="Descend into subfolders of folder inputs (the output mirrors the tree).")
@click.option("--format", "fmt", type=click.Choice(["same", "png", "jpg", "webp", "tiff"]), default="same", show_default=True)
@click.option("--quality", type=click.IntRange(1, 100), help="Quality for jpg/webp (default 95 / 90).")
@click.option("--tile", default="auto", show_default=True, callback=lambda c, p, v: tile_option(v),
              help="auto, none, or a tile size in LR pixels.")
@click.option("--tile-overlap", type=click.IntRange(min=0), help="Overlap between tiles in LR pixels (default 16).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for torch.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--skip-existing", is_flag=True, help="Leave existing outputs alone and move on.")
@click.option("--seed", type=click.IntRange(min=0), help="Seed for stochastic models (0 is a valid seed).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=100_000_000, show_default=True,
              help="Refuse inputs larger than this many pixels (decompression-bomb guard).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file on stdout, then a summary.")
@click.option("--dry-run", is_flag=True, help="Say what would be written; write nothing.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or per-file messages.")
@click.option("-v", "--verbose", is_flag=True, help="More detail, and tracebacks on errors.")
def upscale(**opts: Any) -> None:
    """Upscale images: files, folders (-r for subfolders), glob patterns, or '-' for stdin.

    Exit codes: 0 all written, 1 some inputs failed (the rest were written), 2 usage error,
    3 the model could not be loaded or run, 130 interrupted.
    """
    run_guarded(lambda: _run(opts), opts["verbose"])


def _check_usage(opts: dict[str, Any]) -> None:
    if opts["overwrite"] and opts["skip_existing"]:
        raise click.UsageError("--overwrite and --skip-existing exclude each other")
    if opts["scale"] is not None and (opts["width"] or opts["height"]):
        raise click.UsageError("give either --scale or --width/--height, not both")
    try:
        opts["name_template"].format(**NAME_FIELDS)
    except (KeyError, IndexError, ValueError) as exc:
        raise click.BadParameter(f"bad template ({exc}); fields: {', '.join(NAME_FIELDS)}", param_hint="--name")
    if "-" in opts["inputs"] and len(opts["inputs"]) > 1:
        raise click.UsageError("'-' (stdin) must be the only input")
    if opts["output"] == "-" and opts["inputs"] != ("-",) and not _single_file(opts["inputs"]):
        raise click.UsageError("-o - (stdout) takes exactly one input image")
    if opts["inputs"] == ("-",) and not opts["output"]:
        raise click.UsageError("reading from stdin needs -o FILE or -o - for stdout")


def _single_file(inputs: tuple[str, ...]) -> bool:
    return len(inputs) == 1 and Path(inputs[0]).is_file()


def expand_inputs(inputs: tuple[str, ...], output: str | None, recursive: bool) -> tuple[list[Job], list[Outcome]]:
    """Jobs for every image the inputs name, and failures for inputs that name nothing."""
    jobs: list[Job] = []
    missing: list[Outcome] = []
    out_is_file = output not in (None, "-") and _single_file(inputs) and not Path(output).is_dir() \
        and not output.endswith(("/", "\\")) and Path(output).suffix != ""
    out_dir = Path(output) if output not in (None, "-") and not out_is_file else None
    for spec in inputs:
        if spec == "-":
            jobs.append(Job(None, None, Path(output) if output != "-" else None, output == "-"))
            continue
        path = Path(spec)
        if path.is_dir():
            files = sorted(p for p in (path.rglob("*") if recursive else path.iterdir())
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                missing.append(Outcome(spec, "failed", error=f"{spec}: no images in this folder"
                                       + ("" if recursive else " (use --recursive for subfolders)")))
            for file in files:
                target = (out_dir / file.parent.relative_to(path)) if out_dir else file.parent
                jobs.append(Job(file, target))
            continue
        if path.is_file():
            jobs.append(Job(path, None if out_is_file or output == "-" else (out_dir or path.parent),
                            Path(output) if out_is_file else None, output == "-"))
            continue
        matches = sorted(Path(m) for m in glob.glob(spec, recursive=True) if Path(m).is_file())
        if not matches:
            missing.append(Outcome(spec, "failed", error=f"{spec}: no such file, folder or matching pattern"))
        jobs.extend(Job(m, out_dir or m.parent) for m in matches)
    return jobs, missing


def _format_scale(value: float) -> str:
    return f"{round(value, 3):g}"


def target_size(width: int, height: int, opts: dict[str, Any], native: int) -> tuple[int, int]:
    """Output (width, height) from --scale, or --width/--height (aspect kept when only one is given)."""
    if opts["width"] and opts["height"]:
        return opts["width"], opts["height"]
    if opts["width"]:
        return opts["width"], max(1, round(height * opts["width"] / width))
    if opts["height"]:
        return max(1, round(width * opts["height"] / height)), opts["height"]
    factor = opts["scale"] or native
    return max(1, round(width * factor)), max(1, round(height * factor))


def _run(opts: dict[str, Any]) -> int:
    _check_usage(opts)
    from upscale_cli.engine import DEFAULT_OVERLAP, load_upscaler

    overlap = DEFAULT_OVERLAP if opts["tile_overlap"] is None else opts["tile_overlap"]
    if opts["tile"].isdigit() and int(opts["tile"]) <= overlap:
        raise click.BadParameter(f"the tile ({opts['tile']}) must be larger than the overlap ({overlap})",
                                 param_hint="--tile")
    jobs, outcomes = expand_inputs(opts["inputs"], opts["output"], opts["recursive"])
    report = Reporter(opts)
    for outcome in outcomes:
        report.add(outcome)
    if jobs:
        try:
            upscaler = load_upscaler(opts["model"], opts["scale"], opts["device"], opts["precision"],
                                     opts["tile_overlap"], opts["threads"])
        except ValueError as exc:  # device or precision this machine cannot provide
            raise click.UsageError(str(exc)) from None
        if opts["seed"] is not None and not upscaler.stochastic:
            report.note(f"--seed has no effect on {upscaler.name}: the model is deterministic")
        report.note(f"{upscaler.name} (x{upscaler.scale}) on {upscaler.device}, {upscaler.precision}, "
                    f"tile {opts['tile']}, overlap {upscaler.overlap}; {len(jobs)} image(s)")
        with BatchProgress(len(jobs), enabled=report.show_progress) as progress:
            report.say = progress.print
            for job in jobs:
                report.add(_process(job, upscaler, opts, progress, report))
                progress.advance_file()
    return report.finish()


def _process(job: Job, upscaler: Any, opts: dict[str, Any], progress: BatchProgress, report: "Reporter") -> Outcome:
    """Read, upscale, encode and write one image; every failure becomes an Outcome, never an exception."""
    from upscale_cli.image_io import encode_image, extension, output_format, read_image, write_image

    started = time.perf_counter()
    try:
        source = sys.stdin.buffer.read() if job.source is None else job.source
        image = read_image(source, max_pixels=opts["max_pixels"], name=job.label)
        out_w, out_h = target_size(image.width, image.height, opts, upscaler.scale)
        fmt = output_format(opts["fmt"], image.format, image.alpha is not None)
        if opts["fmt"] not in ("same", fmt):
            report.note(f"{job.label}: {opts['fmt']} cannot hold the alpha channel; writing {fmt}")
        destination = _destination(job, opts, upscaler, out_w / image.width, extension(fmt))
        shown = "<stdout>" if destination is None else str(destination)
        extra = {"model": upscaler.name, "width": out_w, "height": out_h, "format": fmt,
                 "scale": round(out_w / image.width, 4)}
        if destination is not None and destination.exists():
            if opts["skip_existing"]:
                return Outcome(job.label, "skipped", shown, extra=extra)
            if not opts["overwrite"]:
                raise ImageWriteError(destination, "exists (use --overwrite or --skip-existing)")
        if opts["dry_run"]:
            return Outcome(job.label, "dry-run", shown, extra=extra)
        progress.start_image(job.label, image.width * image.height)
        rgb = upscaler.upscale(image.rgb, out_w, out_h, opts["tile"], on_tile=progress.tile_done,
                               warn=lambda m: report.note(f"{job.label}: {m}"))
        alpha = None if image.alpha is None else _resize_alpha(image.alpha, out_w, out_h)
        data = encode_image(rgb, alpha, fmt, grayscale=image.grayscale, bit_depth=image.bit_depth,
                            quality=opts["quality"], icc_profile=image.icc_profile, exif=image.exif)
        if destination is None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            write_image(destination, data, overwrite=opts["overwrite"])
        progress.image_done(out_w * out_h)
        extra["seconds"] = round(time.perf_counter() - started, 3)
        return Outcome(job.label, "ok", shown, extra=extra)
    except UpscaleError as exc:
        if exc.exit_code == ExitCode.MODEL:
            raise
        return Outcome(job.label, "failed", error=str(exc))
    except (MemoryError, RuntimeError, OSError, ValueError) as exc:
        if opts["verbose"]:
            traceback.print_exc(file=sys.stderr)
        return Outcome(job.label, "failed", error=f"{job.label}: {type(exc).__name__}: {exc}".splitlines()[0])


def _resize_alpha(alpha: Any, width: int, height: int) -> Any:
    from upscale_cli.image_io import lanczos_resize

    return lanczos_resize(alpha, width, height).clip(0, 1)


def _destination(job: Job, opts: dict[str, Any], upscaler: Any, scale: float, ext: str) -> Path | None:
    """Where the result goes: stdout (None), the explicit file, or the folder + name template."""
    if job.to_stdout:
        return None
    if job.out_file is not None:
        return job.out_file
    stem = "stdin" if job.source is None else job.source.stem
    name = opts["name_template"].format(stem=stem, model=upscaler.name, scale=_format_scale(scale),
                                        ext=ext.lstrip("."), seed=opts["seed"] if opts["seed"] is not None else "",
                                        tau="", i=0)
    assert job.out_dir is not None
    return job.out_dir / name


class Reporter:
    """Collects outcomes, prints them (text on stderr or JSON on stdout), and works out the exit code."""

    def __init__(self, opts: dict[str, Any]) -> None:
        self.as_json = opts["as_json"]
        self.quiet = opts["quiet"]
        self.verbose = opts["verbose"]
        self.outcomes: list[Outcome] = []
        self.show_progress = not self.quiet and sys.stderr.isatty()
        self.say = echo_err  # replaced by the progress display's printer while bars are live

    def note(self, message: str, verbose_only: bool = False) -> None:
        if not self.quiet and (self.verbose or not verbose_only):
            self.say(message)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        if self.as_json:
            click.echo(json.dumps(outcome.record()))
        elif outcome.status == "failed":
            self.say(f"error: {outcome.error}")
        elif not self.quiet:
            verb = {"ok": "wrote", "skipped": "skipped (exists)", "dry-run": "would write"}[outcome.status]
            size = f" ({outcome.extra['width']}x{outcome.extra['height']})" if "width" in outcome.extra else ""
            self.say(f"{verb} {outcome.output}{size}")

    def finish(self) -> int:
        counts = {s: sum(o.status == s for o in self.outcomes) for s in ("ok", "failed", "skipped", "dry-run")}
        failed = [o for o in self.outcomes if o.status == "failed"]
        if self.as_json:
            click.echo(json.dumps({"summary": counts, "failures": [o.record() for o in failed]}))
        elif failed:
            echo_err(f"{len(failed)} of {len(self.outcomes)} input(s) failed:")
            for outcome in failed:
                echo_err(f"  {outcome.error}")
        elif not self.quiet and len(self.outcomes) > 1:
            echo_err(", ".join(f"{n} {s}" for s, n in counts.items() if n))
        return int(ExitCode.SOME_FAILED) if failed else int(ExitCode.OK)
