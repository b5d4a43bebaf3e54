"""Named models: which weights file a name like `srgan` means, and where shipped weights live.

A model name is a weights family (an entry of `archs/catalog.py`, or any other name) whose files are `{name}_x{scale}.safetensors`
in the weights folders; `bicubic` is the built-in baseline with no weights. Anything that looks like
a path (has a `.safetensors` suffix or a slash) is a user's own checkpoint.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from upscale_cli.archs.catalog import CATALOG, entry
from upscale_cli.errors import ModelNotFoundError

BICUBIC = "bicubic"
_WEIGHTS_FILE = re.compile(r"^(?P<name>[a-z0-9_-]+?)_x(?P<scale>\d+)\.safetensors$")


def user_models_dir() -> Path:
    """The user's own models (what `upscale convert` writes by default): $XDG_DATA_HOME/upscale/models."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "upscale" / "models"


def weights_dirs() -> list[Path]:
    """Folders searched for named weights: $UPSCALE_WEIGHTS, the installed and the source-tree copies, then
    the user models folder (shipped names win over a user's file of the same name)."""
    dirs = []
    if os.environ.get("UPSCALE_WEIGHTS"):
        dirs.append(Path(os.environ["UPSCALE_WEIGHTS"]))
    package = Path(__file__).resolve().parent
    dirs.append(package / "weights")  # installed: weights/ is packaged as upscale_cli/weights
    dirs.append(package.parent.parent / "weights")  # editable install / source checkout
    dirs.append(user_models_dir())
    return [d for d in dirs if d.is_dir()]


@dataclass(frozen=True)
class WeightsFile:
    name: str
    scale: int
    path: Path


def shipped_weights() -> list[WeightsFile]:
    """Every `{name}_x{scale}.safetensors` in the weights folders (earlier folders win)."""
    found: dict[tuple[str, int], WeightsFile] = {}
    for folder in weights_dirs():
        for path in sorted(folder.glob("*.safetensors")):
            match = _WEIGHTS_FILE.match(path.name)
            if match:
                key = (match["name"], int(match["scale"]))
                found.setdefault(key, WeightsFile(key[0], key[1], path))
    return list(found.values())


def weights_task(path: Path) -> str | None:
    """The task of the model in a weights file (from its architecture's descriptor), None if unreadable."""
    from upscale_cli.archs import get_architecture
    from upscale_cli.checkpoint import read_info
    from upscale_cli.errors import CheckpointError

    try:
        return get_architecture(read_info(path).arch).task
    except (CheckpointError, KeyError):
        return None


MODEL_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")


def looks_like_path(spec: str) -> bool:
    return spec.lower().endswith(MODEL_FILE_SUFFIXES) or os.sep in spec or "/" in spec or Path(spec).is_file()


def find_weights(name: str, scale: float | None) -> Path:
    """The weights file for model `name`: the native scale closest above the request, else the largest."""
    candidates = sorted((w for w in shipped_weights() if w.name == name), key=lambda w: w.scale)
    if not candidates:
        known_entry = entry(name)
        if known_entry is not None:
            how = f"train it with `upscale train --model {name}` or " if known_entry.recipe_module else ""
            raise ModelNotFoundError(
                f"model {name!r}: no weights file ({name}_x4.safetensors) in "
                f"{', '.join(str(d) for d in weights_dirs()) or 'any weights folder'}; "
                f"{how}pass --model PATH")
        known = sorted({BICUBIC, *(e.name for e in CATALOG), *(w.name for w in shipped_weights())})
        raise ModelNotFoundError(f"unknown model {name!r} (known: {', '.join(known)}; or a .safetensors path)")
    if scale is None:
        return candidates[-1].path
    exact = [w for w in candidates if w.scale == scale]
    above = [w for w in candidates if w.scale >= scale]
    return (exact or above or candidates[-1:])[0].path


def weights_digest(path: Path) -> str:
    """The first 8 hex digits of the SHA-256 of a checkpoint's tensor data: names the weights themselves,
    unchanged when `record_metrics` rewrites the metadata in the header."""
    import hashlib

    with open(path, "rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + header_length)
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:8]
