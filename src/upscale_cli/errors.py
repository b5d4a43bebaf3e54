"""Exit codes and the typed errors that the CLI turns into one-line messages at a single boundary."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; scripts can rely on them."""

    OK = 0
    SOME_FAILED = 1  # at least one input failed; the others were written
    USAGE = 2  # Click's own code for bad options
    MODEL = 3  # the model or checkpoint cannot be loaded or run
    INTERNAL = 70  # a bug in upscale (EX_SOFTWARE); --verbose shows the traceback
    INTERRUPTED = 130  # 128 + SIGINT
    TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the process is, so that it unwinds exactly as Ctrl-C does (temporary files
    removed, the summary printed) and exits 143."""


class UpscaleError(Exception):
    """Base of every error that is the user's to fix; the CLI prints its message on one line."""

    exit_code: ExitCode = ExitCode.SOME_FAILED


class ImageReadError(UpscaleError):
    """An input file cannot be decoded (missing, empty, truncated, too large, not an image)."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class ImageWriteError(UpscaleError):
    """An output cannot be written (exists already, bad format, disk error)."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class StopBatch(ImageWriteError):
    """A write failed as every later one would (a full disk, a closed or full standard output): the
    batch stops there instead of computing the remaining images only to fail each write."""


class InputError(UpscaleError):
    """A model's extra input given by the user cannot be used (a prior of the wrong size, format or values)."""


class CheckpointError(UpscaleError):
    """A checkpoint is unreadable, inconsistent or names an unknown architecture."""

    exit_code = ExitCode.MODEL


class ModelNotFoundError(CheckpointError):
    """A model name has no weights file, or a path does not exist."""


class InferenceError(UpscaleError):
    """Running the model failed in a way no retry can fix (out of memory at the minimum tile, NaN in fp32)."""

    exit_code = ExitCode.MODEL
