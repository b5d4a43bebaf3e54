"""Pieces shared by the subcommands: stderr output and the error boundary."""

from __future__ import annotations

import signal
import sys
import traceback
from typing import Callable, NoReturn

import click

from upscale_cli.errors import ExitCode, Terminated, UpscaleError


def echo_err(message: str) -> None:
    """Status and errors go to stderr; stdout is kept for results (JSON, image bytes)."""
    click.echo(message, err=True)


def visible(text: str) -> str:
    """`text` with control characters (newlines, escapes, carriage returns, ...) written as escapes."""
    return "".join(char if char.isprintable() or char == " " else char.encode("unicode_escape").decode("ascii")
                   for char in text)


def fail(exc: BaseException, verbose: bool, code: int) -> NoReturn:
    """Print `exc` as one line (a traceback too with --verbose) and exit with `code`."""
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    echo_err(visible(f"error: {exc}"))
    sys.exit(code)


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def run_guarded(body: Callable[[], int | None], verbose: bool) -> None:
    """Run a command body; typed errors become one-line messages with their exit code. SIGTERM is
    handled like Ctrl-C (`Terminated`) while it runs."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        code = body()
    except UpscaleError as exc:
        fail(exc, verbose, int(exc.exit_code))
    except Terminated:
        echo_err("terminated")
        sys.exit(int(ExitCode.TERMINATED))
    except KeyboardInterrupt:
        echo_err("interrupted")
        sys.exit(int(ExitCode.INTERRUPTED))
    except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except Exception as exc:  # a bug: one line for the user, the traceback with --verbose
        if verbose:
            traceback.print_exception(exc, file=sys.stderr)
        hint = "" if verbose else " (rerun with --verbose for the traceback)"
        echo_err(f"error: internal error: {type(exc).__name__}: {exc}".splitlines()[0] + hint)
        sys.exit(int(ExitCode.INTERNAL))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(int(code or 0))
