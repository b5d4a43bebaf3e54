"""Finished images are encoded and written on one background thread while the next image is computed.

PNG encoding was 7% of a folder of 256 px photos run x4 on two cores (#26). Pillow's encoder releases
the GIL, so it fills the gaps that the network's threads leave. Outcomes are still reported in input
order. Only one write waits at a time, so one finished output at most is held beside the image being made;
outputs larger than `BACKGROUND_PIXELS`, and those going to standard output, are written in the foreground.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Callable, Union

from upscale_cli.cli.batch import Outcome, Reporter
from upscale_cli.cli.progress import BatchProgress
from upscale_cli.errors import StopBatch

BACKGROUND_PIXELS = 4096 * 4096  # 48 MiB of 8-bit RGB held while the next image runs


@dataclass(frozen=True)
class Write:
    """A write running on the background thread, and where it goes."""

    path: Path
    future: Future[Outcome]


Pending = Union[Outcome, Write]


class OrderedWrites:
    """Runs each job's write on a background thread and reports the outcomes in the order jobs came."""

    def __init__(self, report: Reporter, progress: BatchProgress) -> None:
        self.report, self.progress = report, progress
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="upscale-write")
        self._waiting: Write | None = None

    def __enter__(self) -> OrderedWrites:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        """Report the write still waiting (it runs to the end: files are written whole or not at all)."""
        try:
            if exc is None:
                self._report_waiting()
            else:
                with suppress(StopBatch):  # already unwinding: the error in flight wins
                    self._report_waiting()
        finally:
            self._pool.shutdown(wait=True)

    def later(self, finish: Callable[[], Outcome], path: Path | None, pixels: int) -> Pending:
        """`finish` (encode and write to `path`) on the background thread, or at once when the output goes
        to standard output or is too large to hold. The write before it is reported first: one that stops
        the batch (a full disk) stops it before this write starts, as if this image had not been reached."""
        self._report_waiting()
        if path is None or pixels > BACKGROUND_PIXELS:
            return finish()
        return Write(path, self._pool.submit(finish))

    def settle(self, path: Path | None) -> None:
        """Wait for the waiting write if it goes to `path`, so that an existing-output check sees it."""
        if path is not None and self._waiting is not None and self._waiting.path == path:
            self._report_waiting()

    def add(self, result: Pending) -> None:
        """Report `result` after every earlier job; a write still running is reported when the next comes."""
        self._report_waiting()
        if isinstance(result, Write):
            self._waiting = result
        else:
            self._report(result)

    def _report_waiting(self) -> None:
        if self._waiting is not None:
            write, self._waiting = self._waiting, None
            self._report(write.future.result())

    def _report(self, outcome: Outcome) -> None:
        self.report.add(outcome)
        self.progress.advance_file()
