"""`upscale train`: train a model on a folder of HR photos, resumable, and export safetensors weights."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click

from upscale_cli.cli.common import echo_err, run_guarded
from upscale_cli.cli.options import device_item, one
from upscale_cli.errors import ExitCode
from upscale_cli.archs.catalog import DEFAULT_RECIPE, recipes

DEFAULT_VAL = Path("../shared/data/val/Set5")
_OPTION_FIELDS = ("data", "val", "scale", "iters", "batch", "patch", "lr", "init", "seed", "precision",
                  "device", "loss", "vgg_weights", "out")


@click.command()
@click.option("-m", "--model", "model", type=click.Choice(recipes()), default=None,
              help=f"Recipe (default {DEFAULT_RECIPE}).")
@click.option("--data", type=click.Path(exists=True, file_okay=False), multiple=True,
              help="Folder of HR training images (repeatable: the images of every folder are used).")
@click.option("--val", type=click.Path(exists=True, file_okay=False),
              help=f"HR/ + LR_x4/ validation folder (default {DEFAULT_VAL} when present).")
@click.option("--scale", type=int, help="Upscaling factor (default 4).")
@click.option("--iters", type=int, help="Total optimiser steps.")
@click.option("--batch", type=int, help="Patches per step (per process).")
@click.option("--patch", type=int, help="HR patch size in pixels.")
@click.option("--lr", type=float, help="Peak learning rate (default: the recipe's, 2e-4 for most).")
@click.option("--loss", type=click.Choice(["l1", "mse"]), help="Pixel loss.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Where to write the final weights (remembered by --resume).")
@click.option("--run-dir", type=click.Path(file_okay=False), help="Run directory (default runs/MODEL_xSCALE).")
@click.option("--resume", is_flag=False, flag_value="", default=None, metavar="[DIR]",
              help="Continue the run in DIR (or --run-dir) from its saved state.")
@click.option("--init", type=click.Path(exists=True, dir_okay=False), help="Generator weights to start from.")
@click.option("--vgg-weights", type=click.Path(exists=True, dir_okay=False),
              help="VGG19 weights (torchvision layout, safetensors or .pth) for the VGG content loss.")
@click.option("--seed", type=int, help="Seed for initialisation and patch sampling.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), help="Training precision.")
@click.option("--device", callback=one(device_item), help="auto (CUDA when present, the default), cpu, cuda or cuda:N.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="TOML settings file.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override any setting (repeatable).")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks.")
def train(model: str | None, run_dir: str | None, resume: str | None,
          config_file: str | None, settings: tuple[str, ...], verbose: bool, **options: object) -> None:
    """Train MODEL on a folder of photos; Ctrl-C saves the state, --resume continues bit for bit.

    Run on several processes with: torchrun --nproc_per_node N -m upscale_cli train ...
    """
    command = "upscale " + shlex.join(click.get_current_context().meta.get("argv", ["train"]))
    run_guarded(lambda: _train(model, run_dir, resume, config_file, settings, options, command), verbose)


def _train(model: str | None, run_dir: str | None, resume: str | None,
           config_file: str | None, settings: tuple[str, ...], options: dict[str, object],
           command: str) -> int:
    import json

    from upscale_cli.train.config import TrainConfig, apply_settings, parse_set_options, read_toml, recipe_defaults
    from upscale_cli.train.loop import Trainer, TrainingInterrupted

    options = {**options, "data": os.pathsep.join(options["data"]) if options["data"] else None}
    given = {k: v for k, v in options.items() if v is not None and k in _OPTION_FIELDS}
    if model:
        given["model"] = model
    try:
        overrides = parse_set_options(settings)
        if resume is not None:
            run_path = Path(resume or run_dir or "")
            if not (run_path / "state.pt").is_file():
                raise click.BadParameter(f"{run_path}: no state.pt to resume from", param_hint="--resume")
            config = TrainConfig.from_settings(json.loads((run_path / "config.json").read_text()))
        else:
            toml = read_toml(Path(config_file)) if config_file else {}
            name = overrides.get("model") or given.get("model") or toml.get("model") or TrainConfig.model
            config = apply_settings(recipe_defaults(str(name)), toml)
        config = apply_settings(config, given)
        config = apply_settings(config, overrides, strings=True)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not config.data:
        raise click.UsageError("--data is required (a folder of HR images)")
    if not config.val and DEFAULT_VAL.is_dir() and resume is None:
        config = apply_settings(config, {"val": str(DEFAULT_VAL)})
    run_path = Path(resume or run_dir or f"runs/{config.model}_x{config.scale}")
    if resume is None and (run_path / "state.pt").exists():
        raise click.UsageError(f"{run_path} holds a run already: use --resume, or another --run-dir")

    try:
        trainer = Trainer(config, run_path, command)
    except ValueError as exc:  # a device this machine lacks, settings the recipe refuses
        raise click.UsageError(str(exc)) from None
    try:
        exported = trainer.run(resume=resume is not None)
    except TrainingInterrupted as exc:
        echo_err(str(exc))
        return int(ExitCode.INTERRUPTED)
    if config.out and trainer.dist.main:
        _copy_final(exported, Path(config.out))
    return 0


def _copy_final(source: Path, out: Path) -> None:
    """Write the final weights to `out`, with the best validation figures in the metadata."""
    from upscale_cli.checkpoint import load_model, save_checkpoint

    model, info = load_model(source)
    save_checkpoint(out, model, info)
    echo_err(f"wrote {out} ({info.name}, step {info.training.get('iterations')})")
