"""What `upscale` and `upscale sample` share: inputs to jobs, outputs written safely, outcomes reported."""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import string
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Callable

import click

from upscale_cli.cli.common import echo_err, visible
from upscale_cli.cli.options import (DEVICE_HELP, FIXED_PRECISIONS, PRECISIONS, THREADS, device_item, one, shard_item,
                                     tile_item)
from upscale_cli.errors import ExitCode, ImageWriteError, StopBatch, Terminated, UpscaleError
from upscale_cli.openvino_backend import BACKENDS

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
NAME_FIELDS = {"stem": "x", "model": "m", "scale": "4", "ext": "png", "seed": "0", "tau": "0.8", "i": "0",
               "style": "s"}


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
    stops_batch: bool = False  # a failure every later write would repeat (`StopBatch`)

    def record(self) -> dict[str, Any]:
        data = {"input": self.input, "status": self.status, "output": self.output, **self.extra}
        if self.error:
            data["error"] = self.error
        return data


def output_options(default_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options of every command that writes images: where, how, on what device, how loudly."""
    options = [
        click.option("-o", "--output", help="Output file (one input), folder, or '-' for stdout."),
        click.option("--name", "name_template", default=default_name, show_default=True,
                     help="Output file name: {stem} {model} {scale} {ext} (and {seed} {tau} {i} when sampling)."),
        click.option("-r", "--recursive", is_flag=True,
                     help="Descend into subfolders of folder inputs (the output mirrors the tree)."),
        click.option("--format", "fmt", type=click.Choice(["same", "png", "jpg", "webp", "tiff"]), default="same",
                     show_default=True),
        click.option("--quality", type=click.IntRange(1, 100), help="Quality for jpg/webp (default 95 / 90)."),
        click.option("--strip-metadata", is_flag=True,
                     help="Leave out the source's EXIF (camera, dates, GPS); the colour profile and the Software tag stay."),
        click.option("--tile", default="auto", show_default=True, callback=one(tile_item),
                     help="auto, none, or a tile size in LR pixels."),
        click.option("--tile-overlap", type=click.IntRange(0, 1024),
                     help="Overlap between tiles in LR pixels, up to 1024 (default: the model's own, 16 for most)."),
        click.option("--device", default="auto", show_default=True, callback=one(device_item), help=DEVICE_HELP),
        click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True),
        click.option("--threads", type=THREADS, help="CPU threads for torch."),
        click.option("--overwrite", is_flag=True, help="Replace existing outputs."),
        click.option("--skip-existing", is_flag=True, help="Leave existing outputs alone and move on."),
        click.option("--shard", callback=one(shard_item), metavar="K/N",
                     help="Process only the K-th of N shares of the inputs (each file's share follows from its "
                          "path alone), e.g. --shard $SLURM_ARRAY_TASK_ID/8 across a job array."),
        click.option("--max-pixels", type=click.IntRange(min=1), default=100_000_000, show_default=True,
                     help="Refuse inputs larger than this many pixels (decompression-bomb guard)."),
        click.option("--json", "as_json", is_flag=True, help="One JSON object per file on stdout, then a summary."),
        click.option("--dry-run", is_flag=True, help="Say what would be written; write nothing."),
        click.option("-q", "--quiet", is_flag=True, help="No progress or per-file messages."),
        click.option("-v", "--verbose", is_flag=True, help="More detail, and tracebacks on errors."),
    ]

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def check_output_usage(opts: dict[str, Any]) -> None:
    """Usage errors shared by the image-writing commands (exit code 2)."""
    if opts["overwrite"] and opts["skip_existing"]:
        raise click.UsageError("--overwrite and --skip-existing exclude each other")
    try:
        check_name_template(opts["name_template"])
    except ValueError as exc:
        raise click.BadParameter(f"bad template ({exc}); fields: {', '.join(NAME_FIELDS)}", param_hint="--name")
    if "-" in opts["inputs"] and len(opts["inputs"]) > 1:
        raise click.UsageError("'-' (stdin) must be the only input")
    if opts["output"] == "-" and opts["inputs"] != ("-",) and not _single_file(opts["inputs"]):
        raise click.UsageError("-o - (stdout) takes exactly one input image")
    if opts["output"] == "-" and opts["as_json"]:
        raise click.UsageError("--json and -o - both write to stdout: give -o FILE or leave out --json")
    if opts["inputs"] == ("-",) and not opts["output"]:
        raise click.UsageError("reading from stdin needs -o FILE or -o - for stdout")
    if opts["shard"] and "-" in opts["inputs"]:
        raise click.UsageError("--shard splits files and folders; stdin is one input")


def check_name_template(template: str) -> None:
    """A ValueError unless `template` uses only the documented fields, plainly (no format spec, conversion,
    attribute or index access: those reach Python objects and pad names without bound), and makes a
    relative name inside the output folder."""
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if name not in NAME_FIELDS:
            raise ValueError(f"unknown field {{{name}}}")
        if spec or conversion:
            raise ValueError(f"{{{name}}} takes no format spec or conversion")
    inside_folder(template.format(**NAME_FIELDS))


def inside_folder(name: str) -> PurePath:
    """`name` as a relative path that cannot leave the folder it is joined to; a ValueError otherwise."""
    path = PurePath(name)
    if not name or path.is_absolute() or path.drive or ".." in path.parts:
        raise ValueError(f"{name!r} must be a relative name inside the output folder (no '..', not absolute)")
    return path


def load_model_for_cli(opts: dict[str, Any], report: Reporter, scale: float | None = None, tta: bool = False,
                       color_fix: bool = False) -> Any:
    """Load the model the options name; a device or precision this machine lacks, or `tta` on a stochastic
    model, is a usage error.

    A precision this machine only emulates (bf16 on a CPU without native bf16) is allowed, with a warning.
    With `--backend` auto or openvino and a cached conversion, the model loads without torch (torch comes
    in later only if an image needs the tiler).
    """
    from upscale_cli.openvino_backend import cached_upscaler

    backend = opts.get("backend", "torch")

    def full() -> Any:
        from upscale_cli.engine import load_upscaler

        return load_upscaler(opts["model"], scale, opts["device"], opts["precision"], opts["tile_overlap"],
                             opts["threads"], tta, color_fix, backend)

    try:
        upscaler = None
        if backend != "torch" and not (tta or color_fix):
            upscaler = cached_upscaler(opts["model"], scale, opts["device"], opts["precision"], opts["threads"],
                                       opts["tile_overlap"], full)
        if upscaler is None:
            upscaler = full()
            from upscale_cli.device import emulated_bf16_warning

            warning = emulated_bf16_warning(upscaler.device, upscaler.precision)
            if warning:
                report.warn(warning)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if opts["tile"].isdigit() and int(opts["tile"]) <= upscaler.overlap:
        raise click.BadParameter(f"the tile ({opts['tile']}) must be larger than the overlap ({upscaler.overlap})",
                                 param_hint="--tile")
    if upscaler.backend_note:
        report.warn(upscaler.backend_note)
    return upscaler


def _single_file(inputs: tuple[str, ...]) -> bool:
    return len(inputs) == 1 and Path(inputs[0]).is_file()


def expand_inputs(inputs: tuple[str, ...], output: str | None, recursive: bool) -> tuple[list[Job], list[Outcome]]:
    """Jobs for every image the inputs name, and failures for inputs that name nothing."""
    jobs: list[Job] = []
    missing: list[Outcome] = []
    names_folder = output not in (None, "-") and (Path(output).is_dir() or output.endswith(("/", "\\")))
    out_is_file = output not in (None, "-") and _single_file(inputs) and not names_folder \
        and Path(output).suffix != ""
    out_dir = Path(output) if output not in (None, "-") and not out_is_file else None
    for spec in inputs:
        if spec == "-":
            to_file = output not in (None, "-") and not names_folder
            jobs.append(Job(None, out_dir if names_folder else None, Path(output) if to_file else None,
                            output == "-"))
            continue
        path = Path(spec)
        if path.is_dir():
            outputs = out_dir.resolve() if out_dir is not None and recursive else None
            if outputs == path.resolve():
                outputs = None  # the results go beside their sources: nothing to leave out
            files = sorted(p for p in (path.rglob("*") if recursive else path.iterdir())
                           if _visible_image(p, path) and not (outputs and p.resolve().is_relative_to(outputs)))
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
        matches = glob_files(spec)
        if not matches:
            missing.append(Outcome(spec, "failed", error=f"{spec}: no such file, folder or matching pattern"))
        jobs.extend(Job(m, out_dir or m.parent) for m in matches)
    return _each_source_once(jobs), missing


def _visible_image(path: Path, root: Path) -> bool:
    """An image file (by suffix) with no hidden component below `root`."""
    return path.suffix.lower() in IMAGE_SUFFIXES and _visible_file(path, root)


def glob_files(pattern: str) -> list[Path]:
    """The files a glob pattern matches, `**` included, sorted. Unlike `glob.glob`, `**` never descends
    into symlinked folders, so a link loop or a link to `/` cannot make the walk endless; hidden files and
    folders are left out as `glob` does."""
    parts = Path(pattern).parts
    first_magic = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    if first_magic == len(parts):
        return [Path(pattern)] if Path(pattern).is_file() else []
    root = Path(*parts[:first_magic]) if first_magic else Path()
    return sorted(m for m in root.glob(str(Path(*parts[first_magic:]))) if _visible_file(m, root))


def _visible_file(path: Path, root: Path) -> bool:
    """A file with no hidden component below `root`."""
    return path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)


def _each_source_once(jobs: list[Job]) -> list[Job]:
    """The jobs without repeats of a source file (the same file reached twice, by links or overlapping
    inputs, is processed once, where it was first named)."""
    seen: set[Path] = set()
    unique = []
    for job in jobs:
        key = None if job.source is None else job.source.resolve()
        if key is None or key not in seen:
            unique.append(job)
            if key is not None:
                seen.add(key)
    return unique


def start_batch(opts: dict[str, Any], output: str | None) -> tuple[list[Job], Reporter]:
    """The jobs the inputs name, and a Reporter that already holds the inputs that name nothing. Temporary
    files that killed runs left in the output folders are removed first (and reported)."""
    jobs, outcomes = expand_inputs(opts["inputs"], output, opts["recursive"])
    if opts["shard"]:
        jobs = [job for job in jobs if in_shard(job, *opts["shard"])]
    report = Reporter(opts)
    if not opts["dry_run"]:
        remove_stale_temporaries(jobs, report)
    for outcome in outcomes:
        report.add(outcome)
    return jobs, report


def in_shard(job: Job, index: int, count: int) -> bool:
    """Whether `job` belongs to share `index` (1-based) of `count`: by a hash of its source path as listed,
    so every shard agrees without coordination, and outputs that appear beside the sources while shards
    run move no other file to another share (as a split by position in the listing would)."""
    key = hashlib.blake2b(job.label.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(key, "big") % count == index - 1


def remove_stale_temporaries(jobs: list[Job], report: Reporter) -> None:
    from upscale_cli.atomic import stale_temporaries

    folders = {job.out_dir or job.out_file.parent for job in jobs if job.out_dir or job.out_file}
    for folder in sorted(folders):
        for path in stale_temporaries(folder):
            with suppress(FileNotFoundError):
                path.unlink()
                report.note(f"removed {path}: a temporary file left by a killed run")


def format_scale(value: float) -> str:
    return f"{round(value, 3):g}"


def destination(job: Job, template: str, **fields: Any) -> Path | None:
    """Where a result goes: stdout (None), the explicit output file, or the folder + name template."""
    if job.to_stdout:
        return None
    if job.out_file is not None:
        return job.out_file
    stem = "stdin" if job.source is None else job.source.stem
    values = {"seed": "", "tau": "", "i": 0, "style": "", **fields}
    assert job.out_dir is not None
    name = template.format(stem=stem, **values)
    try:
        return job.out_dir / inside_folder(name)
    except ValueError as exc:
        raise ImageWriteError(job.out_dir / name, str(exc)) from None


BEING_WRITTEN = "being written by another process"
FINISHED_ELSEWHERE = "finished by another process"


def existing_output(path: Path | None, opts: dict[str, Any], made_by: str | None = None) -> str | None:
    """Why `path` is left alone (--skip-existing: "exists", or `BEING_WRITTEN` while another live process
    writes it), None to go on and write it; an error when an existing output blocks and no flag allows it.

    With `made_by` (the Software tag this run would write) --skip-existing leaves only outputs made with the
    same settings (`same_settings`): a resumed batch never keeps results of another model, seed or tau. An
    output made otherwise is an error naming what made it, and stays untouched.
    """
    if path is None:
        return None
    if not path.exists():
        from upscale_cli.atomic import being_written

        return BEING_WRITTEN if opts["skip_existing"] and being_written(path) else None
    if opts["skip_existing"]:
        if made_by is None or made_with(path, made_by):
            return "exists"
        from upscale_cli.image_io import software_tag

        found = software_tag(path)
        origin = f"made by {found!r}" if found else "not made by upscale"
        raise ImageWriteError(path, f"exists, {origin}: not these settings (use --overwrite to redo it)")
    if not opts["overwrite"]:
        raise ImageWriteError(path, "exists (use --overwrite or --skip-existing)")
    return None


def made_with(path: Path, made_by: str) -> bool:
    """Whether the image at `path` carries a Software tag of the same settings as `made_by`."""
    from upscale_cli.image_io import software_tag

    return same_settings(software_tag(path), made_by)


def skipped(label: str, output: str, why: str, extra: dict[str, Any]) -> Outcome:
    """The Outcome of an output left alone, and why (kept in the record unless it is a plain "exists")."""
    return Outcome(label, "skipped", output, extra={**extra, **({"skipped": why} if why != "exists" else {})})


def provenance(upscaler: Any, width: int, height: int, seed: int, tau: float | None,
               extras: dict[str, str] | None = None, strength: float = 1.0, method: str | None = None) -> str:
    """What made an output, for its Software tag: program, model (name, native scale, weights digest),
    output size, options (extra inputs as given) and precision and, for stochastic models, the seed and tau,
    so that the file itself says how to draw it again. ASCII only, as the tag demands (other characters are
    escaped)."""
    from upscale_cli import __version__

    model = f"model {upscaler.name} x{upscaler.scale}" + (f" #{upscaler.digest}" if upscaler.digest else "")
    parts = [f"upscale {__version__}", model, f"{width}x{height}"]
    parts += [name for name, chosen in (("tta", upscaler.tta), ("color-fix", upscaler.color_fix)) if chosen]
    parts += [f"input {name}={value}" for name, value in sorted((extras or {}).items())]
    parts += [f"strength {strength:g}"] if strength != 1.0 else []
    parts += [f"method {method}"] if method else []
    parts.append(upscaler.precision)
    parts += [upscaler.backend] if upscaler.backend != "torch" else []
    if upscaler.stochastic:
        parts += [f"seed {seed}", f"tau {tau:g}"]
    return "; ".join(parts).encode("ascii", "backslashreplace").decode("ascii")


def same_settings(found: str | None, expected: str) -> bool:
    """Whether two `provenance` tags name the same weights, output size, options, seed and tau. The program
    version, the precision and the backend may differ: they change the arithmetic, not the result a user asked for."""
    def settings(tag: str | None) -> list[str] | None:
        if tag is None or not tag.startswith("upscale "):
            return None
        return [p for p in tag.split("; ")[1:] if p not in FIXED_PRECISIONS and p not in BACKENDS]

    found_settings = settings(found)
    return found_settings is not None and found_settings == settings(expected)


def write_output(path: Path | None, rgb: Any, image: Any, fmt: str, opts: dict[str, Any], software: str) -> str | None:
    """Encode `rgb` (float RGB, or the colour planes `colour_planes` made) with the source's alpha (resized), bit depth, ICC and EXIF (unless --strip-metadata), and
    `software` as the Software tag; write atomically or to stdout. With --skip-existing, a file of the same
    settings that another process published meanwhile is no failure: `FINISHED_ELSEWHERE` is returned."""
    from upscale_cli.image_io import encode_image, lanczos_resize, write_image

    height, width = rgb.shape[:2]
    alpha = None if image.alpha is None else lanczos_resize(image.alpha, width, height).clip(0, 1)
    data = encode_image(rgb, alpha, fmt, grayscale=image.grayscale, bit_depth=image.bit_depth,
                        quality=opts["quality"], icc_profile=image.icc_profile,
                        exif=None if opts["strip_metadata"] else image.exif, software=software)
    if path is None:
        write_stdout(data)
        return None
    try:
        write_image(path, data, overwrite=opts["overwrite"])
    except ImageWriteError:
        if opts["skip_existing"] and path.exists() and made_with(path, software):
            return FINISHED_ELSEWHERE
        raise
    return None


def write_stdout(data: bytes) -> None:
    """Write all of `data` to standard output; a closed pipe or a full disk is a StopBatch. A buffered
    write may take only part of the data (it returned 64 KiB of 3 MB when the reader of a pipe had gone):
    the rest is written until it is all out or the stream fails."""
    stream, view = sys.stdout.buffer, memoryview(data)
    try:
        while view:
            written = stream.write(view)
            if not written:
                raise OSError(errno.EIO, "standard output took no more bytes")
            view = view[written:]
        stream.flush()
    except OSError as error:
        raise StopBatch("<stdout>", f"cannot write: {error.strerror or error}") from None


def failed_outcome(label: str, exc: Exception, verbose: bool) -> Outcome:
    """The Outcome of a job that failed with `exc`; a model that cannot run fails the whole command instead."""
    if isinstance(exc, UpscaleError):
        if exc.exit_code == ExitCode.MODEL:
            raise exc
        return Outcome(label, "failed", error=str(exc), stops_batch=isinstance(exc, StopBatch))
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    return Outcome(label, "failed", error=f"{label}: {type(exc).__name__}: {exc}".splitlines()[0])


JOB_ERRORS = (UpscaleError, MemoryError, RuntimeError, OSError, ValueError)  # what ends one job, not the batch


class Reporter:
    """Collects outcomes, prints them (text on stderr or JSON on stdout), and works out the exit code."""

    def __init__(self, opts: dict[str, Any]) -> None:
        self.as_json = opts["as_json"]
        self.quiet = opts["quiet"]
        self.verbose = opts["verbose"]
        self.outcomes: list[Outcome] = []
        self.show_progress = not self.quiet and sys.stderr.isatty()
        self.printer = echo_err  # replaced by the progress display's printer while bars are live
        self.stopped: str | None = None  # why the batch ended early

    def say(self, message: str) -> None:
        """Print one status line, control characters escaped: a file name cannot forge report lines."""
        self.printer(visible(message))

    def note(self, message: str, verbose_only: bool = False) -> None:
        if not self.quiet and (self.verbose or not verbose_only):
            self.say(message)

    def warn(self, message: str) -> None:
        """A warning shows even with --quiet, which silences progress and per-file messages only."""
        self.say(f"warning: {message}")

    @contextmanager
    def running(self) -> Iterator[None]:
        """Around a batch loop: a StopBatch failure ends the loop (the summary says why), and Ctrl-C or
        SIGTERM prints the summary of what was done before the command unwinds."""
        try:
            yield
        except StopBatch as exc:
            self.stopped = f"stopped early: {exc.problem}"
        except KeyboardInterrupt as exc:
            self.stopped = "stopped early: " + ("terminated" if isinstance(exc, Terminated) else "interrupted")
            self.finish()
            raise

    def add(self, outcome: Outcome) -> None:
        """Record and print one outcome; a StopBatch after one that stops the batch."""
        self.outcomes.append(outcome)
        if self.as_json:
            self._emit(outcome.record())
        elif outcome.status == "failed":
            self.say(f"error: {outcome.error}")
        elif not self.quiet:
            why = outcome.extra.get("skipped", "exists")
            verb = {"ok": "wrote", "skipped": f"skipped ({why})", "dry-run": "would write"}[outcome.status]
            size = f" ({outcome.extra['width']}x{outcome.extra['height']})" if "width" in outcome.extra else ""
            note = f" ({outcome.extra['note']})" if "note" in outcome.extra else ""
            self.say(f"{verb} {outcome.output}{size}{note}")
        if outcome.stops_batch:
            raise StopBatch(outcome.output or outcome.input, outcome.error or "")

    def _emit(self, record: dict[str, Any]) -> None:
        try:
            click.echo(json.dumps(record))
        except OSError as error:
            raise StopBatch("<stdout>", f"cannot write the JSON report: {error.strerror or error}") from None

    def finish(self) -> int:
        """Print the summary (and why the batch stopped early, if it did); the exit code."""
        counts = {s: sum(o.status == s for o in self.outcomes) for s in ("ok", "failed", "skipped", "dry-run")}
        failed = [o for o in self.outcomes if o.status == "failed"]
        if self.as_json:
            with suppress(StopBatch):  # standard output is gone: stderr still says so below
                self._emit({"summary": counts, "failures": [o.record() for o in failed],
                            **({"stopped": self.stopped} if self.stopped else {})})
        if self.stopped:
            echo_err(f"{self.stopped}; " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
        if failed and not self.as_json:
            echo_err(f"{len(failed)} of {len(self.outcomes)} input(s) failed:")
            for outcome in failed:
                echo_err(visible(f"  {outcome.error}"))
        elif not self.quiet and not self.as_json and not self.stopped and len(self.outcomes) > 1:
            echo_err(", ".join(f"{n} {s}" for s, n in counts.items() if n))
        return int(ExitCode.SOME_FAILED) if failed or self.stopped else int(ExitCode.OK)
