"""The model descriptor: everything the core needs to know about an architecture, independent of any weights.

cli/, the engine, the tiler and bench/ read only this: a model's task and native scale, the inputs it
takes besides the image, whether it draws samples, its size requirements and precisions, its tile
overlap and receptive radius, a memory estimate, and the factory of the runner that runs it on tiles.
Importing this module does not import torch (it is read while `upscale --help` builds).
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    import torch
    from torch import nn

    from upscale_cli.tiler import TileRunner

SUPER_RESOLUTION = "super-resolution"
IMAGE_TO_IMAGE = "image-to-image"  # scale 1: style transfer, restoration at the same size
TASKS = (SUPER_RESOLUTION, IMAGE_TO_IMAGE)

# Where an extra input lives relative to the image the model reads.
AT_INPUT = "input"  # one pixel per input pixel: cropped, padded and turned with the image
AT_OUTPUT = "output"  # one pixel per output pixel (a prior at HR size): cropped at `scale` times the window
WHOLE = "whole"  # an image of any size (a style image): handed to the runner whole, never cropped or turned
PLACEMENTS = (AT_INPUT, AT_OUTPUT, WHOLE)

MAX_CONFIG_INT = 4096  # no size, count or width of any architecture here comes near it
MAX_CONFIG_ITEMS = 64  # the longest list a config holds, and the longest string


def _check_config_value(what: str, value: Any, kind: Any) -> None:
    """A ValueError unless `value` is of the annotated `kind` (int, float, bool, str or tuple[int, ...]) and
    in range: ints in [0, MAX_CONFIG_INT], floats finite, strings and tuples at most MAX_CONFIG_ITEMS long."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_CONFIG_INT
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif kind is str:
        ok = isinstance(value, str) and len(value) <= MAX_CONFIG_ITEMS
    elif typing.get_origin(kind) is tuple:
        ok = isinstance(value, (list, tuple)) and len(value) <= MAX_CONFIG_ITEMS
        for item in value if ok else ():
            _check_config_value(what, item, typing.get_args(kind)[0])
    else:
        raise TypeError(f"{what}: configs hold bool, int, float, str or tuple[int, ...], not {kind}")
    if not ok:
        expected = {int: f"an int in [0, {MAX_CONFIG_INT}]", float: "a finite number", bool: "true or false",
                    str: f"a string of at most {MAX_CONFIG_ITEMS} characters"}.get(kind, f"a list of at most {MAX_CONFIG_ITEMS}")
        raise ValueError(f"{what} is {value!r}: expected {expected}")


@dataclass(frozen=True)
class ExtraInput:
    """A named input besides the image, as a (1, channels, h, w) float tensor. `load(value, height, width)`
    turns what a user gives on the command line (`--input NAME=VALUE`: a file, or words of the input's own)
    into that tensor for an LR image of height x width; without it the input can only come from Python.
    `default(image)` computes the input from the image (1, 3, h, w) a pass reads when none is given (an
    automatic prior); without it the input is required."""

    name: str
    channels: int
    at: str  # AT_INPUT, AT_OUTPUT or WHOLE
    about: str = ""
    load: Callable[[str, int, int], Any] | None = None
    default: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if self.at not in PLACEMENTS:
            raise ValueError(f"extra input {self.name!r}: placement {self.at!r} is not one of {', '.join(PLACEMENTS)}")


@dataclass(frozen=True)
class Sampling:
    """A model that draws a different plausible output for every seed, at a temperature tau."""

    default_tau: float


@dataclass(frozen=True)
class SizeRequirements:
    """Input sides must be a multiple of `multiple` and at least `minimum` pixels: the core pads the image
    (by reflection) to meet both, aligns tile boundaries to `multiple`, and crops the output back."""

    multiple: int = 1
    minimum: int = 1


@dataclass
class Recognised:
    """Another project's state dict read as one of our architectures: which family and key layout it is,
    the config its shapes give, its tensors under our names, and what does not fit (empty: it all does)."""

    family: str
    config: dict[str, Any]
    tensors: dict[str, Any]
    problems: list[str] = field(default_factory=list)


def unexpected_tensors(names: list[str]) -> list[str]:
    """The problem a recogniser reports for tensors its layout has no place for (none: no problem)."""
    return [f"unexpected tensors: {', '.join(names[:4])}"] if names else []


@dataclass(frozen=True)
class RunOptions:
    """What one run of a model may be given besides the image: the sample's seed and temperature (stochastic
    models; tau None is the model's default), the extra inputs by name, and, for models that transfer
    statistics (others ignore both), how far the transfer goes (`strength`, 0..1) and which one it is
    (`method`, None: the model's own)."""

    seed: int = 0
    tau: float | None = None
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)
    strength: float = 1.0
    method: str | None = None


RunnerFactory = Callable[["nn.Module", "torch.device", str, RunOptions], "TileRunner"]


@dataclass(frozen=True)
class ModelDescriptor:
    """An architecture id, its config dataclass and constructor, and what the core must know to run it.

    `receptive_radius(config)`: input pixels on each side that can change one output pixel (an upper
    bound; tests measure it). `bytes_per_input_pixel(config)`: fp32 activation memory per input pixel
    during inference (`--tile auto`). `make_runner(model, device, precision, options)`: the runner of one
    image (None: the plain feed-forward `NetworkRunner`, which passes extra inputs as keyword arguments).
    `bf16` / `fp16`: whether `--precision auto` may pick that precision for this model (asking for it
    explicitly always runs the model's own mixed-precision path). `initialize(model, image)`: what a freshly
    built network needs before it can run (a flow's data-dependent ActNorm), for tests and recipes.
    `likelihood(model, hr, lr, device=, seed=)`: density models' NLL of an HR image in bits per dimension.
    `describe_input(model, image)`: what the model estimates about an input image (1, 3, H, W) as named
    numbers (a blind model's blur and noise estimates), shown by `--verbose` and kept by `--json`.
    `cpu_auto_tile`: the largest tile `--tile auto` picks for this model on a CPU (None: the CPU default,
    `cpu.CPU_LARGEST_AUTO_TILE`), for models whose runners gain more from fewer tiles than from cache-sized ones.
    `for_inference(model)`: the architecture's own exact rewrite of a loaded network that will only run
    inference (`rewrite.convolve_before_shuffle` where its forward has that pattern), applied at load.
    `small_config`: a cheap configuration for the registry-driven tests.
    """

    id: str
    paper: str
    config_type: type
    build: Callable[[Any], nn.Module]
    receptive_radius: Callable[[Any], int]
    bytes_per_input_pixel: Callable[[Any], int]
    task: str = SUPER_RESOLUTION
    extra_inputs: tuple[ExtraInput, ...] = ()
    sampling: Sampling | None = None
    size: SizeRequirements = SizeRequirements()
    bf16: bool = True
    fp16: bool = True
    tile_overlap: int = 16  # default overlap in input px: feathering hides seams well before the full radius
    cpu_auto_tile: int | None = None
    make_runner: RunnerFactory | None = None
    initialize: Callable[[Any, Any], None] | None = None
    likelihood: Callable[..., float] | None = None
    describe_input: Callable[[Any, Any], dict[str, float]] | None = None
    size_of: Callable[[Any], SizeRequirements] | None = None  # when the size requirements follow the config
    recognise: Callable[[Mapping[str, Any]], Recognised | None] | None = None  # other projects' state dicts
    for_inference: Callable[[Any], None] | None = None
    small_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"{self.id}: task {self.task!r} is not one of {', '.join(TASKS)}")

    @property
    def stochastic(self) -> bool:
        return self.sampling is not None

    @property
    def feed_forward(self) -> bool:
        """A plain network from one image to one image, `module(image)`: what another runtime can run for us."""
        return self.make_runner is None and not self.extra_inputs and self.describe_input is None

    @property
    def default_tau(self) -> float | None:
        return None if self.sampling is None else self.sampling.default_tau

    def size_for(self, config: Any) -> SizeRequirements:
        """The size requirements of a model of this config (`size_of`, else the fixed `size`)."""
        return self.size_of(config) if self.size_of is not None else self.size

    def scale(self, config: Any) -> int:
        """The native scale of a config: its `scale` for super-resolution, 1 for image-to-image models."""
        return int(getattr(config, "scale")) if self.task == SUPER_RESOLUTION else 1

    def make_config(self, values: Mapping[str, Any]) -> Any:
        """Build the config dataclass, rejecting unknown keys instead of ignoring them, and values of the
        wrong type or out of range before anything is built from them (a config comes from a file)."""
        hints = typing.get_type_hints(self.config_type)
        unknown = sorted(set(values) - set(hints))
        if unknown:
            raise ValueError(f"unknown {self.id} config keys: {', '.join(unknown)}")
        for key, value in values.items():
            _check_config_value(f"{self.id} config {key}", value, hints[key])
        return self.config_type(**values)

    def runner(self, model: nn.Module, device: torch.device, precision: str, options: RunOptions) -> TileRunner:
        """The runner of one image with `options` (the plain network runner unless the model brings its own)."""
        if self.make_runner is not None:
            return self.make_runner(model, device, precision, options)
        from upscale_cli.archs.runners import NetworkRunner

        return NetworkRunner(model, self.scale(model.config), device, precision)
