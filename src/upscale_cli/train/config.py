"""The typed training configuration: defaults per recipe, a TOML file, the options, then `--set key=value`.

Shared settings live in `TrainConfig`; each recipe's own (a GAN's loss weights, a flow's schedule) in
the typed dataclass its `RecipeSpec` names, held as `TrainConfig.options`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from upscale_cli.archs.catalog import DEFAULT_RECIPE


@dataclass
class TrainConfig:
    """The knobs every training run has, and `options`: the recipe's own typed section (its RecipeSpec's
    options dataclass: GAN weights, flow schedules, ...). Saved in the run directory and in exported
    metadata as one flat JSON object."""

    model: str = DEFAULT_RECIPE
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
    device: str = "auto"  # auto (CUDA when present), cpu, cuda or cuda:N
    init: str = ""  # generator weights to start from (safetensors)
    out: str = ""  # where `upscale train` copies the final weights (the run directory keeps its own)
    arch: dict[str, Any] = field(default_factory=dict)  # architecture config overrides
    options: Any = None  # the recipe's typed section; None means its defaults

    def __post_init__(self) -> None:
        if self.options is None:
            self.options = options_type(self.model)()

    def settings(self) -> dict[str, Any]:
        """Every setting as one flat dict: the shared ones and the recipe's own side by side."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        return {**shared, **dataclasses.asdict(self.options)}

    def to_json(self) -> str:
        return json.dumps(self.settings(), sort_keys=True)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> TrainConfig:
        """The config that `settings()` (or a run directory's config.json) describes."""
        return apply_settings(cls(model=settings.get("model", DEFAULT_RECIPE)), settings)


def options_type(model: str) -> type:
    """The typed settings dataclass of the recipe for `model` (importing the recipe module)."""
    from upscale_cli.train.recipes import recipe_spec

    return recipe_spec(model).options


def recipe_defaults(model: str) -> TrainConfig:
    """TrainConfig's defaults for `model`: the shared ones with the recipe's own on top."""
    from upscale_cli.train.recipes import recipe_spec

    return apply_settings(TrainConfig(model=model), recipe_spec(model).defaults)


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

    Keys are shared settings or the recipe's own (flat, as `settings()` writes them); `arch.NAME` sets an
    architecture config entry. A new `model` starts from that recipe's own settings' defaults.
    """
    shared = {f.name: f.type for f in dataclasses.fields(TrainConfig) if f.name != "options"}
    updates: dict[str, Any] = {}
    arch = dict(config.arch)
    recipe_values: dict[str, Any] = {}
    for key, value in values.items():
        if key.startswith("arch."):
            arch[key[5:]] = _json_or_text(value) if strings else value
        elif key in shared:
            updates[key] = _coerce(key, shared[key], value) if strings else value
        else:
            recipe_values[key] = value
    if "arch" in updates:
        arch.update(updates.pop("arch"))
    model = updates.get("model", config.model)
    options = config.options if model == config.model else options_type(model)()
    own = {f.name: f.type for f in dataclasses.fields(options)}
    unknown = sorted(set(recipe_values) - set(own))
    if unknown:
        raise ValueError(f"unknown training setting {unknown[0]!r} (for {model}: the shared settings and "
                         f"{', '.join(own) or 'no settings of its own'})")
    options = dataclasses.replace(options, **{k: _coerce(k, own[k], v) if strings else v
                                              for k, v in recipe_values.items()})
    return dataclasses.replace(config, **updates, arch=arch, options=options)


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
