"""Option values every subcommand parses the same way: precisions, temperatures, tile specs, sizes.

Each `*_item` parses one value (ValueError with a message naming what is allowed); `comma_list` and
`one` turn an item parser into a click callback for "a,b,c" lists and for single values.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable

import click

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # what --precision accepts where a run picks one
FIXED_PRECISIONS = PRECISIONS[1:]  # what lists of precisions to measure accept
DEVICE_HELP = "auto, cpu, cuda or cuda:N."
MAX_THREADS = max(64, 4 * (os.cpu_count() or 1))  # far beyond this, OpenMP runtimes fail to start
THREADS = click.IntRange(1, MAX_THREADS)

Callback = Callable[[click.Context, click.Parameter, Any], Any]


def precision_item(value: str) -> str:
    if value not in FIXED_PRECISIONS:
        raise ValueError(f"{value!r} is not one of {', '.join(FIXED_PRECISIONS)}")
    return value


def device_item(value: str) -> str:
    """A device name in the form `resolve_device` takes; whether it exists is checked when a model loads."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ValueError(f"{value!r} is not a device: use {DEVICE_HELP[:-1]}")
    return value


def scale_item(value: str) -> float:
    """An upscaling factor: a finite number >= 1 (`nan` and `inf` parse as floats but are no factor)."""
    try:
        scale = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(scale) or scale < 1:
        raise ValueError(f"{value!r}: a scale is a finite number >= 1")
    return scale


def tile_item(value: str) -> str:
    if value in ("none", "auto") or (value.isdigit() and int(value) >= 8):
        return value
    raise ValueError(f"{value!r}: a tile is none, auto or a size in pixels (>= 8)")


def shard_item(value: str) -> tuple[int, int]:
    """`K/N`: the K-th (1-based) of N shares of a batch."""
    match = re.fullmatch(r"(\d+)/(\d+)", value)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise ValueError(f"{value!r}: a shard is K/N with 1 <= K <= N, e.g. 3/8")
    return int(match[1]), int(match[2])


def size_item(value: str) -> int:
    if not value.isdigit() or not 8 <= int(value) <= 8192:
        raise ValueError(f"{value!r}: a size is a whole number of LR pixels from 8 to 8192")
    return int(value)


def tau_item(value: str) -> float:
    try:
        tau = float(value)
    except ValueError:
        raise ValueError(f"{value!r}: give temperatures like 0.8 or 0,0.5,0.8") from None
    if not 0 <= tau <= 2:
        raise ValueError(f"{value!r}: a temperature is between 0 and 2")
    return tau


def comma_list(parse: Callable[[str], Any]) -> Callback:
    """A click callback turning "a,b,c" (or None) into a tuple of parsed items; parse errors are usage errors."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[Any, ...] | None:
        if value is None:
            return None
        try:
            items = tuple(parse(item.strip()) for item in value.split(",") if item.strip())
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        if not items:
            raise click.BadParameter("give at least one value")
        return items

    return callback


def one(parse: Callable[[str], Any]) -> Callback:
    """A click callback parsing a single value (None passes through); parse errors are usage errors."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback
