"""`upscale bench quality|speed` through the CLI, and the figures behind them, on tiny images and a tiny model."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from upscale_cli.archs.base import RunOptions
from PIL import Image

from upscale_cli.bench.quality import diversity, evaluate_upscaler, load_pairs, lr_consistency
from upscale_cli.degrade import Degradation
from upscale_cli.perceptual import weights_path
from upscale_cli.cli import cli
from upscale_cli.metrics import psnr, rgb_to_y, shave
from upscale_cli.resize import imresize, quantize


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, ["bench", *args])


def quality_json(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / f"q{len(list(tmp_path.glob('q*.json')))}.json"
    result = invoke("quality", *args, "--json", str(out))
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def read_float(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float64) / 255).permute(2, 0, 1)


def row(data: dict[str, Any], model: str) -> dict[str, Any]:
    return next(r for r in data["results"] if r["model"] == model)


@pytest.fixture
def paired_folder(image_folder: Path, tmp_path: Path) -> Path:
    """The HR images of `image_folder` as HR/ + LR_x4/ (LR made with MATLAB bicubic, 8 bits)."""
    folder = tmp_path / "paired"
    (folder / "HR").mkdir(parents=True)
    (folder / "LR_x4").mkdir()
    for path in sorted(image_folder.glob("*.png")):
        hr = np.array(Image.open(path))
        Image.fromarray(hr).save(folder / "HR" / path.name)
        lr = quantize(imresize(torch.from_numpy(hr).permute(2, 0, 1).double() / 255, scale=1 / 4))
        Image.fromarray((lr.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / "LR_x4" / path.name)
    return folder


def test_quality_reports_bicubic_and_the_model(image_folder: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    result = invoke("quality", "--data", str(image_folder), "--model", str(tiny_checkpoint), "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "bicubic" in result.stdout and "tiny_x4" in result.stdout
    data = json.loads(out.read_text())
    assert [r["model"] for r in data["results"]] == ["bicubic", "tiny_x4"]
    assert data["settings"]["scale"] == 4 and data["settings"]["precisions"] == ["fp32"]
    assert data["environment"]["torch"] == torch.__version__ and data["environment"]["cpu"]
    for entry in data["results"]:
        assert entry["images_count"] == 3 and len(entry["images"]) == 3
        perceptual = {"stlpips"} if weights_path() is not None else set()
        assert set(entry["mean"]) == {"psnr_y", "ssim_y", "psnr_rgb", "sharpness", "lr_psnr"} | perceptual
        assert entry["megapixels_per_second"] > 0


def test_checkpoint_files_of_one_architecture_are_told_apart_by_file_name(
        image_folder: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    other = tmp_path / "other_run.safetensors"
    other.write_bytes(tiny_checkpoint.read_bytes())  # same metadata name ("tiny_x4"), different file
    data = quality_json(tmp_path, "--data", str(image_folder), "-m", str(tiny_checkpoint), "-m", str(other))
    assert [r["model"] for r in data["results"]] == ["bicubic", "tiny_x4", "other_run"]
    assert row(data, "other_run")["model_path"] == str(other)


def test_tta_and_color_fix_rows_are_measured_beside_the_plain_ones_and_not_recorded(
        image_folder: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    from upscale_cli.checkpoint import read_info
    from upscale_cli.engine import load_upscaler

    data = quality_json(tmp_path, "--data", str(image_folder), "-m", str(tiny_checkpoint), "--tta", "--color-fix",
                        "--record")
    assert [r["model"] for r in data["results"]] == ["bicubic", "tiny_x4", "tiny_x4+tta", "tiny_x4+color-fix"]
    assert row(data, "tiny_x4+color-fix")["mean"]["lr_psnr"] > row(data, "tiny_x4")["mean"]["lr_psnr"] + 3
    plain, tta = row(data, "tiny_x4"), row(data, "tiny_x4+tta")
    assert not plain["tta"] and tta["tta"] and plain["mean"]["psnr_y"] != tta["mean"]["psnr_y"]
    pair = load_pairs(image_folder, 4)[0]
    lr = pair.lr.permute(1, 2, 0).numpy()
    sr = load_upscaler(str(tiny_checkpoint), precision="fp32", tta=True).upscale(lr, lr.shape[1] * 4, lr.shape[0] * 4)
    expected = psnr(shave(rgb_to_y(quantize(torch.from_numpy(sr).permute(2, 0, 1).double().clamp(0, 1))), 4),
                    shave(rgb_to_y(pair.hr.double()), 4))
    assert tta["images"][pair.name]["psnr_y"] == pytest.approx(float(expected), abs=1e-6)
    assert read_info(tiny_checkpoint).metrics["images"]["psnr_y"] == plain["mean"]["psnr_y"]


def test_bicubic_psnr_matches_a_direct_computation(image_folder: Path, tmp_path: Path) -> None:
    data = quality_json(tmp_path, "--data", str(image_folder), "--model", "bicubic")
    expected = []
    for path in sorted(image_folder.glob("*.png")):
        hr = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float64) / 255).permute(2, 0, 1)
        lr = quantize(imresize(hr, scale=1 / 4))
        sr = quantize(imresize(lr, scale=4))
        expected.append(psnr(shave(rgb_to_y(sr), 4), shave(rgb_to_y(hr), 4)))
    assert row(data, "bicubic")["mean"]["psnr_y"] == pytest.approx(sum(expected) / len(expected), abs=1e-6)


def test_degrade_blur_lowers_bicubic_and_ignores_given_lr(paired_folder: Path, tmp_path: Path) -> None:
    clean = quality_json(tmp_path, "--data", str(paired_folder), "--model", "bicubic")
    assert row(clean, "bicubic")["lr"] == "LR_x4"
    out = tmp_path / "blur.json"
    result = invoke("quality", "--data", str(paired_folder), "--model", "bicubic", "--degrade", "blur:2",
                    "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "NOT used" in result.stderr
    blurred = row(json.loads(out.read_text()), "bicubic")
    assert blurred["lr"] == "blur:2"
    assert blurred["mean"]["psnr_y"] < row(clean, "bicubic")["mean"]["psnr_y"] - 0.5
    result = invoke("quality", "--data", str(paired_folder), "--model", "bicubic", "--degrade", "aniso:0.5,3,30,noise:5",
                    "--json", str(out))
    assert result.exit_code == 0, result.output
    assert row(json.loads(out.read_text()), "bicubic")["lr"] == "aniso:0.5,3,30,noise:5"


def test_the_perceptual_distance_is_a_column_when_the_extra_is_installed(paired_folder: Path, tmp_path: Path) -> None:
    from upscale_cli.perceptual import weights_path

    if weights_path() is None:
        pytest.skip("the perceptual extra (stlpips-pytorch) is not installed")
    result = quality_json(tmp_path, "--data", str(paired_folder), "--model", "bicubic")
    mean = row(result, "bicubic")["mean"]
    assert 0 < mean["stlpips"] < 1
    assert all("stlpips" in figures for figures in row(result, "bicubic")["images"].values())


def test_given_lr_files_are_audited_against_their_hr(paired_folder: Path, tmp_path: Path) -> None:
    shifted = paired_folder / "LR_x4" / "img_1.png"  # an LR file not made from its HR: shifted one pixel
    Image.fromarray(np.roll(np.array(Image.open(shifted)), 1, axis=1)).save(shifted)
    out = tmp_path / "audit.json"
    result = invoke("quality", "--data", str(paired_folder), "--model", "bicubic", "--json", str(out))
    assert result.exit_code == 0, result.output
    note = row(json.loads(out.read_text()), "bicubic")["lr_note"]
    assert note in result.stderr
    flagged = note.split("capping LR-PSNR: ")[1]
    assert flagged.startswith("img_1 (") and "img_0" not in flagged and "img_2" not in flagged
    # the ceiling is the mean of the HR's own LR-PSNR: rounding-limited for two files, low for the shifted one
    own = [lr_consistency(read_float(paired_folder / "HR" / name), read_float(paired_folder / "LR_x4" / name))
           for name in ("img_0.png", "img_1.png", "img_2.png")]
    assert own[0] > 50 and own[2] > 50 and own[1] < 50
    assert row(json.loads(out.read_text()), "bicubic")["hr_lr_psnr"] == pytest.approx(sum(own) / 3, abs=1e-4)


def test_tau_on_deterministic_models_is_a_note(image_folder: Path, tmp_path: Path) -> None:
    result = invoke("quality", "--data", str(image_folder), "--model", "bicubic", "--tau", "0.5,0.9")
    assert result.exit_code == 0, result.output
    assert "apply only to stochastic models" in result.stderr


def test_bad_data_path_is_a_one_line_error(tmp_path: Path) -> None:
    result = invoke("quality", "--data", str(tmp_path / "missing"), "--model", "bicubic")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: --data {tmp_path / 'missing'}: no such folder"]


def test_plot_without_matplotlib_gives_the_install_hint(image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    result = invoke("quality", "--data", str(image_folder), "--model", "bicubic", "--plot", "out.png")
    assert result.exit_code == 2
    assert "pip install 'upscale-cli[plot]'" in result.stderr
    assert "Quality" not in result.stdout  # refused before measuring anything


def test_speed_measures_both_precisions_and_their_agreement(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    result = invoke("speed", "--model", str(tiny_checkpoint), "--size", "32", "--repeat", "2",
                    "--precision", "fp32,bf16", "--tile", "none,24", "--in-process", "--json", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["settings"]["sizes"] == [32] and data["environment"]["threads"] >= 1
    model_rows = {(r["precision"], r["tile"]): r for r in data["results"] if r["model"] == "tiny_x4"}
    assert set(model_rows) == {("fp32", "none"), ("fp32", "24"), ("bf16", "none"), ("bf16", "24")}
    for entry in data["results"]:
        assert entry["megapixels_per_second"] > 0 and entry["out_width"] == 128
        assert len(entry["latency_ms"]["runs"]) == 2
    bf16 = model_rows[("bf16", "none")]
    assert isinstance(bf16["agreement_vs_fp32_db"], float) and bf16["agreement_vs_fp32_db"] > 20
    assert bf16["speedup_vs_fp32"] > 0
    # The tiny model's receptive field is within the default 16 px overlap: tiling changes nothing.
    assert model_rows[("fp32", "24")]["agreement_vs_untiled_db"] == "inf"
    assert "bicubic" in result.stdout and "bf16" in result.stdout


def test_speed_in_a_fresh_process(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    result = invoke("speed", "--model", "bicubic", "--size", "16", "--repeat", "1", "--json", str(out))
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(out.read_text())["results"]
    assert entry["isolated"] and entry["megapixels_per_second"] > 0
    assert entry["memory"]["peak_bytes"] > entry["memory"]["increase_bytes"] >= 0


def test_speed_refuses_fp16_on_the_cpu(tiny_checkpoint: Path) -> None:
    result = invoke("speed", "--model", str(tiny_checkpoint), "--size", "16", "--precision", "fp16",
                    "--device", "cpu")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "fp16" in result.stderr


def test_diversity_of_synthetic_samples() -> None:
    base = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert diversity([base, base.clone(), base.clone()]) == 0
    # Two samples 2d apart have a per-pixel standard deviation of d (population std).
    assert diversity([base - 0.01, base + 0.01]) == pytest.approx(0.01 * 255)
    with pytest.raises(ValueError):
        diversity([base])


def test_lr_consistency_of_bicubic_is_high_and_of_a_wrong_output_low() -> None:
    lr = quantize(imresize(torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)), size=(16, 16)))
    assert lr_consistency(imresize(lr, scale=4), lr) > 30
    assert lr_consistency(torch.zeros(3, 64, 64), lr) < 10


def test_degradation_specs() -> None:
    assert Degradation.parse("blur:1.2") == Degradation(blur=1.2)
    assert Degradation.parse("blur:1.2,noise:10").label == "blur:1.2,noise:10"
    assert Degradation.parse("noise:5").label == "noise:5"
    for bad in ("blurry:1", "blur:x", "blur:1,blur:2", "noise:-1"):
        with pytest.raises(ValueError):
            Degradation.parse(bad)
    hr = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    noisy = [Degradation(noise=10).apply(hr, 4, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert noisy[0].shape == (3, 8, 8) and torch.equal(noisy[0], noisy[1]) and not torch.equal(noisy[0], noisy[2])


class StandInSampler:
    """A stochastic upscaler for this test only: bicubic plus seeded noise whose size is tau."""

    name = "stand-in"
    stochastic = True
    nll = None  # not a density model

    def upscale(self, rgb: np.ndarray, out_width: int, out_height: int, tile_spec: str, *,
                options: RunOptions) -> np.ndarray:
        image = imresize(torch.from_numpy(rgb).permute(2, 0, 1), size=(out_height, out_width))
        noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(options.seed))
        return (image + options.tau * 0.05 * noise).permute(1, 2, 0).numpy()


def test_stochastic_models_get_one_result_per_tau_with_diversity(image_folder: Path) -> None:
    pairs = load_pairs(image_folder, 4)
    results = evaluate_upscaler(StandInSampler(), pairs, 4, "none", taus=(0.0, 0.5, 1.0), samples=2, seed=7)
    assert [(r["tau"], r["samples"]) for r in results] == [(0.0, 2), (0.5, 2), (1.0, 2)]
    spread = [r["mean"]["diversity"] for r in results]
    assert spread[0] == 0 and 0 < spread[1] < spread[2]
    assert results[0]["mean"]["psnr_y"] > results[2]["mean"]["psnr_y"]
    assert all(math.isfinite(r["mean"]["lr_psnr"]) for r in results)


def test_record_stores_figures_in_checkpoint_metadata(tmp_path: Path) -> None:
    """--record writes the measured means into the checkpoint, where `upscale models` reads them."""
    from upscale_cli.archs.srresnet import SRResNet, SRResNetConfig
    from upscale_cli.checkpoint import CheckpointInfo, config_dict, load_model, read_info, save_checkpoint
    from upscale_cli.cli import cli

    hr_dir = tmp_path / "Tiny" / "HR"
    hr_dir.mkdir(parents=True)
    from PIL import Image

    from conftest import smooth_image

    Image.fromarray(smooth_image(32, 32, 5)).save(hr_dir / "a.png")
    config = SRResNetConfig(scale=4, channels=8, blocks=1)
    path = tmp_path / "rec_x4.safetensors"
    save_checkpoint(path, SRResNet(config), CheckpointInfo("srresnet", 4, config_dict(config), name="rec_x4"))
    before, _ = load_model(path)
    result = CliRunner().invoke(cli, ["bench", "quality", "--data", str(tmp_path / "Tiny"), "-m", str(path),
                                      "--json", str(tmp_path / "q.json"), "--record"])
    assert result.exit_code == 0, result.output
    stored = read_info(path).metrics["Tiny"]
    measured = [r for r in json.loads((tmp_path / "q.json").read_text())["results"] if r["model"] == "rec_x4"][0]
    assert stored["psnr_y"] == measured["mean"]["psnr_y"] and stored["images"] == 1
    after, _ = load_model(path)
    for key, value in before.state_dict().items():
        assert torch.equal(value, after.state_dict()[key])


def test_benchmarks_and_training_read_images_as_upscale_does(tmp_path: Path) -> None:
    """One loader: an HR photo with EXIF orientation 6 (turn 90 degrees clockwise) is scored upright, and a
    training patch source reads the same pixels."""
    from PIL import Image

    from upscale_cli.image_io import read_image
    from upscale_cli.train.data import PatchSampler

    folder = tmp_path / "hr"
    folder.mkdir()
    stored = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)  # 24 wide as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(folder / "turned.png", exif=exif.tobytes())
    upright = read_image(folder / "turned.png").rgb
    assert upright.shape == (24, 16, 3)  # shown 16 wide
    pair = load_pairs(folder, 4)[0]
    assert torch.equal(pair.hr, torch.from_numpy(upright.transpose(2, 0, 1).copy()))
    sampler = PatchSampler(folder, 16, 4, 1, seed=0)
    assert torch.equal(sampler.images[0], torch.from_numpy((upright * 255).round().astype(np.uint8)).permute(2, 0, 1))


def test_a_given_input_is_measured_beside_the_models_own_and_not_recorded(
        image_folder: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`--input prior=class:sky` adds a row for the model that takes a prior, computed with that prior (here it
    differs from the automatic one), and leaves the models without one alone; nothing is recorded from it."""
    from upscale_cli.archs.sftgan import SFTGAN, SFTGANConfig, SFTLayer
    from upscale_cli.checkpoint import CheckpointInfo, config_dict, read_info, save_checkpoint

    torch.manual_seed(0)
    model = SFTGAN(SFTGANConfig(channels=8, blocks=1)).eval()
    with torch.no_grad():
        for layer in [m for m in model.modules() if isinstance(m, SFTLayer)]:
            layer.beta[2].weight.normal_()  # a prior that moves the output
    sft = tmp_path / "sft_x4.safetensors"
    save_checkpoint(sft, model, CheckpointInfo("sftgan", 4, config_dict(model.config), name="sft_x4"))
    data = quality_json(tmp_path, "--data", str(image_folder), "-m", str(tiny_checkpoint), "-m", str(sft),
                        "--input", "prior=class:sky", "--record")
    assert [r["model"] for r in data["results"]] == ["bicubic", "tiny_x4", "sft_x4", "sft_x4 prior=class:sky"]
    assert row(data, "sft_x4 prior=class:sky")["inputs"] == {"prior": "class:sky"}
    assert row(data, "sft_x4 prior=class:sky")["mean"]["psnr_y"] != row(data, "sft_x4")["mean"]["psnr_y"]
    recorded = read_info(sft).metrics[image_folder.name]
    assert recorded["psnr_y"] == pytest.approx(row(data, "sft_x4")["mean"]["psnr_y"])
    result = invoke("quality", "--data", str(image_folder), "-m", str(tiny_checkpoint), "--input", "prior=class:sky")
    assert result.exit_code == 2 and "no measured model takes --input prior" in result.output


def test_speed_times_a_style_model_at_its_own_size_with_the_style_given(tmp_path: Path) -> None:
    from dataclasses import asdict

    from conftest import smooth_image
    from upscale_cli.archs.artflow import ArtFlow, ArtFlowConfig, initialize_from
    from upscale_cli.checkpoint import CheckpointInfo, save_checkpoint

    torch.manual_seed(0)
    flow = ArtFlow(ArtFlowConfig(flows=1, hidden=8))
    initialize_from(flow, torch.rand(1, 3, 16, 16))
    path = tmp_path / "style_x1.safetensors"
    save_checkpoint(path, flow, CheckpointInfo("artflow", 1, asdict(flow.config), name="style_x1"))
    Image.fromarray(smooth_image(20, 20, 3)).save(tmp_path / "painting.png")
    out = tmp_path / "speed.json"
    args = ["speed", "--model", str(path), "--size", "16", "--precision", "fp32", "--repeat", "1", "--in-process"]
    result = invoke(*args, "--input", f"style={tmp_path / 'painting.png'}", "--json", str(out))
    assert result.exit_code == 0, result.output
    (measured,) = [r for r in json.loads(out.read_text())["results"] if r["model"] == "style_x1"]
    assert (measured["out_width"], measured["out_height"]) == (16, 16) and measured["latency_ms"]["median"] > 0
    result = invoke(*args)
    assert result.exit_code != 0 and "style" in result.output
