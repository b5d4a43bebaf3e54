"""The `upscale` command line: routing, every option, exit codes, and safe batch behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import smooth_image
from upscale_cli.cli import cli
from upscale_cli.resize import imresize


def invoke(*args: str, input: bytes | None = None, env: dict | None = None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, env=env, catch_exceptions=False)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(smooth_image(20, 24, 7)).save(path)
    return path


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).astype(np.float64)


# ----- entry points and routing -------------------------------------------------------------------

def test_help_and_version_do_not_import_torch() -> None:
    code = ("import sys; from click.testing import CliRunner; from upscale_cli.cli import cli; "
            "r = CliRunner().invoke(cli, ['--version']); assert '0.1.0' in r.output, r.output; "
            "r = CliRunner().invoke(cli, ['--help']); assert 'sample' in r.output or 'upscale' in r.output; "
            "r = CliRunner().invoke(cli, ['upscale', '--help']); assert '--tile' in r.output; "
            "r = CliRunner().invoke(cli, ['train', '--help']); assert '--device' in r.output, r.output; "
            "r = CliRunner().invoke(cli, ['models', '--help']); assert '--task' in r.output, r.output; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_python_dash_m_and_console_script_agree(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    subprocess.run([sys.executable, "-m", "upscale_cli", photo, "-m", tiny_checkpoint, "-o", a, "-q"], check=True)
    result = invoke("upscale", photo, "-m", tiny_checkpoint, "-o", b, "-q")
    assert result.exit_code == 0
    assert np.array_equal(pixels(a), pixels(b))


def test_default_command_equals_explicit_subcommand(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert invoke(photo, "-x4", "--model", tiny_checkpoint, "-o", tmp_path / "implicit.png").exit_code == 0
    assert invoke("upscale", photo, "-x4", "--model", tiny_checkpoint, "-o", tmp_path / "explicit.png").exit_code == 0
    assert np.array_equal(pixels(tmp_path / "implicit.png"), pixels(tmp_path / "explicit.png"))
    assert pixels(tmp_path / "implicit.png").shape == (80, 96, 3)


def test_file_named_like_a_subcommand(photo: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("train").write_bytes(photo.read_bytes())
    result = invoke("./train", "-m", tiny_checkpoint, "-o", "out.png")
    assert result.exit_code == 0, result.output
    assert Path("out.png").exists()


# ----- sizes and names ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("args", "size"),
    [((), (96, 80)), (("-x", "2"), (48, 40)), (("-x", "3"), (72, 60)), (("-x", "8"), (192, 160)),
     (("--width", "50"), (50, 42)), (("--height", "30"), (36, 30)), (("--width", "33", "--height", "17"), (33, 17))],
)
def test_output_size_follows_scale_width_height(photo: Path, tiny_checkpoint: Path, tmp_path: Path, args, size) -> None:
    out = tmp_path / "out.png"
    assert invoke(photo, "-m", tiny_checkpoint, "-o", out, *args).exit_code == 0
    with Image.open(out) as image:
        assert image.size == size


def test_scale_above_native_runs_the_model_twice(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """x8 with an x4 model is two model passes (x16) then Lanczos down, not a blurry resample of x4."""
    from upscale_cli.engine import load_upscaler

    upscaler = load_upscaler(str(tiny_checkpoint))
    calls = []
    forward = upscaler.module.forward
    upscaler.module.forward = lambda tile: calls.append(tile.shape) or forward(tile)
    rgb = smooth_image(10, 12, 1).astype(np.float32) / 255
    assert upscaler.upscale(rgb, 96, 80, "none").shape == (80, 96, 3)
    assert [tuple(c[-2:]) for c in calls] == [(10, 12), (40, 48)]


def test_name_template_and_default_name(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    assert invoke(photo, "-m", tiny_checkpoint, "-o", out_dir, "-x", "2").exit_code == 0
    assert (out_dir / "photo_x2.png").exists()
    assert invoke(photo, "-m", tiny_checkpoint, "-o", out_dir, "--name", "{model}-{stem}-{scale}.{ext}").exit_code == 0
    assert (out_dir / "tiny_x4-photo-4.png").exists()
    result = CliRunner().invoke(cli, [str(photo), "-m", str(tiny_checkpoint), "--name", "{nope}.png"])
    assert result.exit_code == 2 and "--name" in result.output


def test_default_output_is_next_to_input(photo: Path, tiny_checkpoint: Path) -> None:
    assert invoke(photo, "-m", tiny_checkpoint).exit_code == 0
    assert (photo.parent / "photo_x4.png").exists()


def test_format_and_quality(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert invoke(photo, "-m", "bicubic", "-o", tmp_path, "--format", "jpg", "--quality", "10",
                  "--name", "low.{ext}").exit_code == 0
    assert invoke(photo, "-m", "bicubic", "-o", tmp_path, "--format", "jpg", "--quality", "98",
                  "--name", "high.{ext}").exit_code == 0
    low, high = tmp_path / "low.jpg", tmp_path / "high.jpg"
    assert low.stat().st_size < high.stat().st_size
    with Image.open(low) as image:
        assert image.format == "JPEG"


def test_alpha_forces_a_format_that_holds_it(tmp_path: Path, tiny_checkpoint: Path) -> None:
    rgba = np.dstack([smooth_image(16, 16, 2), np.linspace(0, 255, 256).reshape(16, 16).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    result = invoke(tmp_path / "a.png", "-m", tiny_checkpoint, "--format", "jpg", "-o", tmp_path / "o")
    assert result.exit_code == 0
    with Image.open(tmp_path / "o" / "a_x4.png") as image:
        assert image.mode == "RGBA" and image.size == (64, 64)
        alpha = np.asarray(image)[..., 3].astype(float)
    assert alpha[:8].mean() < 100 < 155 < alpha[-8:].mean()  # the vertical alpha ramp survives, upright
    assert abs(alpha.mean() - 127.5) < 3
    assert "alpha" in result.stderr


def test_bicubic_model_is_the_matlab_resize(photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "b.png"
    assert invoke(photo, "-m", "bicubic", "-o", out).exit_code == 0
    lr = torch.from_numpy(pixels(photo)).permute(2, 0, 1) / 255
    expected = imresize(lr, 4).clamp(0, 1).mul(255).round().permute(1, 2, 0).numpy()
    assert np.array_equal(pixels(out), expected)


# ----- tiling, device, precision, threads ---------------------------------------------------------

def test_tiled_cli_output_matches_untiled(tmp_path: Path, tiny_checkpoint: Path) -> None:
    Image.fromarray(smooth_image(40, 44, 3)).save(tmp_path / "big.png")
    invoke(tmp_path / "big.png", "-m", tiny_checkpoint, "--tile", "none", "--precision", "fp32", "-o", tmp_path / "u.png")
    invoke(tmp_path / "big.png", "-m", tiny_checkpoint, "--tile", "16", "--tile-overlap", "12", "--precision", "fp32",
           "-o", tmp_path / "t.png")
    invoke(tmp_path / "big.png", "-m", tiny_checkpoint, "--tile", "16", "--tile-overlap", "0", "--precision", "fp32",
           "-o", tmp_path / "seams.png")
    untiled, tiled, seams = pixels(tmp_path / "u.png"), pixels(tmp_path / "t.png"), pixels(tmp_path / "seams.png")
    assert np.abs(untiled - tiled).max() <= 1  # receptive radius 10 < overlap 12: equal up to rounding
    assert np.abs(untiled - seams).max() > 1  # without overlap the tiles disagree: the option is wired


def test_tta_is_the_mean_of_the_network_on_eight_flips_and_rotations(tiny_checkpoint: Path) -> None:
    """Expected value computed without the engine: numpy turns the input, the bare network upscales, numpy
    turns the output back; the mean of the 8 must equal --tta (tiled or not), and plain output must not."""
    import torch

    from upscale_cli.checkpoint import load_model
    from upscale_cli.engine import load_upscaler

    rgb = smooth_image(22, 27, 2).astype(np.float32) / 255  # not square: odd turns swap height and width
    network, _ = load_model(tiny_checkpoint)
    views = []
    for flip in (False, True):
        for turns in range(4):
            view = np.rot90(rgb[:, ::-1] if flip else rgb, turns)
            with torch.no_grad():
                out = network(torch.from_numpy(view.transpose(2, 0, 1).copy())[None])[0].permute(1, 2, 0).numpy()
            out = np.rot90(out, -turns)
            views.append(out[:, ::-1] if flip else out)
    expected = np.mean(views, axis=0)
    tta = load_upscaler(str(tiny_checkpoint), precision="fp32", tta=True, overlap=12)
    np.testing.assert_allclose(tta.upscale(rgb, 108, 88, "none"), expected, atol=1e-5)
    ticks: list[tuple[int, int]] = []
    tiled = tta.upscale(rgb, 108, 88, "16", on_tile=lambda done, total: ticks.append((done, total)))
    np.testing.assert_allclose(tiled, expected, atol=1e-5)  # tiled (receptive radius 10 < overlap 12): same
    assert [done for done, _ in ticks] == list(range(1, len(ticks) + 1))  # one count across the 8 views
    assert {total for _, total in ticks} == {len(ticks)} and len(ticks) % 8 == 0 and len(ticks) > 8
    plain = load_upscaler(str(tiny_checkpoint), precision="fp32").upscale(rgb, 108, 88, "none")
    assert np.abs(plain - expected).max() > 1e-3


def test_tta_option_writes_the_ensemble_and_refuses_stochastic_models(photo: Path, tiny_checkpoint: Path,
                                                                      tmp_path: Path) -> None:
    from upscale_cli.archs.srflow import SRFlow, SRFlowConfig
    from upscale_cli.checkpoint import CheckpointInfo, config_dict, save_checkpoint
    from upscale_cli.engine import load_upscaler

    result = invoke(photo, "-m", tiny_checkpoint, "--tta", "--precision", "fp32", "-o", tmp_path / "t.png")
    assert result.exit_code == 0, result.output
    expected = load_upscaler(str(tiny_checkpoint), precision="fp32", tta=True).upscale(
        smooth_image(20, 24, 7).astype(np.float32) / 255, 96, 80)
    assert np.array_equal(pixels(tmp_path / "t.png"), (expected.clip(0, 1) * 255).round())
    with Image.open(tmp_path / "t.png") as written:
        assert written.getexif().get(0x0131) == expected_tag(tiny_checkpoint, "tiny_x4", "96x80; tta; fp32")
    config = SRFlowConfig(scale=4, levels=3, steps=1, hidden=8, encoder_channels=8, encoder_blocks=1,
                          stack_blocks=(0,), transition_steps=0)
    flow = tmp_path / "flow_x4.safetensors"
    save_checkpoint(flow, SRFlow(config), CheckpointInfo("srflow", 4, config_dict(config), name="flow_x4"))
    refused = CliRunner().invoke(cli, [str(photo), "-m", str(flow), "--tta", "-o", str(tmp_path / "f.png")])
    assert refused.exit_code == 2 and "--tta is for deterministic models" in refused.output
    assert not (tmp_path / "f.png").exists()


def test_color_fix_restores_the_inputs_colours_and_keeps_fine_detail() -> None:
    """An output with a colour cast and fine texture: the fix removes the cast (LR-consistency rises from
    ~20 dB to over 40) and leaves the texture (its high-pass is nearly unchanged); an output that already
    shrinks to the input exactly is left as it is."""
    from upscale_cli.engine import color_fix
    from upscale_cli.metrics import psnr
    from upscale_cli.resize import imresize

    generator = torch.Generator().manual_seed(0)
    lr = torch.from_numpy(smooth_image(24, 20, 3).transpose(2, 0, 1).copy()).double()[None] / 255
    texture = 0.05 * torch.randn(1, 3, 96, 80, generator=generator, dtype=torch.float64)
    cast = torch.tensor([0.12, 0.0, -0.08], dtype=torch.float64)[None, :, None, None]
    sr = imresize(lr, size=(96, 80)) + texture + cast

    def high_pass(x: torch.Tensor) -> torch.Tensor:
        return x - imresize(imresize(x, size=(24, 20)), size=(96, 80))

    fixed = color_fix(sr, lr)
    assert psnr(imresize(sr, size=(24, 20)) * 255, lr * 255) < 22
    assert psnr(imresize(fixed, size=(24, 20)) * 255, lr * 255) > 40
    assert psnr(high_pass(fixed) * 255, high_pass(sr) * 255) > 40
    consistent = sr.clone()
    assert torch.allclose(color_fix(consistent, imresize(consistent, size=(24, 20))), consistent, atol=1e-12)


def test_color_fix_option_is_wired_and_recorded(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    from upscale_cli.engine import color_fix, load_upscaler

    result = invoke(photo, "-m", tiny_checkpoint, "--color-fix", "--precision", "fp32", "-o", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    rgb = smooth_image(20, 24, 7).astype(np.float32) / 255
    plain = load_upscaler(str(tiny_checkpoint), precision="fp32").upscale(rgb, 96, 80)
    expected = color_fix(torch.from_numpy(plain.transpose(2, 0, 1).copy())[None],
                         torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None])[0].permute(1, 2, 0).numpy()
    assert np.abs(pixels(tmp_path / "c.png") - (expected.clip(0, 1) * 255).round()).max() <= 1
    with Image.open(tmp_path / "c.png") as written:
        assert written.getexif().get(0x0131) == expected_tag(tiny_checkpoint, "tiny_x4", "96x80; color-fix; fp32")


def test_precision_option_changes_arithmetic(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    from upscale_cli.engine import load_upscaler

    rgb = smooth_image(20, 24, 7).astype(np.float32) / 255
    fp32 = load_upscaler(str(tiny_checkpoint), precision="fp32").upscale(rgb, 96, 80, "none")
    bf16 = load_upscaler(str(tiny_checkpoint), precision="bf16").upscale(rgb, 96, 80, "none")
    difference = np.abs(fp32 - bf16).max()
    assert 0 < difference < 0.05
    result = CliRunner().invoke(cli, [str(photo), "-m", str(tiny_checkpoint), "--precision", "fp16", "--device", "cpu"])
    assert result.exit_code == 2 and "fp16 is not supported on the CPU" in result.output


@pytest.mark.parametrize(("native", "precision", "warned"),
                         [(False, "bf16", True), (True, "bf16", False), (False, "fp32", False), (False, "auto", False)])
@pytest.mark.parametrize("quiet", [(), ("-q",)])
def test_emulated_bf16_is_run_with_a_warning(photo: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch,
                                             native: bool, precision: str, warned: bool, quiet: tuple[str]) -> None:
    import upscale_cli.device

    monkeypatch.setattr(upscale_cli.device, "cpu_has_native_bf16", lambda: native)
    result = invoke(photo, "-m", tiny_checkpoint, "--device", "cpu", "--precision", precision, "-o", tmp_path / "o.png",
                    *quiet)
    assert result.exit_code == 0 and (tmp_path / "o.png").exists()
    assert ("warning: this CPU has no native bf16" in result.output) == warned
    assert ("auto picks fp32" in result.output) == warned


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is absent")
def test_cuda_requested_without_cuda(photo: Path, tiny_checkpoint: Path) -> None:
    result = CliRunner().invoke(cli, [str(photo), "-m", str(tiny_checkpoint), "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA device" in result.output


def test_threads_option_sets_torch_threads(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        assert invoke(photo, "-m", tiny_checkpoint, "--threads", "1", "-o", tmp_path / "t.png").exit_code == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ----- existing outputs, dry run, json, quiet, seed -------------------------------------------------

def test_never_overwrites_without_overwrite(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    result = invoke(photo, "-m", tiny_checkpoint, "-o", out)
    assert result.exit_code == 1 and "exists (use --overwrite or --skip-existing)" in result.stderr
    assert out.read_bytes() == b"precious"
    result = invoke(photo, "-m", tiny_checkpoint, "-o", out, "--skip-existing")  # not an output of these settings
    assert result.exit_code == 1 and "exists, not made by upscale" in result.stderr and out.read_bytes() == b"precious"
    assert invoke(photo, "-m", tiny_checkpoint, "-o", out, "--overwrite").exit_code == 0
    assert out.read_bytes() != b"precious"
    both = CliRunner().invoke(cli, [str(photo), "--overwrite", "--skip-existing"])
    assert both.exit_code == 2


def test_skip_existing_keeps_only_outputs_of_the_same_settings(photo: Path, tiny_checkpoint: Path,
                                                              tmp_path: Path) -> None:
    """A resumed batch skips what these settings made (any precision), and refuses to keep what another model
    or --tta made, naming it; nothing is overwritten without --overwrite."""
    folder = tmp_path / "out"
    assert invoke(photo, "-m", tiny_checkpoint, "--precision", "fp32", "-o", folder).exit_code == 0
    made = (folder / "photo_x4.png").read_bytes()
    resumed = invoke(photo, "-m", tiny_checkpoint, "--precision", "bf16", "-o", folder, "--skip-existing")
    assert resumed.exit_code == 0 and "skipped" in resumed.stderr
    other = invoke(photo, "-m", tiny_checkpoint, "--tta", "-o", folder, "--skip-existing")
    assert other.exit_code == 1
    made_by = expected_tag(tiny_checkpoint, "tiny_x4", "96x80; fp32")
    assert f"made by {made_by!r}: not these settings" in other.stderr
    assert (folder / "photo_x4.png").read_bytes() == made
    assert invoke(photo, "-m", "bicubic", "-o", folder, "--skip-existing").exit_code == 1
    bigger = invoke(photo, "-m", tiny_checkpoint, "-x", "2", "--name", "photo_x4.png", "-o", folder, "--skip-existing")
    assert bigger.exit_code == 1  # same name, another output size
    retrained = tmp_path / "retrained.safetensors"  # same metadata name, other weights
    data = bytearray(tiny_checkpoint.read_bytes())
    data[-4:] = b"\x00\x00\x80\x3f"  # the last float32 of the tensor data becomes 1.0
    retrained.write_bytes(bytes(data))
    assert invoke(photo, "-m", retrained, "-o", folder, "--skip-existing").exit_code == 1
    assert (folder / "photo_x4.png").read_bytes() == made


def test_skip_existing_matches_a_model_named_outside_ascii(photo: Path, tmp_path: Path) -> None:
    from upscale_cli.archs.srresnet import SRResNet, SRResNetConfig
    from upscale_cli.checkpoint import CheckpointInfo, config_dict, save_checkpoint

    config = SRResNetConfig(scale=4, channels=8, blocks=1)
    path = tmp_path / "caf\u00e9.safetensors"
    save_checkpoint(path, SRResNet(config), CheckpointInfo("srresnet", 4, config_dict(config), name="caf\u00e9_x4"))
    assert invoke(photo, "-m", path, "-o", tmp_path / "out.png").exit_code == 0
    with Image.open(tmp_path / "out.png") as written:
        assert "model caf\\xe9_x4 x4 #" in written.getexif().get(0x0131)  # escaped, not "?"
    again = invoke(photo, "-m", path, "-o", tmp_path / "out.png", "--skip-existing")
    assert again.exit_code == 0 and "skipped" in again.stderr


def test_an_output_too_large_for_free_memory_fails_alone_before_running(tmp_path: Path, tiny_checkpoint: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from upscale_cli import engine

    monkeypatch.setattr(engine, "available_memory", lambda device: 2 * 2**20)  # 2 MiB free
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(smooth_image(20, 24, 1)).save(folder / "small.png")  # 96 x 80 out, streamed: 16 x 7.5 KiB
    Image.fromarray(smooth_image(100, 120, 2)).save(folder / "large.png")  # 480 x 400 out, streamed: 16 x 188 KiB
    result = invoke(folder, "-m", tiny_checkpoint, "--tile", "none", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert "large_x4.png: a 480 x 400 output needs about 2.9 MiB of memory and 2.0 MiB is free" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["small_x4.png"]
    # x8 from an x4 model runs it twice: the 16x intermediate is what must fit
    upscaler = engine.load_upscaler(str(tiny_checkpoint))
    assert upscaler.memory_problem(10, 12, 80, 96) is None  # 160 x 192 intermediate: 3 x 0.35 MiB
    assert upscaler.memory_problem(20, 24, 160, 192) is not None  # 320 x 384 intermediate: 3 x 1.4 MiB
    # a streamed output needs its planes and a band, not three float copies
    assert upscaler.memory_problem(60, 64, 240, 256, converted=True) is None  # 16 x 60 KiB
    assert upscaler.memory_problem(60, 64, 240, 256) is not None  # 3 x 0.7 MiB
    assert upscaler.memory_problem(60, 64, 120, 128, converted=True) is not None  # a resize: not streamed


def test_dry_run_writes_nothing(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = invoke(photo, "-m", tiny_checkpoint, "-o", tmp_path / "o", "--dry-run")
    assert result.exit_code == 0 and "would write" in result.stderr and "photo_x4.png" in result.stderr
    assert not (tmp_path / "o").exists()


def test_json_lines_and_summary(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_text("not an image")
    result = invoke(photo, tmp_path / "bad.png", "-m", tiny_checkpoint, "-o", tmp_path / "o", "--json")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.exit_code == 1
    assert lines[0]["status"] == "ok" and lines[0]["width"] == 96 and lines[0]["output"].endswith("photo_x4.png")
    assert lines[1]["status"] == "failed" and "bad.png" in lines[1]["error"]
    assert lines[2]["summary"] == {"ok": 1, "failed": 1, "skipped": 0, "dry-run": 0}


def test_quiet_prints_nothing_on_success(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = invoke(photo, "-m", tiny_checkpoint, "-o", tmp_path / "q.png", "-q")
    assert result.exit_code == 0 and result.stderr == "" and result.stdout == ""


def test_seed_on_a_deterministic_model_says_it_has_no_effect(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = invoke(photo, "-m", tiny_checkpoint, "-o", tmp_path / "s.png", "--seed", "0")
    assert result.exit_code == 0 and "--seed has no effect" in result.stderr


def expected_tag(checkpoint: Path, name: str, rest: str) -> str:
    """The Software tag upscale writes, with the weights digest computed here from the file's tensor bytes."""
    import hashlib

    from upscale_cli import __version__

    data = checkpoint.read_bytes()
    digest = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:8]
    return f"upscale {__version__}; model {name} x4 #{digest}; {rest}"


def test_output_says_what_made_it(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The Software tag names program, weights, output size and precision (no seed or tau: deterministic)."""
    for fmt in ("png", "jpg"):
        assert invoke(photo, "-m", tiny_checkpoint, "--precision", "fp32", "--format", fmt,
                      "-o", tmp_path / f"out.{fmt}").exit_code == 0
        with Image.open(tmp_path / f"out.{fmt}") as written:
            assert written.getexif().get(0x0131) == expected_tag(tiny_checkpoint, "tiny_x4", "96x80; fp32")
    assert invoke(photo, "-m", tiny_checkpoint, "-x2", "-o", tmp_path / "half.png").exit_code == 0
    with Image.open(tmp_path / "half.png") as written:
        assert "; 48x40; " in written.getexif().get(0x0131)


def test_strip_metadata_drops_the_source_exif_but_keeps_the_tag(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """Camera, date and GPS tags are carried by default and dropped with --strip-metadata; the Software tag stays."""
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif.get_ifd(0x8825)[2] = (52.0, 31.0, 12.0)  # GPSLatitude
    source = tmp_path / "geo.jpg"
    Image.fromarray(smooth_image(20, 24, seed=4)).save(source, "JPEG", exif=exif.tobytes())
    for flag, name in ((), "kept.png"), (("--strip-metadata",), "stripped.png"):
        assert invoke(source, "-m", tiny_checkpoint, "--precision", "fp32", "-o", tmp_path / name, *flag).exit_code == 0
    with Image.open(tmp_path / "kept.png") as kept, Image.open(tmp_path / "stripped.png") as stripped:
        kept_tags, stripped_tags = kept.getexif(), stripped.getexif()
    assert kept_tags.get(0x010F) == "TestCam" and kept_tags.get_ifd(0x8825)
    assert 0x010F not in stripped_tags and not stripped_tags.get_ifd(0x8825)
    assert stripped_tags.get(0x0131) == kept_tags.get(0x0131) == expected_tag(tiny_checkpoint, "tiny_x4", "96x80; fp32")


def test_max_pixels_refuses_large_inputs(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = invoke(photo, "-m", tiny_checkpoint, "-o", tmp_path / "m.png", "--max-pixels", "100")
    assert result.exit_code == 1 and "limit" in result.stderr and not (tmp_path / "m.png").exists()


# ----- batches, folders, globs, stdin/stdout --------------------------------------------------------

def test_batch_goes_on_past_bad_files_and_reports_them(tmp_path: Path, tiny_checkpoint: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(smooth_image(8, 8, 0)).save(folder / "a.png")
    (folder / "b.png").write_bytes(b"")
    (folder / "c.png").write_bytes((folder / "a.png").read_bytes()[:60])
    (folder / "._a.png").write_bytes(b"macOS resource fork, not an image")  # hidden: ignored
    Image.fromarray(smooth_image(8, 8, 1)).save(folder / "d.png")
    result = invoke(folder, "-m", tiny_checkpoint, "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x4.png", "d_x4.png"]
    assert "2 of 4 input(s) failed" in result.stderr
    assert "b.png: empty file" in result.stderr and "c.png" in result.stderr
    assert "Traceback" not in result.output


def _tree_of_images(root: Path, count: int) -> None:
    for index in range(count):
        folder = root / ("sub" if index % 3 else "") / ("deeper" if index % 5 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_image(6, 6, index)).save(folder / f"img{index:02d}.png")


def _outputs(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))


def test_shards_together_are_the_whole_batch_each_file_once(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _tree_of_images(Path("in"), 24)
    assert invoke("in", "-r", "-m", "bicubic", "-o", "whole", "-q").exit_code == 0
    shares = []
    for index in (1, 2, 3):
        result = invoke("in", "-r", "-m", "bicubic", "-o", f"shard{index}", "-q", "--shard", f"{index}/3")
        assert result.exit_code == 0, result.output
        shares.append(_outputs(Path(f"shard{index}")))
    assert sorted(sum(shares, [])) == _outputs(Path("whole"))  # each file in exactly one shard
    assert all(shares), "a hash split of 24 files left a shard empty"
    for index, share in enumerate(shares, 1):  # and each shard's result is the whole run's
        for name in share:
            assert np.array_equal(pixels(Path(f"shard{index}") / name), pixels(Path("whole") / name))


def test_a_shard_keeps_its_files_when_outputs_appear_beside_the_sources(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _tree_of_images(Path("in"), 12)
    listed = invoke("in", "-r", "-m", "bicubic", "--dry-run", "--json", "--shard", "2/4")
    before = [json.loads(line)["input"] for line in listed.stdout.splitlines()[:-1]]
    assert invoke("in", "-r", "-m", "bicubic", "-q", "--shard", "1/4").exit_code == 0  # writes beside the sources
    again = invoke("in", "-r", "-m", "bicubic", "--dry-run", "--json", "--shard", "2/4")
    after = [json.loads(line)["input"] for line in again.stdout.splitlines()[:-1]]
    assert before and set(before) <= set(after)
    assert all("_x4" in name for name in set(after) - set(before))


def test_shards_with_skip_existing_resume_exactly(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    _tree_of_images(Path("in"), 10)
    first = invoke("in", "-r", "-m", "bicubic", "-o", "out", "--json", "--shard", "1/2")
    again = invoke("in", "-r", "-m", "bicubic", "-o", "out", "--json", "--shard", "1/2", "--skip-existing")
    second = invoke("in", "-r", "-m", "bicubic", "-o", "out", "--json", "--shard", "2/2", "--skip-existing")
    summary = [json.loads(result.stdout.splitlines()[-1])["summary"] for result in (first, again, second)]
    assert summary[1]["skipped"] == summary[0]["ok"] and not summary[1].get("ok")
    assert summary[0]["ok"] + summary[2]["ok"] == 10 and not summary[2].get("skipped")
    assert len(_outputs(Path("out"))) == 10


@pytest.mark.parametrize("value", ["0/3", "4/3", "3", "a/b", "1/0", "-1/2"])
def test_bad_shards_are_usage_errors(photo: Path, value: str) -> None:
    result = CliRunner().invoke(cli, [str(photo), "-m", "bicubic", "--shard", value])
    assert result.exit_code == 2 and "K/N" in result.output


def test_recursive_mirrors_the_tree(tmp_path: Path, tiny_checkpoint: Path) -> None:
    (tmp_path / "in" / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(smooth_image(8, 8, 0)).save(tmp_path / "in" / "top.png")
    Image.fromarray(smooth_image(8, 8, 1)).save(tmp_path / "in" / "sub" / "deeper" / "low.jpg")
    flat = invoke(tmp_path / "in", "-m", tiny_checkpoint, "-o", tmp_path / "flat")
    assert sorted(p.name for p in (tmp_path / "flat").iterdir()) == ["top_x4.png"]
    assert flat.exit_code == 0
    assert invoke(tmp_path / "in", "-m", tiny_checkpoint, "-o", tmp_path / "tree", "--recursive").exit_code == 0
    assert (tmp_path / "tree" / "top_x4.png").exists()
    assert (tmp_path / "tree" / "sub" / "deeper" / "low_x4.jpg").exists()


def test_glob_patterns(tmp_path: Path, tiny_checkpoint: Path) -> None:
    for name in ("a.png", "b.png", "c.jpg"):
        Image.fromarray(smooth_image(8, 8, 0)).save(tmp_path / name)
    result = invoke(str(tmp_path / "*.png"), "-m", tiny_checkpoint, "-o", tmp_path / "o")
    assert result.exit_code == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_x4.png", "b_x4.png"]
    nothing = invoke(str(tmp_path / "*.webp"), "-m", tiny_checkpoint, "-o", tmp_path / "o")
    assert nothing.exit_code == 1 and "matching" in nothing.stderr


def test_stdin_to_stdout(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "upscale_cli", "-", "-o", "-", "-m", str(tiny_checkpoint), "-q"],
                          input=photo.read_bytes(), capture_output=True, check=True)
    (tmp_path / "from_stdout.png").write_bytes(proc.stdout)
    assert invoke(photo, "-m", tiny_checkpoint, "-o", tmp_path / "direct.png").exit_code == 0
    assert np.array_equal(pixels(tmp_path / "from_stdout.png"), pixels(tmp_path / "direct.png"))
    result = CliRunner().invoke(cli, ["-", "-m", str(tiny_checkpoint)], input=photo.read_bytes())
    assert result.exit_code == 2 and "stdin" in result.output


# ----- models and exit codes ---------------------------------------------------------------------

def test_missing_weights_say_so_with_exit_code_3(photo: Path, tmp_path: Path) -> None:
    env = {"UPSCALE_WEIGHTS": str(tmp_path / "empty")}
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, [str(photo), "--model", "nosuchmodel"], env=env)
    assert result.exit_code == 3 and "unknown model 'nosuchmodel'" in result.output
    assert "Traceback" not in result.output


def test_a_known_model_without_weights_says_how_to_get_them(photo: Path, tmp_path: Path, monkeypatch) -> None:
    import upscale_cli.models

    monkeypatch.setattr(upscale_cli.models, "weights_dirs", lambda: [tmp_path])
    result = invoke("sample", photo, "-o", tmp_path / "out")
    assert result.exit_code == 3
    assert "model 'srflow': no weights file (srflow_x4.safetensors)" in result.output
    assert "upscale train --model srflow" in result.output and not (tmp_path / "out").exists()
    listing = invoke("models", "--json")
    rows = json.loads(listing.stdout)
    assert any(row["name"] == "srflow" and row["status"] == "weights missing" for row in rows), listing.output


def test_broken_checkpoint_is_one_line_exit_3_and_verbose_shows_traceback(photo: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    result = CliRunner().invoke(cli, [str(photo), "--model", str(bad), "-o", tmp_path / "x.png"])
    assert result.exit_code == 3
    assert result.stderr.strip().count("\n") == 0 and "not a safetensors file" in result.stderr
    verbose = CliRunner().invoke(cli, [str(photo), "--model", str(bad), "-o", tmp_path / "x.png", "-v"])
    assert verbose.exit_code == 3 and "Traceback" in verbose.stderr
    assert not (tmp_path / "x.png").exists()


def test_usage_errors_exit_2(photo: Path, tiny_checkpoint: Path) -> None:
    assert CliRunner().invoke(cli, [str(photo), "--scale", "2", "--width", "10"]).exit_code == 2
    assert CliRunner().invoke(cli, [str(photo), "--tile", "banana"]).exit_code == 2
    small = CliRunner().invoke(cli, [str(photo), "-m", str(tiny_checkpoint), "--tile", "16", "--tile-overlap", "16"])
    assert small.exit_code == 2 and "larger than the overlap" in small.output
    assert CliRunner().invoke(cli, [str(photo), "--format", "gif"]).exit_code == 2


def test_models_lists_weights_with_their_metadata(tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "srgan_x4.safetensors").write_bytes(tiny_checkpoint.read_bytes())
    result = invoke("models", "--json", env={"UPSCALE_WEIGHTS": str(folder)})
    rows = {(r["name"], r["scale"]): r for r in json.loads(result.stdout)}
    srgan = rows[("srgan", 4)]
    model = torch.nn.Module()
    from upscale_cli.checkpoint import load_model

    model, _ = load_model(tiny_checkpoint)
    assert srgan["params"] == sum(p.numel() for p in model.parameters())
    assert srgan["arch"] == "srresnet" and srgan["status"] == "ok"
    assert ("bicubic", None) in rows
    table = invoke("models", env={"UPSCALE_WEIGHTS": str(folder)})
    assert "srgan" in table.stdout and "bicubic" in table.stdout


def test_models_headline_orders_benchmarks_and_drops_repeated_validation() -> None:
    from upscale_cli.cli.models import _headline

    figures = {"Set14": {"psnr_y": 27.5, "ssim_y": 0.75}, "validation": {"psnr_y": 30.0, "ssim_y": 0.87},
               "Set5": {"psnr_y": 30.0, "ssim_y": 0.87}, "note": "not figures"}
    assert _headline(figures) == "Set5 30.00/0.870, Set14 27.50/0.750"
    assert _headline({"validation": {"psnr_y": 29.0, "ssim_y": 0.8}}) == "validation 29.00/0.800"
    assert _headline({}) == "-"


def test_named_model_found_in_weights_folder(photo: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "srgan_x4.safetensors").write_bytes(tiny_checkpoint.read_bytes())
    env = {"UPSCALE_WEIGHTS": str(folder)}
    assert invoke(photo, "--model", "srgan", "-o", tmp_path / "n.png", env=env).exit_code == 0
    assert invoke(photo, "--model", tiny_checkpoint, "-o", tmp_path / "p.png").exit_code == 0
    assert np.array_equal(pixels(tmp_path / "n.png"), pixels(tmp_path / "p.png"))


def test_a_bug_is_one_line_exit_70_and_verbose_shows_the_traceback(photo: Path, monkeypatch) -> None:
    import upscale_cli.engine as engine

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(engine, "load_upscaler", broken)
    result = CliRunner().invoke(cli, [str(photo), "-m", "bicubic"])
    assert result.exit_code == 70
    assert result.stderr.strip().splitlines()[-1].startswith("error: internal error: ZeroDivisionError")
    assert "Traceback" not in result.stderr
    verbose = CliRunner().invoke(cli, [str(photo), "-m", "bicubic", "-v"])
    assert verbose.exit_code == 70 and "Traceback" in verbose.stderr


# ----- compare ------------------------------------------------------------------------------------

def test_compare_crops_equal_the_whole_image_outputs(tiny_checkpoint: Path) -> None:
    """Each model runs on the crop plus a margin; where the margin covers its reach, the crop is the
    whole image's output cut out. With an HR, the labels carry PSNR-Y computed here independently."""
    from upscale_cli.cli.compare import compare_columns
    from upscale_cli.engine import load_upscaler
    from upscale_cli.metrics import psnr, rgb_to_y
    from upscale_cli.sheets import nearest_resize

    lr = smooth_image(40, 44, 5).astype(np.float32) / 255
    hr = smooth_image(160, 176, 6).astype(np.float32) / 255
    upscalers = [load_upscaler("bicubic"), load_upscaler(str(tiny_checkpoint), precision="fp32")]
    box = (17, 9, 12, 10)
    columns = compare_columns(lr, box, upscalers, 4, hr[36:76, 68:116], None, 0)
    assert [name.split()[0] for name, _ in columns] == ["LR", "bicubic", "tiny_x4", "HR"]
    np.testing.assert_array_equal(columns[0][1], nearest_resize(lr[9:19, 17:29], 48, 40))
    for (name, cell), upscaler in zip(columns[1:3], upscalers):
        whole = upscaler.upscale(lr, 176, 160, "none")
        np.testing.assert_allclose(cell, whole[36:76, 68:116], atol=1e-5)
        y = [rgb_to_y(torch.from_numpy(a.transpose(2, 0, 1).copy()).double().clamp(0, 1).mul(255).round() / 255)
             for a in (cell, hr[36:76, 68:116])]
        assert name.endswith(f" {psnr(*y):.2f} dB")
    np.testing.assert_array_equal(columns[3][1], hr[36:76, 68:116])


def test_compare_writes_one_sheet_and_refuses_what_it_cannot_do(photo: Path, tiny_checkpoint: Path,
                                                               tmp_path: Path) -> None:
    Image.fromarray(smooth_image(80, 96, 8)).save(tmp_path / "hr.png")
    sheet = tmp_path / "sheet.png"
    args = ["compare", photo, "-m", tiny_checkpoint, "--crop", "2,2,10,8", "--hr", tmp_path / "hr.png",
            "--precision", "fp32", "-o", sheet]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    with Image.open(sheet) as written:  # 4 cells of 40x32 (LR, bicubic, tiny_x4, HR) with 4 px gaps, labels above
        assert written.size == (8 + 4 * (40 + 4) + 4, 14 + 32 + 4 + 4)
    assert invoke(*args, "--zoom", "2", "--overwrite").exit_code == 0
    with Image.open(sheet) as zoomed:
        assert zoomed.size == (8 + 4 * (80 + 4) + 4, 14 + 64 + 4 + 4)
    assert invoke(*args, "--tta", "--color-fix", "--overwrite").exit_code == 0  # + tiny_x4+tta, tiny_x4+color-fix
    with Image.open(sheet) as variants:
        assert variants.size == (8 + 6 * (40 + 4) + 4, 14 + 32 + 4 + 4)
    before = sheet.read_bytes()
    again = invoke(*args)
    assert again.exit_code == 1 and "exists" in again.stderr and sheet.read_bytes() == before
    outside = invoke("compare", photo, "-m", tiny_checkpoint, "--crop", "20,0,10,8", "-o", tmp_path / "o.png")
    assert outside.exit_code == 2 and "reaches outside" in outside.output
    Image.fromarray(smooth_image(40, 96, 8)).save(tmp_path / "small_hr.png")
    wrong_hr = invoke("compare", photo, "-m", tiny_checkpoint, "--hr", tmp_path / "small_hr.png", "-o", tmp_path / "w.png")
    assert wrong_hr.exit_code == 1 and "small_hr.png" in wrong_hr.stderr and "not 4x the LR" in wrong_hr.stderr
    missing = invoke("compare", photo, "-m", tmp_path / "nope.safetensors", "-o", tmp_path / "m.png")
    assert missing.exit_code == 3
    assert not any((tmp_path / name).exists() for name in ("o.png", "w.png", "m.png"))
