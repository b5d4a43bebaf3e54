"""Issue #27: under faults, hostile files and odd options, nothing is lost, nothing lands where it should
not, and every failure says what went wrong. One test (or more) per item; each fails without its guard."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import smooth_image
from upscale_cli.cli import cli
from upscale_cli.errors import ExitCode


def invoke(*args: object, input: bytes | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


def write_png(path: Path, size: int = 16, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_image(size, size, seed)).save(path, format="PNG")
    return path


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# ----- 1. name templates stay inside the output folder --------------------------------------------

@pytest.mark.parametrize("template", ["../{stem}.png", "/tmp/upscale_escape_{stem}.png", "{stem.__class__}.png",
                                      "{stem:>300}.png", "{stem!r}.png", "{0}.png", "{}.png", "a/../../{stem}.png"])
def test_name_templates_cannot_leave_the_output_folder(tmp_path: Path, template: str) -> None:
    source = write_png(tmp_path / "in" / "a.png")
    before = all_files(tmp_path)
    result = invoke(source, "-m", "bicubic", "-o", tmp_path / "out", "--name", template)
    assert result.exit_code == ExitCode.USAGE and "--name" in result.output
    assert all_files(tmp_path) == before and not Path("/tmp/upscale_escape_a.png").exists()


def test_a_stem_that_makes_dot_dot_is_refused_per_file(tmp_path: Path) -> None:
    source = write_png(tmp_path / "in" / "...png")  # its stem is ".."
    result = invoke(source, "-m", "bicubic", "-o", tmp_path / "out" / "deep", "--name", "{stem}/{model}.{ext}")
    assert result.exit_code == ExitCode.SOME_FAILED and "inside the output folder" in result.output
    assert not (tmp_path / "out" / "bicubic.png").exists()


# ----- 5. stdin into a folder ---------------------------------------------------------------------

@pytest.mark.parametrize("trailing", ["/", ""])
def test_stdin_into_a_folder_writes_stdin_x4(tmp_path: Path, trailing: str) -> None:
    data = write_png(tmp_path / "a.png").read_bytes()
    folder = tmp_path / "results"
    if not trailing:
        folder.mkdir()
    result = invoke("-", "-m", "bicubic", "-o", f"{folder}{trailing}", input=data)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["stdin_x4.png"]


# ----- 6. an output folder inside a recursive input tree is not input -----------------------------

def test_rerun_does_not_upscale_outputs_inside_the_input_tree(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write_png(tree / "a.png")
    write_png(tree / "sub" / "b.png", seed=1)
    for _ in range(2):
        result = invoke(tree, "-r", "-m", "bicubic", "-o", tree / "out", "--skip-existing", "--json")
        assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[-1]["summary"]["skipped"] == 2 and len(records) == 3
    assert all_files(tree) == {"a.png", "sub/b.png", "out/a_x4.png", "out/sub/b_x4.png"}


# ----- 17. odd option values are usage errors before any work -------------------------------------

@pytest.mark.parametrize("args, message", [
    (("-x", "nan"), "finite"), (("-x", "inf"), "finite"), (("-x", "0.5"), ">= 1"),
    (("--tile-overlap", "5000"), "--tile-overlap"), (("--threads", "100000"), "--threads"),
    (("--device", "tpu"), "not a device"), (("--device", "cuda:x"), "not a device"),
])
def test_odd_options_are_usage_errors(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    source = write_png(tmp_path / "a.png")
    result = invoke(source, "-m", "bicubic", "-o", tmp_path / "out.png", *args)
    assert result.exit_code == ExitCode.USAGE and message in result.output
    assert not (tmp_path / "out.png").exists()


def test_a_large_overlap_with_auto_tiles_runs(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """An overlap beyond what the auto tile would be gets a tile larger than the overlap, not a per-file error."""
    source = write_png(tmp_path / "a.png", size=40)
    result = invoke(source, "-m", tiny_checkpoint, "--tile-overlap", "600", "-o", tmp_path / "out.png")
    assert result.exit_code == 0, result.output


# ----- 18. control characters in file names are escaped -------------------------------------------

def test_control_characters_in_names_cannot_forge_report_lines(tmp_path: Path) -> None:
    bad = tmp_path / "x\nwrote forged.png\x1b[2K.png"
    bad.write_bytes(b"not an image")
    result = invoke(bad, "-m", "bicubic", "-o", tmp_path / "out")
    assert result.exit_code == ExitCode.SOME_FAILED
    assert not any(line.startswith("wrote") for line in result.output.splitlines())
    assert "\x1b" not in result.output and "x\\nwrote forged.png\\x1b[2K.png" in result.output


# ----- 19. globs and folders never follow link loops, and take each file once ---------------------

def test_globs_do_not_follow_symlink_loops_and_take_each_file_once(tmp_path: Path) -> None:
    write_png(tmp_path / "d" / "a.png")
    (tmp_path / "d" / "loop").symlink_to("..")
    (tmp_path / "d" / "root").symlink_to("/")
    (tmp_path / "d" / "same.png").symlink_to("a.png")
    code = textwrap.dedent(f"""
        from upscale_cli.cli.batch import expand_inputs
        jobs, missing = expand_inputs(({str(tmp_path / 'd' / '**' / '*.png')!r}, {str(tmp_path / 'd')!r}), None, True)
        print(len(jobs), len(missing))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["1", "0"]


# ----- 11, 12. checkpoints checked against their header before anything is allocated -------------

def checkpoint_with(tmp_path: Path, config: dict, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A file in our format whose metadata claims `config` and which holds `tensors` (a tiny model's by default)."""
    from safetensors.torch import save_file

    from upscale_cli.archs.srresnet import SRResNet, SRResNetConfig

    if tensors is None:
        tensors = SRResNet(SRResNetConfig(channels=8, blocks=1)).state_dict()
    path = tmp_path / "hostile.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={
        "format": "upscale-cli", "format_version": "1", "arch": "srresnet", "scale": "4",
        "config": json.dumps({"scale": 4, **config})})
    return path


@pytest.mark.parametrize("config, message", [
    ({"channels": 10**7}, "expected an int in [0, 4096]"), ({"blocks": -1}, "expected an int"),
    ({"channels": "64"}, "expected an int"), ({"norm": ["batch"]}, "expected a string"),
])
def test_config_values_are_checked_before_building(tmp_path: Path, config: dict, message: str) -> None:
    source = write_png(tmp_path / "a.png")
    result = invoke(source, "-m", checkpoint_with(tmp_path, config), "-o", tmp_path / "out.png")
    assert result.exit_code == ExitCode.MODEL and message in result.output


def test_a_config_asking_for_a_huge_network_is_refused_without_allocating(tmp_path: Path) -> None:
    """2048 channels x 16 blocks would be 4.8 GB of float32: the header check refuses it first."""
    path = checkpoint_with(tmp_path, {"channels": 2048, "blocks": 16})
    code = textwrap.dedent(f"""
        import resource, sys
        from upscale_cli.checkpoint import load_model
        from upscale_cli.errors import CheckpointError
        try:
            load_model({str(path)!r})
        except CheckpointError as exc:
            print("refused", "shape mismatches" in str(exc) and "missing tensors" in str(exc))
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    refused, peak_mib = done.stdout.splitlines()
    assert refused == "refused True" and int(peak_mib) < 1500


def test_integer_weights_are_refused_naming_the_tensor(tmp_path: Path) -> None:
    from upscale_cli.archs.srresnet import SRResNet, SRResNetConfig

    tensors = SRResNet(SRResNetConfig(channels=8, blocks=1)).state_dict()
    name = next(k for k, v in tensors.items() if v.dtype.is_floating_point)
    tensors[name] = tensors[name].round().to(torch.int32)
    source = write_png(tmp_path / "a.png")
    result = invoke(source, "-m", checkpoint_with(tmp_path, {"channels": 8, "blocks": 1}, tensors),
                    "-o", tmp_path / "out.png")
    assert result.exit_code == ExitCode.MODEL and f"tensor {name} is I32" in result.output
    assert not (tmp_path / "out.png").exists()


# ----- 4, 9. a full disk or a closed stdout stops the batch, never "wrote" -------------------------

def test_a_full_disk_stops_the_batch_at_the_first_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import upscale_cli.image_io as image_io

    for i in range(4):
        write_png(tmp_path / "in" / f"{i}.png", seed=i)
    attempts = []

    def full(path: object, write: object, overwrite: bool = True) -> None:
        attempts.append(path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(image_io, "write_atomically", full)
    result = invoke(tmp_path / "in", "-m", "bicubic", "-o", tmp_path / "out")
    assert result.exit_code == ExitCode.SOME_FAILED and len(attempts) == 1
    assert "stopped early: " in result.output and "cannot write: No space left on device; 1 failed" in result.output


def test_stdout_to_a_full_device_is_an_error(tmp_path: Path) -> None:
    source = write_png(tmp_path / "a.png")
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "upscale_cli", str(source), "-m", "bicubic", "-o", "-"],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == ExitCode.SOME_FAILED and "<stdout>: cannot write" in done.stderr
    assert "wrote" not in done.stderr


def test_a_reader_that_goes_away_is_an_error_not_a_short_stream(tmp_path: Path) -> None:
    """A buffered write to a pipe whose reader left returns a short count instead of failing: not "wrote"."""
    source = tmp_path / "big.png"
    Image.fromarray(smooth_image(300, 300, 5)).save(source)
    process = subprocess.Popen([sys.executable, "-m", "upscale_cli", str(source), "-m", "bicubic", "-o", "-"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=False)
    assert process.stdout is not None and process.stderr is not None
    assert len(process.stdout.read(10)) == 10
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == ExitCode.SOME_FAILED and "<stdout>: cannot write: Broken pipe" in stderr
    assert "wrote" not in stderr


def test_json_and_image_bytes_cannot_share_stdout(tmp_path: Path) -> None:
    result = invoke(write_png(tmp_path / "a.png"), "-m", "bicubic", "-o", "-", "--json")
    assert result.exit_code == ExitCode.USAGE and "--json" in result.output


# ----- 8. SIGTERM behaves like Ctrl-C -----------------------------------------------------------------

def test_sigterm_finishes_cleanly_with_a_summary(tmp_path: Path, tiny_checkpoint: Path) -> None:
    for i in range(40):
        write_png(tmp_path / "in" / f"{i:02d}.png", size=96, seed=i)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "upscale_cli", str(tmp_path / "in"), "-m", str(tiny_checkpoint),
                                "-o", str(out), "--tile", "32", "--threads", "1"],
                               stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.startswith("wrote"):
            process.send_signal(signal.SIGTERM)
            break
    rest = process.stderr.read()
    assert process.wait(timeout=60) == ExitCode.TERMINATED, "".join(lines) + rest
    assert "stopped early: terminated" in rest and rest.rstrip().endswith("terminated")
    written = sorted(out.iterdir())
    assert 1 <= len(written) < 40 and not [p for p in written if p.name.startswith(".")]
    for path in written:
        with Image.open(path) as image:
            image.load()
            assert image.size == (384, 384)


def test_sigterm_handler_is_restored_after_a_command(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    invoke(write_png(tmp_path / "a.png"), "-m", "bicubic", "-o", tmp_path / "out.png")
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.skipif(not hasattr(os, "getpgid"), reason="POSIX signals")
def test_terminated_is_a_keyboard_interrupt() -> None:
    """Every cleanup path written for Ctrl-C (temporary files, the training state) also runs on SIGTERM."""
    from upscale_cli.errors import Terminated

    assert issubclass(Terminated, KeyboardInterrupt)


# ----- 2, 3, 7. the atomic writer: name limits, no hard links, leftovers of killed runs ----------------

def test_a_name_that_fits_the_limit_is_written_despite_the_temporary_suffix(tmp_path: Path) -> None:
    from upscale_cli.image_io import write_image

    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    for name in ("a" * (limit - 4) + ".png", "\u00e9" * ((limit - 4) // 2) + ".png"):  # ASCII, and 2-byte characters
        assert len(name.encode()) <= limit
        write_image(tmp_path / name, b"data")
        assert (tmp_path / name).read_bytes() == b"data"
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "check-then-rename"])
def test_without_hard_links_the_final_name_only_ever_holds_a_whole_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, renameat2: bool) -> None:
    import upscale_cli.atomic as atomic
    from upscale_cli.image_io import write_image

    target = tmp_path / "out.png"
    opened, real_open = [], os.open

    def no_links(*_args: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    def spying_open(path: object, *args: object, **kwargs: object) -> int:
        opened.append(Path(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(os, "open", spying_open)
    if not renameat2:
        monkeypatch.setattr(atomic.ctypes, "CDLL", lambda *a, **k: object())  # a libc without renameat2
    write_image(target, b"whole file")
    assert target.read_bytes() == b"whole file" and target not in opened  # no placeholder at the final name
    with pytest.raises(Exception, match="exists"):
        write_image(target, b"second")
    assert target.read_bytes() == b"whole file" and sorted(os.listdir(tmp_path)) == ["out.png"]


def test_temporaries_of_killed_runs_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    import upscale_cli.atomic as atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".a_x4.png.upscale-{atomic._HOST}-{dead.pid}-0123abcd.tmp"
    live = out / f".b_x4.png.upscale-{atomic._HOST}-{os.getpid()}-0123abcd.tmp"
    elsewhere = out / ".c_x4.png.upscale-zzzz-1-0123abcd.tmp"  # not ours: another naming
    for path in (stale, live, elsewhere):
        path.write_bytes(b"partial")
    result = invoke(write_png(tmp_path / "a.png"), "-m", "bicubic", "-o", out)
    assert result.exit_code == 0 and f"removed {stale}" in result.output
    assert not stale.exists() and live.exists() and elsewhere.exists() and (out / "a_x4.png").exists()


# ----- 10. two processes with --skip-existing on one folder ---------------------------------------------

def test_a_file_another_process_finishes_meanwhile_is_a_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_png(tmp_path / "a.png")
    assert invoke(source, "-m", "bicubic", "-o", tmp_path / "winner").exit_code == 0
    finished = (tmp_path / "winner" / "a_x4.png").read_bytes()
    target = tmp_path / "out" / "a_x4.png"
    real_fsync = os.fsync

    def fsync_while_the_winner_publishes(fd: int) -> None:
        real_fsync(fd)
        if not target.exists():
            target.write_bytes(finished)

    monkeypatch.setattr(os, "fsync", fsync_while_the_winner_publishes)
    result = invoke(source, "-m", "bicubic", "-o", tmp_path / "out", "--skip-existing")
    assert result.exit_code == 0, result.output
    assert "skipped (finished by another process)" in result.output and target.read_bytes() == finished


def test_a_file_another_live_process_is_writing_is_skipped_with_a_note(tmp_path: Path) -> None:
    import upscale_cli.atomic as atomic

    source = write_png(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / f".a_x4.png.upscale-{atomic._HOST}-{writer.pid}-0123abcd.tmp").write_bytes(b"partial")
        result = invoke(source, "-m", "bicubic", "-o", out, "--skip-existing")
    finally:
        writer.kill()
        writer.wait()
    assert result.exit_code == 0 and "skipped (being written by another process)" in result.output
    assert not (out / "a_x4.png").exists()


# ----- 13, 14, 16. damaged, endless and oversized inputs; a corrupt EXIF block ---------------------------

def jpeg_bytes(size: int = 128, **save: object) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(smooth_image(size, size, 3)).save(buffer, "JPEG", quality=90, **save)
    return buffer.getvalue()


@pytest.mark.parametrize("progressive", [False, True])
def test_a_tiny_jpeg_whose_header_claims_a_large_size_is_refused(progressive: bool) -> None:
    import struct

    from upscale_cli.errors import ImageReadError
    from upscale_cli.image_io import read_image

    data = jpeg_bytes(progressive=progressive)
    frame = data.index(b"\xff\xc2" if progressive else b"\xff\xc0")
    forged = bytearray(data[: data.index(b"\xff\xda") + 60] + b"\xff\xd9")  # headers, a sliver of scan, EOI
    forged[frame + 5 : frame + 9] = struct.pack(">HH", 3000, 4000)
    with pytest.raises(ImageReadError, match="premature end of data segment"):
        read_image(bytes(forged))
    assert read_image(data).width == 128  # the genuine file reads


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_a_jpeg_cut_anywhere_with_an_end_marker_appended_is_refused(progressive: bool, mode: str) -> None:
    import io

    from upscale_cli.errors import ImageReadError
    from upscale_cli.image_io import read_image

    buffer = io.BytesIO()
    Image.fromarray(smooth_image(128, 128, 3)).convert(mode).save(buffer, "JPEG", quality=90, progressive=progressive)
    data = buffer.getvalue()
    scan = data.index(b"\xff\xda")
    for cut in range(scan + 40, len(data) - 16, (len(data) - scan) // 7):  # within a scan or between two
        with pytest.raises(ImageReadError, match="truncated or corrupt image data"):
            read_image(data[:cut] + b"\xff\xd9")
    assert read_image(data).width == 128


def test_extraneous_bytes_before_the_end_marker_are_not_refused() -> None:
    """libjpeg warns about them too, but every pixel decodes: such files (some cameras write them) read."""
    from upscale_cli.image_io import read_image

    data = jpeg_bytes(progressive=True)
    assert read_image(data[:-2] + b"\x00\x11\x22" + data[-2:]).width == 128


class EndlessStream:
    """A binary stream of `head` then zeros forever, counting what was read."""

    def __init__(self, head: bytes) -> None:
        self.head, self.read_bytes = head, 0

    def read(self, size: int = -1) -> bytes:
        assert size > 0, "an unbounded read of an endless stream"
        block = (self.head + bytes(size))[:size] if self.read_bytes == 0 else bytes(size)
        self.read_bytes += len(block)
        return block


def test_endless_streams_are_refused_within_a_bounded_read() -> None:
    from upscale_cli.errors import ImageReadError
    from upscale_cli.image_io import byte_limit, read_image

    zeros = EndlessStream(b"")
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(zeros, name="<stdin>")
    assert zeros.read_bytes <= 1 << 20
    png_then_zeros = EndlessStream(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ImageReadError, match="more than any image within the pixel limit"):
        read_image(png_then_zeros, max_pixels=10_000, name="<stdin>")
    assert png_then_zeros.read_bytes <= byte_limit(10_000) + 1


def test_a_header_that_declares_too_many_pixels_is_refused_from_the_first_block() -> None:
    from upscale_cli.errors import ImageReadError
    from upscale_cli.image_io import read_image

    stream = EndlessStream(jpeg_bytes(size=256))
    with pytest.raises(ImageReadError, match="above the limit"):
        read_image(stream, max_pixels=1000, name="<stdin>")
    assert stream.read_bytes <= 1 << 20


def test_a_huge_sparse_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "sparse.png"
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n")
        handle.truncate(1 << 40)  # a terabyte, no blocks on disk
    result = invoke(path, "-m", "bicubic", "-o", tmp_path / "out.png", "--max-pixels", "1000000")
    assert result.exit_code == ExitCode.SOME_FAILED and f"{1 << 40} bytes: more than any image" in result.output


def test_a_corrupt_exif_block_is_dropped_with_a_note_and_the_tag_kept(tmp_path: Path) -> None:
    from upscale_cli.image_io import software_tag

    source = tmp_path / "camera.jpg"
    Image.fromarray(smooth_image(16, 16, 1)).save(source, exif=b"Exif\x00\x00II*\x00\xff\xff\x00\x00broken")
    done = subprocess.run([sys.executable, "-m", "upscale_cli", str(source), "-m", "bicubic", "-o",
                           str(tmp_path / "out.jpg")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "its EXIF block is corrupt and was dropped" in done.stderr and "Warning" not in done.stderr
    assert (software_tag(tmp_path / "out.jpg") or "").startswith("upscale ")


# ----- 15. the MATLAB resize: memory follows the output, the cache is bounded by bytes ------------------

def test_resizing_a_thin_strip_costs_no_dense_matrix() -> None:
    """A 2 x 100,000 strip x4: a dense (out x in) float64 matrix would be 320 GB; the banded one is ~10 MB."""
    from upscale_cli.resize import imresize

    strip = torch.linspace(0, 1, 100_000, dtype=torch.float64).expand(1, 2, -1)
    wide = imresize(strip, scale=4)
    assert wide.shape == (1, 8, 400_000)
    assert torch.allclose(wide[0, 0, 1000:-1000], torch.linspace(0, 1, 400_000, dtype=torch.float64)[1000:-1000],
                          atol=1e-5)  # a ramp stays a ramp away from the mirrored ends


def test_the_resize_cache_stays_within_its_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    import upscale_cli.resize as resize

    monkeypatch.setattr(resize, "CACHE_BYTES", 1 << 20)
    monkeypatch.setattr(resize, "_cache", type(resize._cache)())
    for width in range(1000, 1060):  # a batch of images of many sizes
        resize.imresize(torch.zeros(1, 4, width), scale=4)
    assert sum(resize._matrix_bytes(m) for m in resize._cache.values()) <= 1 << 20
    assert 1 < len(resize._cache) < 60


# ----- fuzz findings (fuzz/fuzz_inputs.py), each kept as a regression test ------------------------------

FUZZ_FINDINGS = Path(__file__).parent / "data" / "fuzz"


@pytest.mark.parametrize("name", ["tiff_frame_without_dimensions.tif", "jpeg_empty_scan_header.jpg"])
def test_fuzz_findings_are_refused_as_corrupt(name: str) -> None:
    """Each input once escaped the decoder as another exception (the TIFF: a TypeError from Pillow's frame
    count, which walks every frame's header; the JPEG: an IndexError from our progressive-scan walk on a
    segment whose length field is below 2)."""
    from upscale_cli.errors import ImageReadError
    from upscale_cli.image_io import read_image

    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        read_image(FUZZ_FINDINGS / name)
