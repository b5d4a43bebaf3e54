"""The one atomic writer: images, checkpoints and training states reach their final name whole or not at all.

The bytes go to ".{name}.XXXX.tmp" in the target's folder, are fsynced, then published by a rename
(overwrite) or a hard link that fails if the target exists (no overwrite, race-free); on file systems
without hard links an exclusively created placeholder is renamed over instead. On any failure,
Ctrl-C included, the temporary file is removed. No torch here: `upscale --help` may import it.
"""

from __future__ import annotations

import os
import secrets
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object], overwrite: bool = True) -> None:
    """Write a file through `write(handle)` atomically; FileExistsError when `overwrite` is off and `path`
    exists, OSError for the file system's own failures."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = _create_temporary(target)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temporary, target)
        else:
            _publish_new(temporary, target)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(temporary)


def _create_temporary(target: Path) -> tuple[int, Path]:
    """Create ".{name}.XXXX.tmp" next to `target` exclusively; its permissions follow the umask like any new file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        with suppress(FileExistsError):
            return os.open(temporary, flags, 0o666), temporary


def _publish_new(temporary: Path, target: Path) -> None:
    """Give the written file the target's name, failing with FileExistsError if the target exists.

    A hard link does this atomically. File systems without hard links (FAT, exFAT, some network
    shares) get an exclusively created empty placeholder that the rename then replaces.
    """
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise
    except OSError:
        _replace_placeholder(temporary, target)


def _replace_placeholder(temporary: Path, target: Path) -> None:
    """Claim `target` by creating it empty and exclusively (FileExistsError if it exists), then rename onto it."""
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        os.replace(temporary, target)
    except BaseException:
        os.unlink(target)
        raise
