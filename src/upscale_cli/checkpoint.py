"""The one checkpoint format: safetensors with metadata that says how to build the network.

Metadata keys (all strings, as safetensors requires):
  format            "upscale-cli"          format_version  "1"
  arch              architecture id        scale           native integer scale
  config            JSON of the architecture's config dataclass
  name              short model name (e.g. "srgan_x4")
  training          JSON: command, data, seed, iterations, ...   (how it was made)
  metrics           JSON: {"Set5": {"psnr_y": ...}, ...}          (measured figures)
  params            the network's parameter count (buffers such as BatchNorm statistics left out)
  source            JSON, converted files only: the original's file name, sha256, family, licence
Loading builds the architecture from `arch` + `config` and loads tensors strictly; nothing is guessed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save
from torch import nn

from upscale_cli.archs import get_architecture
from upscale_cli.atomic import write_atomically
from upscale_cli.errors import CheckpointError

FORMAT = "upscale-cli"
FORMAT_VERSION = "1"
_REQUIRED = ("format", "format_version", "arch", "scale", "config")


@dataclass
class CheckpointInfo:
    """What a checkpoint's metadata says about the model inside."""

    arch: str
    scale: int
    config: dict[str, Any]
    name: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    params: int | None = None  # absent in checkpoints written before it was recorded
    source: dict[str, Any] = field(default_factory=dict)  # converted files: where they came from (`convert`)

    def to_metadata(self) -> dict[str, str]:
        return {
            **({"params": str(self.params)} if self.params is not None else {}),
            **({"source": json.dumps(self.source, sort_keys=True)} if self.source else {}),
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": self.arch,
            "scale": str(self.scale),
            "config": json.dumps(self.config, sort_keys=True),
            "name": self.name,
            "training": json.dumps(self.training, sort_keys=True),
            "metrics": json.dumps(self.metrics, sort_keys=True),
        }

    @classmethod
    def from_metadata(cls, path: Path, meta: dict[str, str] | None) -> CheckpointInfo:
        meta = meta or {}
        missing = [k for k in _REQUIRED if k not in meta]
        if missing:
            raise CheckpointError(f"{path}: not an upscale checkpoint (metadata lacks {', '.join(missing)})")
        if meta["format"] != FORMAT:
            raise CheckpointError(f"{path}: metadata format is {meta['format']!r}, expected {FORMAT!r}")
        if meta["format_version"] != FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: checkpoint format version {meta['format_version']} is not supported "
                f"(this upscale reads version {FORMAT_VERSION})"
            )
        try:
            return cls(
                arch=meta["arch"],
                scale=int(meta["scale"]),
                config=json.loads(meta["config"]),
                name=meta.get("name", ""),
                training=json.loads(meta.get("training") or "{}"),
                metrics=json.loads(meta.get("metrics") or "{}"),
                params=int(meta["params"]) if meta.get("params") else None,
                source=json.loads(meta.get("source") or "{}"),
            )
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: malformed checkpoint metadata ({exc})") from None


def save_checkpoint(path: Path, model: nn.Module, info: CheckpointInfo) -> None:
    """Write `model`'s tensors and `info` atomically (`atomic.write_atomically`, fsynced, then renamed)."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    params = sum(p.numel() for p in model.parameters())
    if params:  # a tensor holder (`record_metrics`) keeps the count the file had
        info = replace(info, params=params)
    data = save(tensors, metadata=info.to_metadata())
    write_atomically(path, lambda handle: handle.write(data))


def record_metrics(path: Path, name: str, figures: dict[str, Any]) -> None:
    """Store measured `figures` under `metrics[name]` in the checkpoint's metadata (atomic rewrite)."""
    path = Path(path)
    info = read_info(path)
    info.metrics[name] = figures
    model = _TensorHolder(load_file(str(path)))
    save_checkpoint(path, model, info)


class _TensorHolder(nn.Module):
    """Lets `save_checkpoint` write a plain tensor dict (its state_dict is the dict itself)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.tensors = tensors

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return self.tensors


def read_info(path: Path) -> CheckpointInfo:
    """Only the metadata (cheap: the tensors are not read)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata()
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file ({_first_line(exc)})") from None
    return CheckpointInfo.from_metadata(path, meta)


def build_model(info: CheckpointInfo, source: object = "checkpoint") -> nn.Module:
    """An untrained network of the architecture and config the metadata names (`source` names it in errors).
    The config is checked for types and ranges first; any failure to build from it is a CheckpointError."""
    try:
        arch = get_architecture(info.arch)
    except KeyError as exc:
        raise CheckpointError(f"{source}: {exc.args[0]}") from None
    try:
        config = arch.make_config(info.config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: bad {info.arch} config ({exc})") from None
    if getattr(config, "scale", info.scale) != info.scale:
        raise CheckpointError(f"{source}: metadata scale {info.scale} disagrees with config scale {config.scale}")
    try:
        return arch.build(config)
    except Exception as exc:  # the config is the file's: whatever it makes the builder raise is the file's fault
        raise CheckpointError(f"{source}: cannot build {info.arch} from its config ({_first_line(exc)})") from None


def load_model(path: Path) -> tuple[nn.Module, CheckpointInfo]:
    """Build the network the checkpoint describes and load its tensors strictly, in eval mode.

    Before anything is allocated, the network is built on the meta device (shapes, no memory) and its
    tensors are matched by name, shape and dtype against the file's header: a small file whose config
    asks for a huge network is refused at no cost.
    """
    path = Path(path)
    info = read_info(path)
    with torch.device("meta"):
        layout = build_model(info, path).state_dict()
    header = tensor_header(path)
    check_tensors({k: tuple(v.shape) for k, v in layout.items()}, {k: shape for k, (_, shape) in header.items()}, path)
    check_dtypes(layout, header, path)
    model = build_model(info, path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read tensors ({_first_line(exc)})") from None
    load_strict(model, tensors, path)
    return model.eval(), info


FLOAT_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}  # safetensors' names: ours
COUNT_DTYPES = ("I64", "I32", "I16", "I8", "U8", "BOOL")  # for counters and flags (BatchNorm's, ActNorm's)


def tensor_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Each tensor's safetensors dtype and shape from the file's header (no tensor data read)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            views = {key: handle.get_slice(key) for key in handle.keys()}
            return {key: (view.get_dtype(), tuple(view.get_shape())) for key, view in views.items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the tensor header ({_first_line(exc)})") from None


def check_dtypes(layout: dict[str, torch.Tensor], header: dict[str, tuple[str, tuple[int, ...]]],
                 source: object) -> None:
    """A CheckpointError for a tensor whose dtype cannot hold what the network keeps there: weights must be
    float32, float16 or bfloat16 (integer or boolean weights load silently and compute garbage)."""
    for key, tensor in layout.items():
        dtype = header[key][0]
        allowed = FLOAT_DTYPES if tensor.dtype.is_floating_point else COUNT_DTYPES
        if dtype not in allowed:
            kind = ", ".join(FLOAT_DTYPES.values()) if tensor.dtype.is_floating_point else "an integer or boolean"
            raise CheckpointError(f"{source}: tensor {key} is {dtype}; it must be {kind}")


def load_strict(model: nn.Module, tensors: dict[str, torch.Tensor], source: object) -> None:
    """Load `tensors` into `model`, naming every missing, unexpected or mis-shaped tensor."""
    check_tensors({k: tuple(v.shape) for k, v in model.state_dict().items()},
                  {k: tuple(v.shape) for k, v in tensors.items()}, source)
    model.load_state_dict(tensors, strict=True)


def check_tensors(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], source: object) -> None:
    """A CheckpointError naming every missing, unexpected or mis-shaped tensor of `found` against `expected`."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append("missing tensors: " + _short_list(missing))
    if unexpected:
        problems.append("unexpected tensors: " + _short_list(unexpected))
    mismatched = [f"{k} {found[k]} vs {shape}" for k, shape in expected.items() if k in found and found[k] != shape]
    if mismatched:
        problems.append("shape mismatches (file vs model): " + _short_list(mismatched))
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))


def config_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain JSON-able values."""
    return asdict(config)


def _short_list(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
