"""The OpenVINO backend (`pip install 'upscale-cli[openvino]'`): feed-forward networks run by OpenVINO on the CPU.

A network is converted once. Its OpenVINO model (fp32 weights) is cached in $XDG_CACHE_HOME/upscale/openvino
under a key made from the checkpoint file's SHA-256 and the versions of this program and of OpenVINO. Beside
it goes a JSON file of what the core needs to run it without the descriptor (`Facts`), written last, so a
half-written entry is never used. OpenVINO keeps its compiled forms, one per precision, in the same folder.

Only `convert` imports torch. With a cached model, an image that fits one tile is upscaled without torch
(`WholeImageUpscaler`): one small image then takes a fraction of a second instead of torch's 2 s start-up.
Larger images go through the tiler with `OpenVinoRunner`, so every tiler guarantee holds on this backend too.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from upscale_cli.archs.base import RunOptions
from upscale_cli.atomic import write_atomically
from upscale_cli.cpu import OPENVINO_LARGEST_AUTO_TILE, cpu_has_native_bf16, nvidia_gpu_present
from upscale_cli.errors import InferenceError
from upscale_cli.models import BICUBIC, find_weights, looks_like_path, weights_digest
from upscale_cli.sizes import OutputSizes

if TYPE_CHECKING:
    import numpy as np

BACKENDS = ("auto", "torch", "openvino")
INSTALL_HINT = "pip install 'upscale-cli[openvino]'"
_HINTS = {"bf16": "bf16", "fp32": "f32"}  # our precision names -> OpenVINO's inference precision hint


def installed() -> bool:
    """Whether the OpenVINO runtime can be imported (looked up without importing it)."""
    return importlib.util.find_spec("openvino") is not None


# The form of the network handed to OpenVINO, raised whenever `rewrite.prepare_for_inference` changes it
# (2: the RGB tail before the last shuffle, in-place activations), so that older conversions are made again.
NETWORK_FORM = 2


def cache_folder() -> Path:
    """$XDG_CACHE_HOME/upscale/openvino: converted models and OpenVINO's compiled forms of them."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "upscale" / "openvino"


def cache_key(checkpoint: Path) -> str:
    """The cache name of a checkpoint's conversion: any change to the file, to this program (its version, or
    the form of the network it converts) or to OpenVINO gives a new one, so a stale conversion is never run."""
    from importlib.metadata import version

    from upscale_cli import __version__

    names = f"upscale {__version__}; network form {NETWORK_FORM}; openvino {version('openvino')};"
    digest = hashlib.sha256(names.encode())
    with open(checkpoint, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class Facts:
    """What running a converted network needs from its checkpoint and descriptor."""

    name: str  # the checkpoint's own name ("" if it has none)
    task: str
    scale: int
    multiple: int  # input sides must be multiples of this...
    minimum: int  # ...and at least this long
    overlap: int  # the descriptor's tile overlap
    bf16: bool  # whether `--precision auto` may pick bf16


@functools.cache
def _core() -> Any:
    """The process's one OpenVINO Core, kept until exit. Each Core's CPU plugin swaps in a signal stack of its
    own for the main thread and puts back the one it found when destroyed; two Cores destroyed in the order
    they were made (OpenVINO 2026.4) leave the main thread on freed memory, and the next signal (Ctrl-C,
    SIGTERM) kills the process."""
    import openvino as ov

    return ov.Core()


class OpenVinoNetwork:
    """A converted network, compiled for the CPU once for each precision it is asked to run at."""

    def __init__(self, xml: Path, facts: Facts, threads: int | None = None) -> None:
        self.facts, self.threads = facts, threads
        self.compiled_folder = xml.parent / "compiled"
        self.model = _core().read_model(str(xml))
        self._compiled: dict[str, Any] = {}

    def __call__(self, batch: np.ndarray, precision: str) -> np.ndarray:
        """(N, 3, h, w) float images to (N, 3, h * scale, w * scale) float32, computed at `precision`."""
        import numpy as np

        if precision not in self._compiled:
            config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _HINTS[precision],
                                      "CACHE_DIR": str(self.compiled_folder)}
            if self.threads:
                config["INFERENCE_NUM_THREADS"] = self.threads
            self._compiled[precision] = _core().compile_model(self.model, "CPU", config)
        output = self._compiled[precision](np.ascontiguousarray(batch, dtype=np.float32))[0]
        return np.asarray(output, dtype=np.float32)


def cached_network(checkpoint: Path, threads: int | None = None) -> OpenVinoNetwork | None:
    """The cached conversion of `checkpoint`, or None when there is none (or it cannot be read)."""
    stem = cache_folder() / cache_key(checkpoint)
    try:
        facts = Facts(**json.loads(stem.with_suffix(".json").read_text()))
        return OpenVinoNetwork(stem.with_suffix(".xml"), facts, threads)
    except (OSError, ValueError, TypeError, RuntimeError):
        return None


def convert(module: Any, checkpoint: Path, facts: Facts, threads: int | None = None) -> OpenVinoNetwork:
    """Convert a loaded (BatchNorm-folded) torch network, cache it for `checkpoint` and return it."""
    import openvino as ov
    import torch

    side = -(-max(64, facts.minimum) // facts.multiple) * facts.multiple
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python control flow are not the user's concern
        model = ov.convert_model(module.eval(), example_input=torch.zeros(1, 3, side, side), input=[-1, 3, -1, -1])
    folder = cache_folder()
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(checkpoint)
    partial = folder / f"{key}.{os.getpid()}.partial.xml"
    try:
        ov.save_model(model, str(partial), compress_to_fp16=False)
        os.replace(partial.with_suffix(".bin"), folder / f"{key}.bin")
        os.replace(partial, folder / f"{key}.xml")
    finally:
        for leftover in (partial, partial.with_suffix(".bin")):
            leftover.unlink(missing_ok=True)
    write_atomically(folder / f"{key}.json", lambda handle: handle.write(json.dumps(asdict(facts)).encode()))
    return OpenVinoNetwork(folder / f"{key}.xml", facts, threads)


def network_for(backend: str, device_type: str, arch: str, facts: Facts | None, module: Any, checkpoint: Path,
                threads: int | None = None) -> tuple[OpenVinoNetwork | None, str | None]:
    """The network to run on OpenVINO for `backend` (None: run on torch) and a one-line note for the user.

    `facts` is None for a network that is not feed-forward. The cached conversion of `checkpoint` is used,
    else `module` is converted now. `auto` falls back to torch silently where OpenVINO does not apply; an
    explicit `openvino` says why it falls back. A conversion that fails is always reported.
    """
    if backend == "torch":
        return None, None
    why = None
    if device_type != "cpu":
        why = f"OpenVINO runs on the CPU here, not on {device_type}"
    elif facts is None:
        why = f"{arch} does not run on OpenVINO (it brings its own runner or inputs)"
    elif not installed():
        why = f"OpenVINO is not installed ({INSTALL_HINT})"
    if why is not None:
        return None, (f"{why}; using torch" if backend == "openvino" else None)
    network = cached_network(checkpoint, threads)
    if network is not None:
        return network, None
    try:
        return convert(module, checkpoint, facts, threads), None
    except Exception as exc:  # an exporter's failures have no one type; torch runs the model instead
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return None, f"OpenVINO could not convert {arch} ({first[:160]}); using torch"


@dataclass
class WholeImageUpscaler(OutputSizes):
    """A cached OpenVINO network with the interface of `engine.Upscaler`, loaded without torch.

    An image that fits one tile at the native scale runs whole, as the tiler would run it (one window, no
    padding needed), with the same NaN/Inf redo in fp32. Everything else (a larger image, a resize, extra
    inputs) goes to `full()`: the torch engine on the same converted network, loaded on first need.
    """

    name: str
    network: OpenVinoNetwork
    precision: str
    overlap: int
    digest: str
    load_full: Callable[[], Any]
    device: str = "cpu"
    backend: str = "openvino"
    backend_note: str | None = None
    tta: bool = False
    color_fix: bool = False
    stochastic: bool = False
    is_network: bool = True
    default_tau: float | None = None

    def __post_init__(self) -> None:
        self.scale, self.task = self.network.facts.scale, self.network.facts.task
        self._full: Any = None

    def full(self) -> Any:
        """The torch `Upscaler` of the same model and settings (imports torch)."""
        if self._full is None:
            self._full = self.load_full()
        return self._full

    def runs_whole(self, width: int, height: int, out_width: int, out_height: int, tile_spec: str = "auto") -> bool:
        """Whether a `width` x `height` input to that output size is one tile needing no padding."""
        facts = self.network.facts
        largest = OPENVINO_LARGEST_AUTO_TILE
        if tile_spec.isdigit():
            largest = min(largest, int(tile_spec))
        return ((out_width, out_height) == self.output_size(width, height) and max(width, height) <= largest
                and min(width, height) >= facts.minimum and width % facts.multiple == 0
                and height % facts.multiple == 0)

    def check_extra_names(self, names: Iterable[str]) -> None:
        if names:
            self.full().check_extra_names(names)

    def load_extras(self, values: Mapping[str, str], height: int, width: int) -> dict[str, Any]:
        return self.full().load_extras(values, height, width) if values else {}

    def describe_input(self, rgb: np.ndarray) -> dict[str, float]:
        return {}  # feed-forward networks estimate nothing (`ModelDescriptor.feed_forward`)

    def memory_problem(self, width: int, height: int, out_width: int, out_height: int, kept: int = 0,
                       converted: bool = False) -> str | None:
        if self.runs_whole(width, height, out_width, out_height):
            return None  # at most a 384 px input: its output is a few tens of MiB
        return self.full().memory_problem(width, height, out_width, out_height, kept, converted)

    def upscale(self, rgb: np.ndarray, out_width: int, out_height: int, tile_spec: str = "auto",
                on_tile: Callable[[int, int], None] | None = None, warn: Callable[[str], None] | None = None,
                options: RunOptions = RunOptions(), convert: Callable[[np.ndarray], np.ndarray] | None = None,
                ) -> np.ndarray:
        """As `engine.Upscaler.upscale`."""
        height, width = rgb.shape[:2]
        if options.extras or not self.runs_whole(width, height, out_width, out_height, tile_spec):
            return self.full().upscale(rgb, out_width, out_height, tile_spec, on_tile, warn, options, convert)
        result = self._whole(rgb, warn or (lambda message: None))
        if on_tile is not None:
            on_tile(1, 1)
        return result if convert is None else convert(result)

    def _whole(self, rgb: np.ndarray, warn: Callable[[str], None]) -> np.ndarray:
        """The network on the whole (H, W, 3) image, redone in fp32 if reduced precision gave NaN/Inf."""
        import numpy as np

        height, width = rgb.shape[:2]
        batch = rgb.transpose(2, 0, 1)[None]
        where = f"the image ({height}x{width} px)"
        output = self.network(batch, self.precision)
        if not np.isfinite(output).all():
            if self.precision == "fp32":
                raise InferenceError(f"the model produced NaN/Inf values for {where} in fp32")
            warn(f"NaN/Inf in {self.precision} for {where}; redoing it in fp32")
            output = self.network(batch, "fp32")
            if not np.isfinite(output).all():
                raise InferenceError(f"the model produced NaN/Inf values for {where} even in fp32")
        if output.shape != (1, 3, height * self.scale, width * self.scale):
            raise InferenceError(f"the model returned shape {output.shape} for input {batch.shape} at x{self.scale}")
        return output[0].transpose(1, 2, 0)


def cached_upscaler(model: str, scale: float | None, device: str, precision: str, threads: int | None,
                    overlap: int | None, load_full: Callable[[], Any]) -> WholeImageUpscaler | None:
    """The torch-free upscaler of `model` when it has a cached conversion and the settings let OpenVINO run
    it as the torch engine would (the CPU, a precision this CPU runs natively); None otherwise."""
    if not installed() or device not in ("auto", "cpu") or (device == "auto" and nvidia_gpu_present()):
        return None
    if model == BICUBIC:
        return None
    path = Path(model) if looks_like_path(model) else find_weights(model, scale)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return None  # another project's file is converted to ours first, with torch
    network = cached_network(path, threads)
    if network is None:
        return None
    facts = network.facts
    if precision == "auto":
        precision = "bf16" if facts.bf16 and cpu_has_native_bf16() else "fp32"
    if precision not in ("fp32", "bf16") or (precision == "bf16" and not cpu_has_native_bf16()):
        return None  # refused, or emulated and warned about, by the torch engine
    return WholeImageUpscaler(name=model if not looks_like_path(model) else (facts.name or path.stem),
                              network=network, precision=precision,
                              overlap=facts.overlap if overlap is None else overlap,
                              digest=weights_digest(path), load_full=load_full)
