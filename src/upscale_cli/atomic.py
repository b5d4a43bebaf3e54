"""The one atomic writer: images, checkpoints and training states reach their final name whole or not at all.

The bytes go to a temporary file in the target's folder (`temporary_name`: it names the host and the
process that owns it, and never exceeds the file system's name limit when the target's name fits), are
fsynced, then published by a rename (overwrite) or by a hard link that fails if the target exists (no
overwrite, race-free). File systems without hard links (FAT, exFAT, some network shares) get a rename
that refuses an existing target (Linux's renameat2 RENAME_NOREPLACE; Windows' rename does so itself), so
the final name only ever holds a complete file. On any failure, Ctrl-C included, the temporary file is
removed; `stale_temporaries` finds those of killed processes. No torch here: `upscale --help` may import it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import socket
import zlib
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO, Callable

_HOST = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFF:04x}"  # tells this machine's files on shared folders
_TEMPORARY = re.compile(r"^\..*\.upscale-(?P<host>[0-9a-f]{4})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
_NAME_MAX_FALLBACK = 255


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


def temporary_name(target_name: str, name_max: int = _NAME_MAX_FALLBACK) -> str:
    """".{target_name}.upscale-HOST-PID-RANDOM.tmp", with `target_name` shortened (at a character
    boundary) as far as the name limit of `name_max` bytes requires."""
    suffix = f".upscale-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    room = name_max - 1 - len(suffix.encode())
    stem = target_name.encode()[:room].decode(errors="ignore")
    return f".{stem}{suffix}"


def stale_temporaries(folder: Path) -> list[Path]:
    """Temporary files of ours in `folder` whose process (on this host) is gone: what a killed run left."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    stale = []
    for name in names:
        match = _TEMPORARY.match(name)
        if match and match["host"] == _HOST and not _process_alive(int(match["pid"])):
            stale.append(folder / name)
    return stale


def being_written(target: Path) -> bool:
    """Whether a live process (of this host, or of another one sharing the folder) is writing `target` now."""
    try:
        names = os.listdir(target.parent)
    except OSError:
        return False
    name_max = _name_max(target.parent)
    for name in names:
        match = _TEMPORARY.match(name)
        stem = name[1 : name.rfind(".upscale-")]
        shortened = len(name.encode()) > name_max - 4 and target.name.startswith(stem)  # `temporary_name` cut it
        if match and (stem == target.name or shortened) and (match["host"] != _HOST or _process_alive(int(match["pid"]))):
            return True
    return False


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # alive under another user, or not ours to ask about
        return True
    return True


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # Windows has no pathconf
        return _NAME_MAX_FALLBACK


def _create_temporary(target: Path) -> tuple[int, Path]:
    """Create the temporary file next to `target` exclusively; its permissions follow the umask like any new file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    name_max = _name_max(target.parent)
    while True:
        temporary = target.with_name(temporary_name(target.name, name_max))
        with suppress(FileExistsError):
            return os.open(temporary, flags, 0o666), temporary


def _publish_new(temporary: Path, target: Path) -> None:
    """Give the written file the target's name, failing with FileExistsError if the target exists.

    A hard link does this atomically; without hard links, a rename that refuses an existing target.
    """
    try:
        os.link(temporary, target)
    except FileExistsError:
        raise
    except OSError:
        rename_no_replace(temporary, target)


def rename_no_replace(source: Path, target: Path) -> None:
    """Rename `source` to `target`, FileExistsError if `target` exists, never replacing it. Linux: renameat2
    with RENAME_NOREPLACE; Windows: its rename refuses existing targets. Elsewhere (or where the file system
    refuses the flag) an existence check just before the rename, which only a concurrent writer of the same
    name at the same instant can race."""
    if os.name == "nt":
        os.rename(source, target)
        return
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        at_cwd, no_replace = -100, 1
        if renameat2(at_cwd, os.fsencode(source), at_cwd, os.fsencode(target), no_replace) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), str(target))
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(target))
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)
