"""The explicit registry of architectures: id -> module that defines `ARCHITECTURE`.

Modules are imported on first use so `upscale --help` never pays for torch.
"""

from __future__ import annotations

import importlib

from upscale_cli.archs.base import Architecture

_MODULES: dict[str, str] = {
    "srresnet": "upscale_cli.archs.srresnet",
    "srflow": "upscale_cli.archs.srflow",
}


def get_architecture(arch_id: str) -> Architecture:
    """The architecture registered under `arch_id`; KeyError names the known ones."""
    if arch_id not in _MODULES:
        raise KeyError(f"unknown architecture {arch_id!r} (known: {', '.join(_MODULES)})")
    return importlib.import_module(_MODULES[arch_id]).ARCHITECTURE
