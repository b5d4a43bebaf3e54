"""Progress bars on stderr: files of a batch (with ETA and megapixels/s) and tiles of the current image."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any


class BatchProgress:
    """A rich progress display, or nothing at all when disabled (not a terminal, or --quiet)."""

    def __init__(self, total_files: int, enabled: bool) -> None:
        self.enabled = enabled
        self.total_files = total_files
        self.megapixels = 0.0
        self.started = time.perf_counter()
        self._progress: Any = None
        self._files: Any = None
        self._tiles: Any = None

    def __enter__(self) -> BatchProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True)
            self._progress.start()
            self._files = self._progress.add_task("files", total=self.total_files, rate="")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._progress is not None:
            self._progress.stop()

    def print(self, message: str) -> None:
        """Print a line above the live bars (plain stderr when the bars are off)."""
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            from upscale_cli.cli.common import echo_err

            echo_err(message)

    def start_image(self, label: str, pixels: int) -> None:
        if self._progress is None:
            return
        if self._tiles is not None:
            self._progress.remove_task(self._tiles)
        self._tiles = self._progress.add_task(f"  {label[-40:]}", total=None, rate="")

    def tile_done(self, done: int, total: int) -> None:
        if self._progress is not None and self._tiles is not None:
            self._progress.update(self._tiles, completed=done, total=total)

    def image_done(self, output_pixels: int) -> None:
        self.megapixels += output_pixels / 1e6
        if self._progress is not None:
            rate = self.megapixels / max(1e-9, time.perf_counter() - self.started)
            self._progress.update(self._files, rate=f"{rate:.2f} MP/s")

    def advance_file(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._files)
