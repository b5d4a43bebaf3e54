"""`upscale models`: the models this install can run, with their measured figures."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from upscale_cli.archs.base import IMAGE_TO_IMAGE, SUPER_RESOLUTION, TASKS
from upscale_cli.cli.common import run_guarded


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--task", type=click.Choice(TASKS), help="Only the models of this task.")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks.")
def models(as_json: bool, task: str | None, verbose: bool) -> None:
    """List the models: task, scale, architecture, parameters, weights file and measured quality."""
    run_guarded(lambda: _list(as_json, task), verbose)


def describe_models() -> list[dict[str, Any]]:
    """One entry per model name and scale, including known models whose weights are missing."""

    from upscale_cli.archs import get_architecture
    from upscale_cli.archs.catalog import CATALOG, entry
    from upscale_cli.checkpoint import read_info
    from upscale_cli.errors import CheckpointError
    from upscale_cli.models import BICUBIC, shipped_weights

    rows: list[dict[str, Any]] = [{
        "name": BICUBIC, "task": SUPER_RESOLUTION, "scale": None, "arch": "MATLAB bicubic", "params": 0,
        "file": None, "size_bytes": 0, "metrics": {}, "status": "built-in", "about": "baseline, no weights"}]
    seen = set()
    for weights in shipped_weights():
        seen.add(weights.name)
        known = entry(weights.name)
        row: dict[str, Any] = {"name": weights.name, "scale": weights.scale, "file": str(weights.path),
                               "size_bytes": weights.path.stat().st_size,
                               "about": known.about if known else "user weights"}
        try:
            info = read_info(weights.path)
            row["task"] = get_architecture(info.arch).task
            params = info.params if info.params is not None else _tensor_count(weights.path)
            row.update(arch=info.arch, params=params, metrics=info.metrics, status="ok",
                       iterations=info.training.get("iterations"))
            if info.source and not known:
                row["about"] = f"converted from {info.source.get('file')} ({info.source.get('family')})"
        except (CheckpointError, KeyError) as exc:
            row.update(task=None, arch=None, params=None, metrics={}, status=f"unreadable: {exc}")
        rows.append(row)
    for known in CATALOG:
        if known.name not in seen:
            rows.append({"name": known.name, "task": get_architecture(known.arch).task, "scale": None,
                         "arch": known.arch, "params": None, "file": None, "size_bytes": None, "metrics": {},
                         "status": "weights missing", "about": known.about})
    return rows


SHORT_TASKS = {SUPER_RESOLUTION: "SR", IMAGE_TO_IMAGE: "img2img"}  # the table's narrow task column
_FLAG_DTYPES = ("BOOL", "I64", "I32")  # flags and counters kept beside the weights, not parameters


def _tensor_count(path: Path) -> int:
    """The parameter count of a checkpoint that does not record one: its float tensors but BatchNorm's statistics."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return sum(_numel(handle.get_slice(k).get_shape()) for k in handle.keys()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                   and handle.get_slice(k).get_dtype() not in _FLAG_DTYPES)


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _headline(metrics: dict[str, Any]) -> str:
    """'Set5 31.20/0.880, Set14 ...' summary of the PSNR-Y / SSIM-Y figures stored in the metadata.

    Benchmarks in natural order (Set5 before Set14); the training-time `validation` figures only when
    no benchmark was recorded (they repeat one of them)."""
    scored = {name: figures for name, figures in metrics.items() if isinstance(figures, dict) and "psnr_y" in figures}
    if len(scored) > 1:
        scored.pop("validation", None)
    return ", ".join(f"{name} {figures['psnr_y']:.2f}/{figures.get('ssim_y', float('nan')):.3f}"
                     for name, figures in sorted(scored.items(), key=lambda item: _natural_key(item[0]))) or "-"


def _natural_key(name: str) -> list[Any]:
    """Sort key that orders digit runs by value: Set5 < Set14 < Urban100."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def _list(as_json: bool, task: str | None) -> int:
    rows = [row for row in describe_models() if task is None or row["task"] == task]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="upscale models (PSNR-Y dB / SSIM-Y, x4, official LR files)")
    several_tasks = len({row["task"] for row in rows}) > 1  # the task column only where it tells models apart
    for column in ("name", *(("task",) if several_tasks else ()), "scale", "arch", "params", "file", "size",
                   "quality", "status"):
        table.add_column(column, overflow="fold", no_wrap=column in ("name", "task", "scale"))
    for row in rows:
        scale = f"x{row['scale']}" if row["scale"] else ("any" if row["name"] == "bicubic" else "-")
        task = (SHORT_TASKS.get(row["task"], "-"),) if several_tasks else ()
        table.add_row(row["name"], *task, scale, str(row["arch"] or "-"),
                      f"{row['params'] / 1e6:.2f} M" if row.get("params") else "-",
                      Path(row["file"]).name if row["file"] else "-",
                      f"{row['size_bytes'] / 1e6:.1f} MB" if row.get("size_bytes") else "-",
                      _headline(row.get("metrics", {})), row["status"])
    Console().print(table)
    return 0
