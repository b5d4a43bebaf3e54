"""The typed training configuration: defaults per recipe, a TOML file, the options, then `--set key=value`."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    """Every knob of a training run; saved in the run directory and in exported metadata."""

    model: str = "srresnet"
    data: str = ""
    val: str = ""
    scale: int = 4
    iters: int = 20000
    batch: int = 16
    patch: int = 96
    lr: float = 2e-4
    lr_floor: float = 0.01  # cosine schedule ends at lr * lr_floor
    warmup: int = 0
    loss: str = "l1"  # pixel loss: l1 or mse
    ema: float = 0.999
    bn_batches: int = 100  # batches that re-estimate the EMA generator's BatchNorm statistics (0 = copy them)
    grad_clip: float = 0.0  # 0 = off
    val_every: int = 1000
    log_every: int = 50
    save_minutes: float = 5.0
    seed: int = 0
    precision: str = "auto"
    init: str = ""  # generator weights to start from (safetensors)
    out: str = ""  # where `upscale train` copies the final weights (the run directory keeps its own)
    arch: dict[str, Any] = field(default_factory=dict)  # architecture config overrides
    # GAN recipes
    adv_weight: float = 1e-3
    content: str = "dfeat"  # vgg (needs vgg_weights) | dfeat (discriminator feature matching)
    content_weight: float = 1.0
    pixel_weight: float = 0.0
    vgg_weights: str = ""
    d_lr: float = 0.0  # 0 = same as lr
    # SRFlow
    encoder_frozen_fraction: float = 0.5  # encoder (from `init`) frozen for this fraction of iters, then trained
    encoder_warmup: int = 0  # steps over which the unfrozen encoder's updates ramp from 0 to the full learning rate
    hr_noise: bool = True  # dequantisation noise (Gaussian, std 4/(sqrt(3)*255)) added to HR while training
    param_nets_fp32: bool = False  # keep the flow's parameter networks in fp32 under bf16 (1.8x slower steps)
    val_crop: int = 128  # SRFlow validation uses HR centre crops of at most this size (CPU cost)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


# The recipes (`upscale_cli.train.recipes.<name>`), and what each needs other than TrainConfig's
# defaults: kept here, not in the recipes, because `upscale train --help` and config parsing must not
# import torch. SRFlow: the paper's learning rate;
# no EMA, because the average of a flow's weights is a worse flow than the live weights
# (weights/README.md, SRFlow section).
RECIPES = ("srresnet", "srgan", "srflow")
RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "srflow": {"lr": 2.5e-4, "ema": 0.0},
}


def recipe_defaults(model: str) -> TrainConfig:
    """TrainConfig's defaults for `model`: the shared ones with the recipe's own on top."""
    return apply_settings(TrainConfig(model=model), RECIPE_DEFAULTS.get(model, {}))


def _coerce(name: str, kind: Any, text: str) -> Any:
    """Parse a `--set` value by the field's declared type (never by evaluating it)."""
    kind = {"int": int, "float": float, "str": str, "bool": bool}.get(kind, kind)
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected true/false, got {text!r}")
    if kind in (int, float, str):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{name}: expected {kind.__name__}, got {text!r}") from None
    return json.loads(text)


def _json_or_text(text: str) -> Any:
    """An architecture `--set` value: JSON when it parses (`8`, `true`, `[1, 2]`), else the plain word."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_settings(config: TrainConfig, values: dict[str, Any], strings: bool = False) -> TrainConfig:
    """A copy of `config` with `values` applied; unknown keys are errors, not silently dropped.

    Keys of the form `arch.NAME` set architecture config entries.
    """
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    updates: dict[str, Any] = {}
    arch = dict(config.arch)
    for key, value in values.items():
        if key.startswith("arch."):
            arch[key[5:]] = _json_or_text(value) if strings else value
            continue
        if key not in fields:
            raise ValueError(f"unknown training setting {key!r}")
        updates[key] = _coerce(key, fields[key], value) if strings else value
    if "arch" in updates:
        arch.update(updates.pop("arch"))
    return dataclasses.replace(config, **updates, arch=arch)


def parse_set_options(items: tuple[str, ...]) -> dict[str, str]:
    """`key=value` strings into a dict; a missing `=` is an error."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML config file as a dict (Python 3.11's tomllib, or the tomli backport on 3.10)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised only on 3.10
        import tomli as tomllib
    with open(path, "rb") as handle:
        return tomllib.load(handle)
