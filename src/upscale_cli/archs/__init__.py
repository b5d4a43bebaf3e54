"""The explicit registry of architectures: id -> descriptor, read from the catalog's modules on first use.

Modules are imported on first use so `upscale --help` never pays for torch. `register` adds an
architecture that is not in the catalog (a plugin, or a test's own model) for this process.
"""

from __future__ import annotations

import importlib

from upscale_cli.archs.base import ModelDescriptor
from upscale_cli.archs.catalog import architecture_modules

_REGISTERED: dict[str, ModelDescriptor] = {}


def architecture_ids() -> list[str]:
    """Every architecture id: the catalog's, then those registered at run time."""
    return list(dict.fromkeys([*architecture_modules(), *_REGISTERED]))


def get_architecture(arch_id: str) -> ModelDescriptor:
    """The descriptor registered under `arch_id`; KeyError names the known ones."""
    if arch_id in _REGISTERED:
        return _REGISTERED[arch_id]
    modules = architecture_modules()
    if arch_id not in modules:
        raise KeyError(f"unknown architecture {arch_id!r} (known: {', '.join(architecture_ids())})")
    return importlib.import_module(modules[arch_id]).DESCRIPTOR


def register(descriptor: ModelDescriptor) -> None:
    """Make `descriptor` loadable by its id in this process; an id already known is refused."""
    if descriptor.id in architecture_ids():
        raise ValueError(f"architecture {descriptor.id!r} is registered already")
    _REGISTERED[descriptor.id] = descriptor


def unregister(arch_id: str) -> None:
    """Forget an architecture added with `register` (catalog architectures stay)."""
    _REGISTERED.pop(arch_id, None)
