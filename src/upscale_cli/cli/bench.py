"""`upscale bench quality|speed`: paper-style quality figures and speed/memory, side by side for every model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from upscale_cli.cli.common import echo_err, run_guarded
from upscale_cli.cli.options import (DEVICE_HELP, THREADS, comma_list, device_item, one, precision_item, size_item,
                                     tau_item, tile_item)

def degrade_item(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[Any, ...]:
    """Parse every --degrade into a Degradation (the import stays inside: it pulls in torch)."""
    from upscale_cli.degrade import Degradation

    try:
        return tuple(Degradation.parse(v) for v in values)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group()
def bench() -> None:
    """Benchmark models the way SR papers do: quality (PSNR/SSIM) and speed/memory, bicubic alongside.

    \b
    upscale bench quality --data ../shared/data/val/Set5 --data ../shared/data/val/Set14
    upscale bench speed --size 128,256 --precision fp32,bf16 --tile none,128
    """


def common_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Options both benchmarks take: models, scale, device, threads, JSON output, verbosity."""
    for option in reversed([
        click.option("-m", "--model", "models", multiple=True, metavar="NAME|PATH",
                     help="Model to measure (repeatable). Default: every shipped model. bicubic is always included."),
        click.option("-x", "--scale", type=click.IntRange(2, 8), default=4, show_default=True,
                     help="Upscaling factor."),
        click.option("--device", default="auto", show_default=True, callback=one(device_item), help=DEVICE_HELP),
        click.option("--threads", type=THREADS, help="CPU threads for torch (default: torch's choice)."),
        click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
                     help="Also write every figure and its settings to this JSON file."),
        click.option("-v", "--verbose", is_flag=True, help="Tracebacks on errors."),
    ]):
        function = option(function)
    return function


@bench.command()
@click.option("--data", "data", multiple=True, required=True, metavar="DIR",
              help="Benchmark folder (repeatable): HR images, or HR/ + LR_x{scale}/ as in ../shared/data/val/Set5.")
@common_options
@click.option("--precision", "precisions", default="fp32", show_default=True,
              callback=comma_list(precision_item),
              help="Comma list of fp32, bf16, fp16. fp32 by default so that figures compare with papers.")
@click.option("--tile", default="auto", show_default=True, callback=one(tile_item),
              help="none, auto or a tile size in LR pixels.")
@click.option("--degrade", "degradations", multiple=True, metavar="SPEC", callback=degrade_item,
              help="Make LR from HR with blur:SIGMA or aniso:L1,L2,THETA (21x21 Gaussian, isotropic, or with "
                   "widths L1 and L2 and the first axis at THETA degrees, before the bicubic downscale) and/or "
                   "noise:LEVEL (Gaussian std on 0..255, seeded), e.g. blur:1.2,noise:10. Repeatable: one "
                   "evaluation per spec. Given LR files are then NOT used.")
@click.option("--tau", "taus", callback=comma_list(tau_item), metavar="T[,T...]",
              help="Sampling temperatures for stochastic models (default: the model's own).")
@click.option("--samples", type=click.IntRange(min=1), help="Samples per image for stochastic models (default 4).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of --degrade noise and of stochastic samples.")
@click.option("--tta", is_flag=True,
              help="Also measure each deterministic model with the 8-view self-ensemble (`upscale --tta`), "
                   "as MODEL+tta rows.")
@click.option("--color-fix", is_flag=True,
              help="Also measure each model with `upscale --color-fix`, as MODEL+color-fix rows.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw PSNR-Y against output MP/s to this PNG (needs matplotlib: pip install 'upscale-cli[plot]').")
@click.option("--input", "extra_inputs", multiple=True, metavar="NAME=VALUE",
              help="Also measure each model that takes this extra input with it given, as a 'MODEL NAME=VALUE' "
                   "row beside the model's own (e.g. --input prior=class:background: a uniform prior instead "
                   "of the one the model computes). Repeatable; all are given together.")
@click.option("--record", is_flag=True,
              help="Store the fp32 figures (undegraded data) in each measured checkpoint's metadata, "
                   "where `upscale models` shows them.")
def quality(**opts: Any) -> None:
    """PSNR-Y, SSIM-Y, RGB PSNR, sharpness and LR-consistency of each model on each --data folder.

    Y channel of BT.601 YCbCr, `scale` pixels shaved from each border, SSIM with an 11x11 Gaussian
    window (sigma 1.5): the convention of SR papers. LR files in LR_x{scale}/ are used as given;
    without them LR is made with MATLAB-compatible bicubic. Stochastic models also get diversity,
    and density models the NLL of the true HR given the LR in bits/dim. Only super-resolution models
    are measured.
    """
    run_guarded(lambda: _quality(opts), opts["verbose"])


@bench.command()
@common_options
@click.option("--size", "sizes", default="128,256", show_default=True, callback=comma_list(size_item),
              help="Comma list of input (LR) sizes in pixels; the input is a square crop of that side.")
@click.option("--precision", "precisions", default="fp32,bf16", show_default=True,
              callback=comma_list(precision_item), help="Comma list of fp32, bf16, fp16.")
@click.option("--tile", "tiles", default="none", show_default=True, callback=comma_list(tile_item),
              help="Comma list of none, auto or tile sizes in LR pixels, e.g. none,128.")
@click.option("--repeat", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed runs per configuration (the median is reported, with min-max).")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
              help="Untimed runs first.")
@click.option("--image", "image_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Input image (default: examples/ or the first Set5/Set14 LR image, else synthetic).")
@click.option("--isolate/--in-process", default=True, show_default=True,
              help="Run each configuration in a fresh process, so that its peak memory is its own.")
@click.option("--input", "extra_inputs", multiple=True, metavar="NAME=VALUE",
              help="An extra input for the models that take it, e.g. --input style=painting.jpg for a "
                   "style-transfer model (repeatable). Models that compute an input themselves (a semantic "
                   "prior) are timed with that computation unless it is given here.")
def speed(**opts: Any) -> None:
    """Latency, output megapixels/s and peak memory per model, size, precision and tiling.

    Speed-ups against fp32 and the agreement (PSNR, dB) of each faster precision with fp32 and of
    tiled with untiled output are measured in the same run, on the same input.
    """
    run_guarded(lambda: _speed(opts), opts["verbose"])


def model_list(requested: tuple[str, ...]) -> list[str]:
    """bicubic first, then the requested models, or every shipped super-resolution model when none was
    requested (models of other tasks have no HR to be measured against)."""
    from upscale_cli.archs.base import SUPER_RESOLUTION
    from upscale_cli.models import BICUBIC, shipped_weights, weights_task

    models = list(requested) or list(dict.fromkeys(w.name for w in shipped_weights()
                                                   if weights_task(w.path) == SUPER_RESOLUTION))
    if not requested and not models:
        echo_err("note: no shipped weights found; measuring bicubic only (use --model NAME|PATH)")
    return [BICUBIC, *(m for m in dict.fromkeys(models) if m != BICUBIC)]


def super_resolution_only(upscalers: list[Any], error: Callable[[str], Exception]) -> None:
    """Refuse a requested model of another task: these figures compare an output with a true HR image."""
    from upscale_cli.archs.base import SUPER_RESOLUTION

    for upscaler in upscalers:
        if upscaler.task != SUPER_RESOLUTION:
            raise error(f"{upscaler.name} is an {upscaler.task} model; this command measures super-resolution")


def takes(upscaler: Any, inputs: dict[str, str]) -> bool:
    """Whether the upscaler takes every one of these extra inputs from the command line."""
    try:
        upscaler.check_extra_names(inputs)
    except ValueError:
        return False
    return True


def _quality(opts: dict[str, Any]) -> int:
    from upscale_cli.bench.report import BenchError
    from upscale_cli.cli.upscale import parse_inputs
    from upscale_cli.errors import ExitCode
    from upscale_cli.bench.quality import (DEFAULT_SAMPLES, check_tile, evaluate_upscaler,
                                           load_dataset, open_upscaler, precisions_for)
    from upscale_cli.engine import variants
    from upscale_cli.bench.report import (describe_environment, environment, plot_quality_speed, print_table,
                                          quality_table, require_matplotlib, write_json)

    if opts["plot_path"]:
        require_matplotlib()
    scale = opts["scale"]
    conditions = opts["degradations"] or (None,)
    datasets = [load_dataset(Path(folder), scale, condition, opts["seed"])
                for folder in opts["data"] for condition in conditions]
    for dataset in datasets:
        echo_err(f"{dataset.name}: {len(dataset.pairs)} images; {dataset.lr_note}")
    models = model_list(opts["models"])
    upscalers = [open_upscaler(model, scale, opts["device"], precision, opts["threads"])
                 for model in models for precision in precisions_for(model, opts["precisions"])]
    super_resolution_only(upscalers, BenchError)
    for upscaler in upscalers:
        check_tile(upscaler, opts["tile"])
    upscalers += variants(upscalers, tta=opts["tta"], color_fix=opts["color_fix"])
    deterministic = [u.name for u in upscalers if not u.stochastic]
    if (opts["taus"] or opts["samples"]) and deterministic:
        echo_err(f"note: --tau/--samples apply only to stochastic models; {', '.join(dict.fromkeys(deterministic))} "
                 "are deterministic and are measured once per image")
    env = environment(upscalers[0].device)
    echo_err(f"measuring on {describe_environment(env)}")
    inputs = parse_inputs(opts["extra_inputs"])
    runs = [(upscaler, {}) for upscaler in upscalers] + [(u, inputs) for u in upscalers if inputs and takes(u, inputs)]
    if inputs and len(runs) == len(upscalers):
        raise BenchError(f"no measured model takes --input {', '.join(inputs)}", ExitCode.USAGE)
    rows = []
    for dataset in datasets:
        for upscaler, given in runs:
            label = " ".join([upscaler.name, *(f"{name}={value}" for name, value in given.items())])
            for result in evaluate_upscaler(upscaler, dataset.pairs, scale, opts["tile"],
                                            opts["taus"] or (), opts["samples"] or DEFAULT_SAMPLES,
                                            opts["seed"], given):
                rows.append({"dataset": dataset.name, "folder": str(dataset.folder), "lr": dataset.lr_source,
                             "lr_note": dataset.lr_note, "hr_lr_psnr": dataset.hr_lr_psnr, "model": label,
                             "model_path": str(upscaler.path) if upscaler.path else None,
                             "precision": upscaler.precision, "tta": upscaler.tta,
                             "color_fix": upscaler.color_fix, "inputs": given,
                             "images_count": len(dataset.pairs), **result})
    print_table(quality_table(rows, scale))
    settings = {"data": list(opts["data"]), "models": models, "scale": scale,
                "device": str(upscalers[0].device), "precisions": list(opts["precisions"]), "tile": opts["tile"],
                "degrade": [d.label for d in opts["degradations"]], "seed": opts["seed"],
                "tau": list(opts["taus"]) if opts["taus"] else None, "samples": opts["samples"], "tta": opts["tta"],
                "color_fix": opts["color_fix"],
                "threads": opts["threads"], "border": scale, "y_channel": "BT.601 (MATLAB rgb2ycbcr)",
                "ssim_window": "11x11 Gaussian, sigma 1.5", "lr_psnr": "RGB, whole image, MATLAB bicubic of 8-bit SR",
                "nll_bpd": "density models: -log2 p(HR | LR) / (3 H W), continuous density of [0, 1] RGB with the "
                           "training's dequantisation noise (from --seed), HR cropped to a multiple of 2^levels"}
    if opts["json_path"]:
        write_json(opts["json_path"], {"benchmark": "quality", "settings": settings, "environment": env,
                                       "results": rows})
        echo_err(f"wrote {opts['json_path']}")
    if opts["plot_path"]:
        plot_quality_speed(rows, opts["plot_path"], f"x{scale} quality against speed on {describe_environment(env)}")
        echo_err(f"wrote {opts['plot_path']}")
    if opts["record"]:
        record_rows(rows)
    return 0


def record_rows(rows: list[dict[str, Any]]) -> None:
    """Write each checkpoint's fp32 figures on undegraded data (plain: no tta or color-fix) into its metadata,
    keyed by dataset name."""
    import shlex

    from upscale_cli.bench.quality import figures_key
    from upscale_cli.checkpoint import record_metrics

    command = "upscale " + shlex.join(click.get_current_context().meta.get("argv", ["bench", "quality"]))
    for row in rows:
        undegraded = row["lr"].startswith("LR_x") or row["lr"] == "bicubic"
        plain = not (row["tta"] or row["color_fix"] or row["inputs"])
        if row["model_path"] is None or row["precision"] != "fp32" or not undegraded or not plain:
            continue
        figures = {**row["mean"], "images": row["images_count"], "lr_files": row["lr_note"], "command": command}
        if row.get("tau") is not None:
            figures["tau"] = row["tau"]
        key = figures_key(row["dataset"], row.get("tau"))
        record_metrics(Path(row["model_path"]), key, figures)
        echo_err(f"recorded {key} figures in {row['model_path']}")


def _speed(opts: dict[str, Any]) -> int:
    import torch

    from upscale_cli.bench.quality import check_tile, open_upscaler, precisions_for
    from upscale_cli.bench.report import describe_environment, environment, print_table, speed_table, write_json
    from upscale_cli.bench.speed import choose_input, configurations, run_speed
    from upscale_cli.cli.upscale import parse_inputs

    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    models = model_list(opts["models"])
    common = {"scale": opts["scale"], "device": opts["device"], "threads": opts["threads"],
              "repeat": opts["repeat"], "warmup": opts["warmup"]}
    # Load every model once here, so that unknown models and impossible settings fail before any measuring.
    loaded = {(model, precision): open_upscaler(model, opts["scale"], opts["device"], precision, opts["threads"])
              for model in models for precision in precisions_for(model, opts["precisions"])}
    for upscaler in loaded.values():
        for tile in opts["tiles"]:
            check_tile(upscaler, tile)
    image, source, real = choose_input(opts["image_path"])
    env = environment(next(iter(loaded.values())).device)
    echo_err(f"measuring on {describe_environment(env)}; input {source}"
             + ("" if real else " (agreement figures are on a synthetic image)"))
    given = parse_inputs(opts["extra_inputs"])
    inputs = {model: given for (model, _), upscaler in loaded.items() if given and takes(upscaler, given)}
    configs = configurations(models, list(opts["sizes"]), opts["precisions"], opts["tiles"], inputs, **common)
    rows = run_speed(configs, image, opts["isolate"], lambda r: echo_err(
        f"  {r['model']} {r['size']}px {r['precision']} tile={r['tile']}: {r['latency_ms']['median']:.1f} ms, "
        f"{r['megapixels_per_second']:.3f} MP/s"), loaded)
    memory_note = ("each configuration in a fresh process" if opts["isolate"] else
                   "all in one process: a configuration shows only growth beyond earlier peaks; see --isolate")
    print_table(speed_table(rows, memory_note))
    if opts["json_path"]:
        settings = {"models": models, "sizes": list(opts["sizes"]), "precisions": list(opts["precisions"]),
                    "tiles": list(opts["tiles"]), "repeat": opts["repeat"], "warmup": opts["warmup"],
                    "scale": opts["scale"], "device": env["device"], "threads": opts["threads"],
                    "isolate": opts["isolate"], "inputs": given, "input": source, "input_is_real": real,
                    "agreement": "PSNR (dB, RGB, 8-bit outputs) against fp32 with the same tile / untiled "
                                 "with the same precision", "memory": memory_note}
        write_json(opts["json_path"], {"benchmark": "speed", "settings": settings, "environment": env,
                                       "results": rows})
        echo_err(f"wrote {opts['json_path']}")
    return 0
