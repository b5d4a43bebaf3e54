"""Background writes (#26): a finished image is encoded and written while the next one is read and run, and
the batch still reports every file once, in input order, with nothing lost when it stops early."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

import upscale_cli.image_io as image_io
from conftest import smooth_image
from upscale_cli.cli import cli, pipeline


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def folder_of(tmp_path: Path, count: int) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(count):
        Image.fromarray(smooth_image(12, 12, i)).save(folder / f"{i}.png")
    return folder


def records(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_a_write_runs_while_the_next_image_is_read_and_outcomes_keep_input_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = folder_of(tmp_path, 4)
    writers, overlapped = [], []
    read_image, write_atomically = image_io.read_image, image_io.write_atomically
    started_reading = [threading.Event() for _ in range(5)]

    def reading(source: Path, *args: object, **kwargs: object) -> object:
        started_reading[int(source.stem)].set()
        return read_image(source, *args, **kwargs)

    def writing(path: Path, *args: object, **kwargs: object) -> None:
        writers.append(threading.current_thread().name)
        index = int(path.stem.split("_")[0])
        if index < 3:  # the last image has no next one; a write in the foreground would wait here in vain
            overlapped.append(started_reading[index + 1].wait(timeout=30))
        write_atomically(path, *args, **kwargs)

    monkeypatch.setattr(image_io, "read_image", reading)
    monkeypatch.setattr(image_io, "write_atomically", writing)
    result = invoke(folder, "-m", "bicubic", "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    assert overlapped == [True] * 3 and all(name.startswith("upscale-write") for name in writers)
    rows = records(result.output)
    assert [Path(row["input"]).name for row in rows[:-1]] == ["0.png", "1.png", "2.png", "3.png"]
    assert rows[-1]["summary"]["ok"] == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{i}_x4.png" for i in range(4)]
    assert all(Image.open(tmp_path / "out" / f"{i}_x4.png").size == (48, 48) for i in range(4))


def test_an_output_named_like_the_write_still_running_waits_for_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(smooth_image(12, 12, 0)).save(folder / "a.png")
    Image.fromarray(smooth_image(12, 12, 1)).save(folder / "a.bmp")  # both become a_x4.png
    write_atomically = image_io.write_atomically

    def slow(path: Path, *args: object, **kwargs: object) -> None:
        time.sleep(0.5)  # the second image is read and run meanwhile
        write_atomically(path, *args, **kwargs)

    monkeypatch.setattr(image_io, "write_atomically", slow)
    result = invoke(folder, "-m", "bicubic", "-o", tmp_path / "out", "--skip-existing", "--json")
    assert result.exit_code == 0, result.output
    first, second = records(result.output)[:2]
    # skipped as existing (no other reason given), not as "finished by another process" after a second run
    assert (first["status"], second["status"], second.get("skipped")) == ("ok", "skipped", None)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_x4.png"]


def test_an_interrupt_lets_the_running_write_finish_and_counts_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder = folder_of(tmp_path, 3)
    read_image = image_io.read_image

    def interrupted_at_the_second(source: Path, *args: object, **kwargs: object) -> object:
        if source.name == "1.png":
            raise KeyboardInterrupt
        return read_image(source, *args, **kwargs)

    monkeypatch.setattr(image_io, "read_image", interrupted_at_the_second)
    result = CliRunner().invoke(cli, [str(folder), "-m", "bicubic", "-o", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "stopped early: interrupted; 1 ok" in result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["0_x4.png"]
    assert Image.open(tmp_path / "out" / "0_x4.png").size == (48, 48)


def test_outputs_too_large_to_hold_are_written_in_the_foreground(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    folder = folder_of(tmp_path, 2)
    writers = []
    write_atomically = image_io.write_atomically

    def writing(path: Path, *args: object, **kwargs: object) -> None:
        writers.append(threading.current_thread().name)
        write_atomically(path, *args, **kwargs)

    monkeypatch.setattr(image_io, "write_atomically", writing)
    monkeypatch.setattr(pipeline, "BACKGROUND_PIXELS", 47 * 47)  # each output is 48 x 48
    result = invoke(folder, "-m", "bicubic", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert writers == ["MainThread", "MainThread"]
