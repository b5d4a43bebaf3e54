"""`upscale sample LR... -n N --tau T[,T...]`: several plausible HR answers per input from a stochastic model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from upscale_cli.cli.batch import (JOB_ERRORS, Job, Outcome, Reporter, check_output_usage, destination,
                                   existing_output, failed_outcome, load_model_for_cli, output_options, provenance,
                                   skipped, start_batch, write_output)
from upscale_cli.archs.base import RunOptions
from upscale_cli.archs.catalog import DEFAULT_SAMPLER
from upscale_cli.cli.common import run_guarded
from upscale_cli.cli.options import comma_list, tau_item
from upscale_cli.cli.progress import BatchProgress
from upscale_cli.errors import ImageWriteError

DEFAULT_NAME = "{stem}_tau{tau}_seed{seed}.{ext}"


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="LR...")
@click.option("-n", "--samples", type=click.IntRange(min=1), default=4, show_default=True,
              help="Samples per temperature; sample i uses seed SEED + i.")
@click.option("--tau", "taus", callback=comma_list(tau_item), metavar="T[,T...]",
              help="Temperature(s) (default: the model's own); 0 gives the deterministic mean.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="First seed (0 is a seed).")
@click.option("-m", "--model", default=DEFAULT_SAMPLER, show_default=True,
              help="A stochastic model name or checkpoint.")
@click.option("--grid", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also write a labelled contact sheet: a row per temperature, a column per sample, "
                   "plus bicubic and the LR. With several inputs put {stem} in FILE.")
@click.option("--std-map", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also write a heat map of the per-pixel standard deviation across the samples of the "
                   "highest temperature: where the model is unsure. With several inputs put {stem} in FILE.")
@output_options(DEFAULT_NAME)
def sample(**opts: Any) -> None:
    """Draw N samples per temperature from a stochastic model for each LR image: many plausible HR answers.

    The same seed always gives the same image, on any tile size. Exit codes as for upscale.
    """
    run_guarded(lambda: _run(opts), opts["verbose"])


def _check_usage(opts: dict[str, Any]) -> None:
    check_output_usage(opts)
    if opts["output"] == "-":
        raise click.UsageError("sample writes several files: give -o DIR, not -o -")
    several = len(opts["inputs"]) > 1 or any(Path(i).is_dir() or not Path(i).exists() for i in opts["inputs"])
    for flag in ("grid", "std_map"):
        if opts[flag] and several and "{stem}" not in opts[flag]:
            raise click.BadParameter("with several inputs the file name needs {stem}", param_hint=f"--{flag}")


def _run(opts: dict[str, Any]) -> int:
    _check_usage(opts)
    output_dir = None if opts["output"] is None else opts["output"].rstrip("/") + "/"
    jobs, report = start_batch(opts, output_dir)
    if jobs:
        upscaler = load_model_for_cli(opts, report)
        if not upscaler.stochastic:
            raise click.UsageError(f"{upscaler.name} is deterministic: `upscale sample` needs a stochastic model "
                                   f"such as {DEFAULT_SAMPLER} (use `upscale` for one output)")
        taus = opts["taus"] or (upscaler.default_tau,)
        report.note(f"{upscaler.name} (x{upscaler.scale}) on {upscaler.device}, {upscaler.precision}, "
                    f"tau {', '.join(f'{t:g}' for t in taus)}, {opts['samples']} sample(s) each, seeds from {opts['seed']}")
        with BatchProgress(len(jobs) * len(taus) * opts["samples"], enabled=report.show_progress) as progress, \
                report.running():
            report.printer = progress.print
            for job in jobs:
                for outcome in _sample_one(job, upscaler, taus, opts, progress, report):
                    report.add(outcome)
    return report.finish()


def _sample_one(job: Job, upscaler: Any, taus: tuple[float, ...], opts: dict[str, Any],
                progress: BatchProgress, report: Reporter) -> list[Outcome]:
    """All samples of one input, then its grid and std-map; a failure ends this input only."""
    import numpy as np

    from upscale_cli.image_io import extension, output_format, read_image

    outcomes: list[Outcome] = []
    try:
        image = read_image(job.source, max_pixels=opts["max_pixels"], name=job.label)
        for note in image.notes:
            report.note(f"{job.label}: {note}")
        out_w, out_h = image.width * upscaler.scale, image.height * upscaler.scale
        fmt = output_format(opts["fmt"], image.format, image.alpha is not None)
        drawn: dict[float, list[np.ndarray]] = {}
        for tau in taus:
            for i in range(opts["samples"]):
                seed = opts["seed"] + i
                path = destination(job, opts["name_template"], model=upscaler.name, scale=upscaler.scale,
                                   ext=extension(fmt).lstrip("."), seed=seed, tau=f"{tau:g}", i=i)
                extra = {"model": upscaler.name, "tau": tau, "seed": seed, "width": out_w, "height": out_h}
                needs_pixels = bool(opts["grid"] or opts["std_map"])
                made_by = provenance(upscaler, out_w, out_h, seed, tau)
                why = existing_output(path, opts, made_by)
                if why is not None and not needs_pixels:
                    outcomes.append(skipped(job.label, str(path), why, extra))
                    progress.advance_file()
                    continue
                if opts["dry_run"]:
                    outcomes.append(Outcome(job.label, "dry-run", str(path), extra=extra))
                    progress.advance_file()
                    continue
                kept = sum(len(samples) for samples in drawn.values())
                problem = upscaler.memory_problem(image.width, image.height, out_w, out_h, kept)
                if problem:
                    hint = "; --grid and --std-map keep every sample in memory" if kept else ""
                    raise ImageWriteError(job.label, f"{problem}{hint}")
                progress.start_image(f"{job.label} tau {tau:g} seed {seed}", image.width * image.height)
                rgb = upscaler.upscale(image.rgb, out_w, out_h, opts["tile"], on_tile=progress.tile_done,
                                       warn=lambda m: report.note(f"{job.label}: {m}"),
                                       options=RunOptions(seed, tau))
                if needs_pixels:  # only the grid and the std-map need the samples after writing
                    drawn.setdefault(tau, []).append(rgb)
                if path is not None and path.exists() and not opts["overwrite"]:
                    outcomes.append(Outcome(job.label, "skipped", str(path), extra=extra))
                else:
                    raced = write_output(path, rgb, image, fmt, opts, made_by)
                    outcomes.append(skipped(job.label, str(path), raced, extra) if raced
                                    else Outcome(job.label, "ok", str(path), extra=extra))
                progress.image_done(out_w * out_h)
                progress.advance_file()
        if not opts["dry_run"]:
            outcomes += _extras(job, image, drawn, opts)
    except JOB_ERRORS as exc:
        outcomes.append(failed_outcome(job.label, exc, opts["verbose"]))
    return outcomes


def _extras(job: Job, image: Any, drawn: dict[float, list[Any]], opts: dict[str, Any]) -> list[Outcome]:
    """The contact sheet and the std-map of one input, written like any other output."""
    import numpy as np
    import torch

    from upscale_cli.resize import imresize
    from upscale_cli.sheets import contact_sheet, heat_map, nearest_resize

    if not drawn:  # no --grid or --std-map
        return []
    outcomes = []
    stem = job.source.stem if job.source is not None else "stdin"
    height, width = next(iter(drawn.values()))[0].shape[:2]
    if opts["grid"]:
        lr = image.rgb
        bicubic = imresize(torch.from_numpy(lr.transpose(2, 0, 1).copy()), size=(height, width))
        references = [bicubic.permute(1, 2, 0).numpy(), nearest_resize(lr, width, height)]
        rows = [samples + references for samples in drawn.values()]
        columns = [f"seed {opts['seed'] + i}" for i in range(opts["samples"])] + ["bicubic", "LR"]
        sheet = contact_sheet(rows, [f"tau {t:g}" for t in drawn], columns)
        outcomes.append(_write_extra(Path(opts["grid"].format(stem=stem)), sheet, opts, "grid"))
    if opts["std_map"]:
        samples = np.stack(drawn[max(drawn)]).clip(0, 1) * 255
        spread = samples.std(axis=0).mean(axis=-1)
        top = float(np.percentile(spread, 99)) or 1.0
        data = heat_map(spread, top)
        outcomes.append(_write_extra(Path(opts["std_map"].format(stem=stem)), (data * 255).round().astype(np.uint8),
                                     opts, "std-map", note=f"tau {max(drawn):g}; white = {top:.1f} levels of 255"))
    return outcomes


def _write_extra(path: Path, pixels: Any, opts: dict[str, Any], what: str, note: str = "") -> Outcome:
    """Write a uint8 RGB figure as PNG, with the same overwrite rules as the samples; `note` (e.g. the
    std-map's scale) is shown beside the path and kept in the JSON record."""
    from upscale_cli.image_io import encode_image, write_image

    extra = {"note": note} if note else {}
    why = existing_output(path, opts)
    if why is not None:
        return skipped(what, str(path), why, extra)
    write_image(path, encode_image(pixels.astype("float32") / 255, None, "png"), overwrite=opts["overwrite"])
    return Outcome(what, "ok", str(path), extra=extra)
