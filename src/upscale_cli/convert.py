"""Other projects' model files as our checkpoints: `upscale convert` and `--model FILE.pth`.

A file is read without running any code: `.pth`/`.pt`/`.ckpt` with `torch.load(weights_only=True)` (a
file that needs more holds Python objects and is refused), `.safetensors` as it is. The usual containers
are unwrapped (`params_ema` before `params`, then `state_dict`, `model`; `module.` prefixes dropped) and
every architecture whose descriptor can `recognise` other projects' state dicts is asked in turn. A
match must be exact: every tensor used, none missing or left over, shapes as the network's. The result is
our safetensors format with full metadata, and `source` saying where it came from (file name, sha256, the
detected family) with a licence field for the user to fill.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

from upscale_cli.archs import architecture_ids, get_architecture
from upscale_cli.archs.base import Recognised
from upscale_cli.atomic import write_atomically
from upscale_cli.checkpoint import FORMAT, CheckpointInfo, build_model, check_tensors
from upscale_cli.errors import CheckpointError

FOREIGN_SUFFIXES = (".pth", ".pt", ".ckpt")
CONTAINER_KEYS = ("params_ema", "params", "state_dict", "model")  # tried in this order


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def is_foreign(path: Path) -> bool:
    """Whether `path` is a model file to convert: a torch file, or a safetensors file without our metadata."""
    if path.suffix.lower() in FOREIGN_SUFFIXES:
        return True
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("format") != FORMAT
    except (SafetensorError, OSError, ValueError):
        return False  # not readable: the loader says why


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a model file, unwrapped from the usual containers, without running any code."""
    if path.suffix.lower() == ".safetensors":
        try:
            return _unwrap(load_file(str(path)), path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: holds Python objects beyond tensors, which only unsafe loading would run "
                              f"({_first_line(exc)}); refused: upscale never executes a pickle") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable torch file ({_first_line(exc)})") from None
    return _unwrap(loaded, path)


def _unwrap(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(loaded, dict) and not _all_tensors(loaded):
        inner = next((loaded[k] for k in CONTAINER_KEYS if isinstance(loaded.get(k), dict)), None)
        if inner is None:
            raise CheckpointError(f"{path}: a dict of {', '.join(sorted(map(str, loaded))[:6])}: no state dict "
                                  f"found (looked for {', '.join(CONTAINER_KEYS)})")
        loaded = inner
    if not isinstance(loaded, dict) or not loaded:
        raise CheckpointError(f"{path}: holds {type(loaded).__name__}, not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def _all_tensors(mapping: dict[Any, Any]) -> bool:
    return bool(mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in mapping.items())


def recognise(tensors: dict[str, torch.Tensor], path: Path) -> tuple[str, Recognised]:
    """The architecture id and exact reading of `tensors`; a CheckpointError naming what was tried, and
    the closest partial match with its missing and unexpected tensors, when there is none."""
    tried, partial = [], []
    for arch_id in architecture_ids():
        descriptor = get_architecture(arch_id)
        if descriptor.recognise is None:
            continue
        tried.append(arch_id)
        found = descriptor.recognise(tensors)
        if found is None:
            continue
        if not found.problems:
            found.problems = _layout_problems(arch_id, found)
        if not found.problems:
            return arch_id, found
        partial.append(found)
    if partial:
        closest = min(partial, key=lambda r: len(" ".join(r.problems)))
        raise CheckpointError(f"{path}: looks like {closest.family} but does not fit: {'; '.join(closest.problems)}")
    raise CheckpointError(f"{path}: matches no known family (tried: {', '.join(tried)}; "
                          f"its first keys: {', '.join(list(tensors)[:4])})")


def _layout_problems(arch_id: str, found: Recognised) -> list[str]:
    """What keeps `found` from loading into the network its config builds (checked on the meta device)."""
    info = CheckpointInfo(arch_id, get_architecture(arch_id).scale(_config(arch_id, found)), found.config)
    try:
        with torch.device("meta"):
            layout = build_model(info, found.family).state_dict()
        check_tensors({k: tuple(v.shape) for k, v in layout.items()},
                      {k: tuple(v.shape) for k, v in found.tensors.items()}, found.family)
    except CheckpointError as exc:
        return [str(exc).removeprefix(f"{found.family}: ")]
    non_float = [k for k, v in found.tensors.items() if not v.dtype.is_floating_point and layout[k].dtype.is_floating_point]
    return [f"non-float weights: {', '.join(non_float[:4])}"] if non_float else []


def _config(arch_id: str, found: Recognised) -> Any:
    return get_architecture(arch_id).make_config(found.config)


def convert(path: Path) -> tuple[CheckpointInfo, dict[str, torch.Tensor]]:
    """Read and recognise a model file: our checkpoint's metadata and tensors (float64 stored as float32)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    tensors = read_state_dict(path)
    arch_id, found = recognise(tensors, path)
    descriptor = get_architecture(arch_id)
    info = CheckpointInfo(
        arch=arch_id, scale=descriptor.scale(_config(arch_id, found)), config=found.config, name=_model_name(path),
        params=sum(v.numel() for v in found.tensors.values() if v.dtype.is_floating_point),
        source={"file": path.name, "sha256": sha256_of(path), "family": found.family, "licence": ""})
    stored = {k: (v.float() if v.dtype == torch.float64 else v).contiguous() for k, v in found.tensors.items()}
    if descriptor.make_runner is None and not descriptor.extra_inputs and descriptor.sampling is None:
        config = _config(arch_id, found)
        declared = descriptor.receptive_radius(config)
        measured = measure_receptive_radius(_loaded(info, stored), info.scale, declared, descriptor.size_for(config).multiple)
        if measured > declared:
            raise CheckpointError(f"{path}: its output reaches {measured} px from a changed input pixel, beyond the "
                                  f"{declared} px the {arch_id} architecture declares: tiles would show seams")
        info.source["receptive_radius_measured"] = measured
    return info, stored


def _loaded(info: CheckpointInfo, tensors: dict[str, torch.Tensor]) -> torch.nn.Module:
    model = build_model(info)
    model.load_state_dict(tensors)
    return model.eval()


@torch.no_grad()
def measure_receptive_radius(model: torch.nn.Module, scale: int, bound: int, multiple: int = 1) -> int:
    """How many LR px away one changed input pixel still changes the output: a column 8 px wide and tall
    enough for `bound` on both sides, run twice, its centre pixel raised by 1 the second time (fp32; a
    strip narrower than 8 px, or one row high, shows less: fewer paths, and oneDNN is slow on it). A
    plain network, whose output depends only on a neighbourhood, is measured; the tiler's overlap must
    cover what this finds."""
    height = -(-(2 * bound + 9) // multiple) * multiple
    width = -(-8 // multiple) * multiple
    centre = height // 2
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    changed = image.clone()
    changed[0, :, centre, width // 2] += 1.0
    difference = (model(changed) - model(image)).abs().sum(dim=(0, 1, 3))
    rows = torch.nonzero(difference > 0).flatten()
    if rows.numel() == 0:
        return 0
    return int(max(abs(int(rows.min()) // scale - centre), abs(int(rows.max()) // scale - centre)))


def _model_name(path: Path) -> str:
    """A name `-m` can take: the file's stem in lower case, other characters as `_`."""
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in path.stem.lower())
    return stem or "converted"


def write_converted(out: Path, info: CheckpointInfo, tensors: dict[str, torch.Tensor], overwrite: bool = False) -> None:
    """Write a converted checkpoint atomically; FileExistsError when `out` exists and `overwrite` is off."""
    data = save(tensors, metadata=info.to_metadata())
    write_atomically(out, lambda handle: handle.write(data), overwrite=overwrite)


def cache_dir() -> Path:
    """Where `--model FILE.pth` keeps its in-memory conversions, by the file's digest."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "upscale" / "converted"


def cached_conversion(path: Path) -> Path:
    """Our checkpoint for a foreign model file, converted once and cached by the file's sha256."""
    target = cache_dir() / f"{sha256_of(path)[:32]}.safetensors"
    if not target.exists():
        info, tensors = convert(path)
        write_converted(target, info, tensors, overwrite=True)
    return target


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
