"""The OpenVINO backend: agreement with torch for every feed-forward architecture, the conversion cache, the
fallbacks, and the torch-free path for small images."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import save_small, smooth_image
from upscale_cli import openvino_backend
from upscale_cli.archs import architecture_ids, get_architecture
from upscale_cli.cli import cli
from upscale_cli.engine import load_upscaler
from upscale_cli.errors import InferenceError
from upscale_cli.openvino_backend import Facts, WholeImageUpscaler, network_for

pytest.importorskip("openvino", reason="the openvino extra is not installed")

FEED_FORWARD = [arch for arch in architecture_ids() if get_architecture(arch).feed_forward]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def rgb_for(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth float image whose sides meet the checkpoint's size requirements."""
    upscaler = load_upscaler(str(path))
    size = upscaler.descriptor.size_for(upscaler.module.config)
    height = max(-(-height // size.multiple) * size.multiple, size.minimum)
    width = max(-(-width // size.multiple) * size.multiple, size.minimum)
    return smooth_image(height, width, seed).astype(np.float32) / 255


def test_there_are_feed_forward_architectures_to_convert() -> None:
    assert {"srresnet", "rrdbnet"} <= set(FEED_FORWARD)


@pytest.mark.parametrize("arch", FEED_FORWARD)
def test_every_feed_forward_architecture_agrees_with_torch_through_the_tiler(arch: str, tmp_path: Path) -> None:
    path = save_small(arch, tmp_path)
    rgb = rgb_for(path, 44, 40)
    torch_run = load_upscaler(str(path), precision="fp32")
    openvino_run = load_upscaler(str(path), precision="fp32", backend="openvino")
    assert (torch_run.backend, openvino_run.backend, openvino_run.backend_note) == ("torch", "openvino", None)
    out_w, out_h = torch_run.output_size(rgb.shape[1], rgb.shape[0])
    expected = torch_run.upscale(rgb, out_w, out_h, tile_spec="24")
    got = openvino_run.upscale(rgb, out_w, out_h, tile_spec="24")
    assert got.shape == expected.shape
    assert psnr(got, expected) > 60


def test_a_conversion_is_cached_and_made_again_when_the_weights_change(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    conversions = []
    convert = openvino_backend.convert
    monkeypatch.setattr(openvino_backend, "convert", lambda *a, **k: conversions.append(a[1]) or convert(*a, **k))
    path = save_small("srresnet", tmp_path)
    first = load_upscaler(str(path), backend="openvino")
    again = load_upscaler(str(path), backend="openvino")
    assert len(conversions) == 1 and again.backend == "openvino"
    rgb = rgb_for(path, 16, 16)
    assert np.array_equal(first.upscale(rgb, 32, 32), again.upscale(rgb, 32, 32))

    save_small("srresnet", tmp_path, seed=1)  # new weights under the same name
    changed = load_upscaler(str(path), backend="openvino")
    assert len(conversions) == 2
    assert psnr(changed.upscale(rgb, 32, 32), load_upscaler(str(path), precision=changed.precision)
                .upscale(rgb, 32, 32)) > 40
    assert not np.array_equal(changed.upscale(rgb, 32, 32), first.upscale(rgb, 32, 32))

    monkeypatch.setattr(openvino_backend, "NETWORK_FORM", openvino_backend.NETWORK_FORM + 1)  # new rewrites
    load_upscaler(str(path), backend="openvino")
    assert len(conversions) == 3


def test_a_half_written_cache_entry_is_never_used(tmp_path: Path) -> None:
    path = save_small("srresnet", tmp_path)
    load_upscaler(str(path), backend="openvino")
    stem = openvino_backend.cache_folder() / openvino_backend.cache_key(path)
    assert openvino_backend.cached_network(path) is not None
    stem.with_suffix(".json").unlink()  # the facts are written last: without them the entry is unfinished
    assert openvino_backend.cached_network(path) is None
    stem.with_suffix(".json").write_text("{not json")
    assert openvino_backend.cached_network(path) is None
    converted = load_upscaler(str(path), backend="openvino")  # converted again
    assert converted.backend == "openvino"
    assert json.loads(stem.with_suffix(".json").read_text())["scale"] == converted.scale


def test_openvino_asked_for_falls_back_to_torch_with_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save_small("srresnet", tmp_path)
    monkeypatch.setattr(openvino_backend, "installed", lambda: False)
    asked = load_upscaler(str(path), backend="openvino")
    assert asked.backend == "torch" and "not installed" in asked.backend_note and "using torch" in asked.backend_note
    assert load_upscaler(str(path), backend="auto").backend_note is None  # auto falls back silently
    facts = Facts("x", "super-resolution", 2, 1, 1, 16, True)
    monkeypatch.undo()
    assert network_for("openvino", "cpu", "srflow", None, None, path) == (
        None, "srflow does not run on OpenVINO (it brings its own runner or inputs); using torch")
    assert network_for("openvino", "cuda", "srresnet", facts, None, path)[1].startswith("OpenVINO runs on the CPU")
    assert network_for("torch", "cpu", "srresnet", facts, None, path) == (None, None)


def test_a_conversion_that_fails_is_reported_and_torch_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Cannot trace this module\nmore lines")

    monkeypatch.setattr(openvino_backend, "convert", broken)
    upscaler = load_upscaler(str(save_small("srresnet", tmp_path)), backend="auto")
    assert upscaler.backend == "torch"
    assert upscaler.backend_note == "OpenVINO could not convert srresnet (Cannot trace this module); using torch"


def test_a_cached_small_image_is_upscaled_without_importing_torch(tmp_path: Path) -> None:
    path = save_small("srresnet", tmp_path)
    Image.fromarray(smooth_image(24, 20, 3)).save(tmp_path / "in.png")
    first = CliRunner().invoke(cli, [str(tmp_path / "in.png"), "-m", str(path), "-o", str(tmp_path / "tiled.png"),
                                     "--backend", "openvino", "-q"])
    assert first.exit_code == 0, first.output  # converted, and run by the tiler (one window) beside torch
    script = ("import sys; from upscale_cli.cli import main; sys.argv = sys.argv[1:]\n"
              "try:\n    main()\nexcept SystemExit as done:\n    code = done.code\n"
              "print('torch' in sys.modules, code)")
    argv = ["upscale", str(tmp_path / "in.png"), "-m", str(path), "-o", str(tmp_path / "whole.png"), "-q"]
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                          env={**os.environ, "UPSCALE_BACKEND": "auto"})
    assert done.stdout.split() == ["False", "0"], done.stderr
    tiled, whole = (np.asarray(Image.open(tmp_path / name)).astype(int) for name in ("tiled.png", "whole.png"))
    assert whole.shape == (96, 80, 3) and np.abs(tiled - whole).max() <= 1  # the tiler's blend rounds once more
    software = Image.open(tmp_path / "whole.png").getexif()[0x0131]
    assert software.endswith("; openvino") and "#" in software


def test_a_signal_after_networks_are_dropped_reaches_its_handler(tmp_path: Path) -> None:
    """Each OpenVINO Core swaps the main thread's signal stack; two Cores destroyed in the order they were
    made left it on freed memory, and the next Ctrl-C or SIGTERM crashed the process instead of stopping it."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    paths = [save_small("srresnet", tmp_path / "a"), save_small("srresnet", tmp_path / "b", seed=1)]
    script = ("import gc, os, signal, sys, numpy as np\n"
              "from upscale_cli.engine import load_upscaler\n"
              "signal.signal(signal.SIGTERM, lambda *_: print('handled', flush=True))\n"
              "runs = [load_upscaler(p, backend='openvino') for p in sys.argv[1:]]\n"
              "assert [run.backend for run in runs] == ['openvino'] * 2\n"
              "for run in runs:\n    run.upscale(np.zeros((16, 16, 3), np.float32), 32, 32)\n"
              "del run\nwhile runs:\n    del runs[0]\n    gc.collect()\n"
              "junk = [bytearray(1 << 16) for _ in range(4000)]\n"
              "os.kill(os.getpid(), signal.SIGTERM)\nprint('after')\n")
    done = subprocess.run([sys.executable, "-c", script, *map(str, paths)], capture_output=True, text=True)
    assert (done.returncode, done.stdout.split()) == (0, ["handled", "after"]), done.stderr[-2000:]


class FakeNetwork:
    """Stands in for an OpenVINO network: doubles each pixel, or gives NaN at the precisions in `broken`."""

    def __init__(self, broken: tuple[str, ...]) -> None:
        self.facts = Facts("fake", "super-resolution", 2, 1, 1, 16, True)
        self.broken, self.calls = broken, []

    def __call__(self, batch: np.ndarray, precision: str) -> np.ndarray:
        self.calls.append(precision)
        out = batch.repeat(2, axis=2).repeat(2, axis=3)
        return out * np.nan if precision in self.broken else out


def whole_image_upscaler(network: FakeNetwork, full: object = None) -> WholeImageUpscaler:
    return WholeImageUpscaler(name="fake", network=network, precision="bf16", overlap=16, digest="00000000",
                              load_full=lambda: full)


def test_the_whole_image_path_redoes_non_finite_output_in_fp32() -> None:
    rgb = np.random.default_rng(0).random((6, 5, 3), dtype=np.float32)
    warnings: list[str] = []
    network = FakeNetwork(broken=("bf16",))
    out = whole_image_upscaler(network).upscale(rgb, 10, 12, warn=warnings.append)
    assert network.calls == ["bf16", "fp32"] and np.array_equal(out, rgb.repeat(2, 0).repeat(2, 1))
    assert warnings == ["NaN/Inf in bf16 for the image (6x5 px); redoing it in fp32"]
    with pytest.raises(InferenceError, match="even in fp32"):
        whole_image_upscaler(FakeNetwork(broken=("bf16", "fp32"))).upscale(rgb, 10, 12)


def test_what_does_not_run_whole_goes_to_the_torch_engine() -> None:
    class Full:
        def upscale(self, rgb: np.ndarray, out_width: int, out_height: int, *args: object) -> str:
            return f"full {out_width}x{out_height}"

    upscaler = whole_image_upscaler(FakeNetwork(broken=()), Full())
    small, large = np.zeros((8, 8, 3), np.float32), np.zeros((400, 8, 3), np.float32)
    assert isinstance(upscaler.upscale(small, 16, 16), np.ndarray)
    assert upscaler.upscale(small, 24, 24) == "full 24x24"  # another scale needs a resize
    assert upscaler.upscale(large, 16, 800) == "full 16x800"  # larger than one OpenVINO tile
    assert upscaler.upscale(small, 16, 16, "4") == "full 16x16"  # an explicit smaller tile
