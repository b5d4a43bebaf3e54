"""ArtFlow: the PFN's size and exact inverse, the transfers, and unbiased (lossless) stylisation."""

from __future__ import annotations

import pytest
import torch

from upscale_cli.archs.artflow import ArtFlow, ArtFlowConfig, initialize_from
from upscale_cli.metrics import psnr

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_papers_pfn_has_its_parameter_count() -> None:
    assert sum(p.numel() for p in ArtFlow(ArtFlowConfig()).parameters()) == 6_463_616  # spec 5.1


def model(transfer: str = "adain", seed: int = 0, flows: int = 2) -> ArtFlow:
    """A small ArtFlow with every parameter perturbed (zero-convs included), ActNorm initialised on data."""
    torch.manual_seed(seed)
    flow = ArtFlow(ArtFlowConfig(flows=flows, hidden=16, transfer=transfer))
    initialize_from(flow, torch.rand(2, 3, 32, 32))
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return flow.eval()


def images(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    content = torch.rand(1, 3, 40, 48, generator=generator)
    style = torch.rand(1, 3, 28, 36, generator=generator) * torch.tensor([1.0, 0.5, 0.2])[:, None, None]
    return content, style


def test_the_projection_inverts_exactly() -> None:
    flow = model()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        latent = flow.project(x)
        assert latent.shape == (2, 48, 16, 16) and (latent - x.mean()).abs().mean() > 0.05
        assert (flow.revert(latent) - x).abs().max() < 1e-4


@pytest.mark.parametrize("transfer", ["adain", "wct"])
def test_a_content_styled_with_itself_comes_back(transfer: str) -> None:
    flow = model(transfer)
    content, _ = images(2)
    with torch.no_grad():
        assert psnr(flow(content, content).clamp(0, 1) * 255, content * 255) >= 40


@pytest.mark.parametrize("transfer", ["adain", "wct"])
def test_stylisation_is_unbiased_content_comes_back_after_a_round_trip(transfer: str) -> None:
    """Stylise C with S, then the result with C as the style: C again, since nothing was lost on the way."""
    flow = model(transfer)
    content, style = images(3)
    with torch.no_grad():
        styled = flow(content, style)
        back = flow(styled, content)
    assert psnr(styled.clamp(0, 1) * 255, content * 255) < 30  # the style did change it
    assert psnr(back.clamp(0, 1) * 255, content * 255) >= 40
    # the styled latent carries the style's statistics, not the content's
    with torch.no_grad():
        stats, target = flow.image_statistics(styled), flow.image_statistics(style)
    assert (stats["mean"] - target["mean"]).abs().max() < 1e-2


def test_tiled_stylisation_equals_untiled(tmp_path) -> None:
    from dataclasses import asdict

    import numpy as np

    from upscale_cli.archs.base import RunOptions
    from upscale_cli.checkpoint import CheckpointInfo, save_checkpoint
    from upscale_cli.engine import load_upscaler

    from upscale_cli.archs.artflow import receptive_radius

    flow = model(flows=1)
    path = tmp_path / "style_x1.safetensors"
    save_checkpoint(path, flow, CheckpointInfo("artflow", 1, asdict(flow.config), name="style_x1"))
    radius = receptive_radius(flow.config)
    upscaler = load_upscaler(str(path), device="cpu", precision="fp32", overlap=radius)
    generator = torch.Generator().manual_seed(4)
    content, style = torch.rand(1, 3, 98, 90, generator=generator), images(4)[1]
    rgb = np.ascontiguousarray(content[0].permute(1, 2, 0).numpy())
    whole = upscaler.upscale(rgb, 90, 98, "none", options=RunOptions(extras={"style": style}))
    ticks = []
    tiled = upscaler.upscale(rgb, 90, 98, str(radius + 12), options=RunOptions(extras={"style": style}),
                             on_tile=lambda done, total: ticks.append(total))
    assert ticks[-1] > 2  # really tiled, in two passes
    with torch.no_grad():
        expected = flow(content, style)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(whole, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(tiled, whole, atol=1e-4, rtol=0)


def test_each_tile_is_projected_once_across_both_passes_and_auto_tiles_are_large_on_a_cpu(tmp_path, monkeypatch) -> None:
    """The statistics pass's latents are kept for the transfer pass, which reads the same windows (#26: a third
    of the work); without room to keep them, every tile is projected in both passes, with the same result."""
    from dataclasses import asdict

    import numpy as np

    import upscale_cli.engine as engine
    from upscale_cli.archs.base import RunOptions
    from upscale_cli.checkpoint import CheckpointInfo, save_checkpoint
    import upscale_cli.tiler as tiler
    from upscale_cli.cpu import CPU_LARGEST_AUTO_TILE

    flow = model(flows=1)
    path = tmp_path / "style_x1.safetensors"
    save_checkpoint(path, flow, CheckpointInfo("artflow", 1, asdict(flow.config), name="style_x1"))
    upscaler = engine.load_upscaler(str(path), device="cpu", precision="fp32", overlap=4)
    projections = []
    original = ArtFlow.project
    monkeypatch.setattr(ArtFlow, "project", lambda self, image: projections.append(image.shape) or original(self, image))
    generator = torch.Generator().manual_seed(5)
    content, style = torch.rand(1, 3, 40, 36, generator=generator), images(4)[1]
    rgb = np.ascontiguousarray(content[0].permute(1, 2, 0).numpy())
    options = RunOptions(extras={"style": style})
    whole = upscaler.upscale(rgb, 36, 40, "none", options=options)
    assert len(projections) == 2  # the style once, the content once
    with torch.no_grad():
        expected = flow(content, style)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(whole, expected, atol=1e-4, rtol=0)
    windows = len(tiler.make_windows(40, 36, 16, overlap=4, align=4))
    assert windows >= 4
    projections.clear()
    kept = upscaler.upscale(rgb, 36, 40, "16", options=options)
    assert len(projections) == 1 + windows  # the style, then each tile once
    monkeypatch.setattr(tiler, "WINDOW_CACHE_BYTES", 0)
    projections.clear()
    again = upscaler.upscale(rgb, 36, 40, "16", options=options)
    assert len(projections) == 1 + 2 * windows
    np.testing.assert_array_equal(kept, again)
    monkeypatch.setattr(engine, "available_memory", lambda device: 2**40)
    assert upscaler.choose_tile("auto", 1024, 1000) is None  # whole, where other models get cache-sized tiles
    assert CPU_LARGEST_AUTO_TILE < upscaler.choose_tile("auto", 2048, 900) <= 1024


def test_in_bf16_the_coupling_networks_run_in_bf16_and_the_result_stays_close(tmp_path, monkeypatch) -> None:
    """bf16 changes the stylisation only by the coupling networks' rounding; a latent from a bf16 statistics
    pass is not reused by a transfer pass in fp32 (the tiler's redo of a non-finite tile)."""
    from dataclasses import asdict

    import numpy as np

    import upscale_cli.engine as engine
    from upscale_cli.archs.base import RunOptions
    from upscale_cli.checkpoint import CheckpointInfo, save_checkpoint
    from upscale_cli.tiler import IMAGE, TileInput, make_windows

    flow = model(flows=1)
    path = tmp_path / "style_x1.safetensors"
    save_checkpoint(path, flow, CheckpointInfo("artflow", 1, asdict(flow.config), name="style_x1"))
    content, style = images(6)
    rgb = np.ascontiguousarray(content[0].permute(1, 2, 0).numpy())
    options = RunOptions(extras={"style": style})
    outputs = {precision: engine.load_upscaler(str(path), device="cpu", precision=precision)
               .upscale(rgb, 48, 40, "none", options=options) for precision in ("fp32", "bf16")}
    difference = np.abs(outputs["bf16"] - outputs["fp32"])
    assert difference.max() > 0  # bf16 really ran
    assert psnr(torch.from_numpy(outputs["bf16"]) * 255, torch.from_numpy(outputs["fp32"]) * 255) >= 40

    runner = engine.load_upscaler(str(path), device="cpu", precision="bf16")._runner(options)
    state = runner.apply_statistics(runner.prepare({"style": TileInput(style, None)}, None),
                                    {name: value[0].double() for name, value in
                                     runner.reduce_tile({IMAGE: content}, {}, make_windows(40, 48, None, 0), "bf16").items()})
    projections = []
    original = ArtFlow.project
    monkeypatch.setattr(ArtFlow, "project", lambda self, image: projections.append(image.shape) or original(self, image))
    runner.run_tile({IMAGE: content}, state, make_windows(40, 48, None, 0), "fp32")
    assert len(projections) == 1  # projected again in fp32, not the bf16 latent reused


def test_a_style_image_is_given_on_the_command_line(tmp_path) -> None:
    from dataclasses import asdict

    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from conftest import smooth_image
    from upscale_cli.checkpoint import CheckpointInfo, save_checkpoint
    from upscale_cli.cli import cli

    flow = model(flows=1)
    path = tmp_path / "style_x1.safetensors"
    save_checkpoint(path, flow, CheckpointInfo("artflow", 1, asdict(flow.config), name="style_x1"))
    Image.fromarray(smooth_image(30, 26, 1)).save(tmp_path / "content.png")
    Image.fromarray(smooth_image(20, 24, 7)).save(tmp_path / "painting.png")
    args = [str(tmp_path / "content.png"), "-m", str(path), "--precision", "fp32"]
    result = CliRunner().invoke(cli, [*args, "--input", f"style={tmp_path / 'painting.png'}", "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 0, result.output
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out.shape == (30, 26, 3) and not np.array_equal(out, smooth_image(30, 26, 1))
    (tmp_path / "broken.png").write_text("no")
    result = CliRunner().invoke(cli, [*args, "--input", f"style={tmp_path / 'broken.png'}", "-o", str(tmp_path / "b.png")])
    assert result.exit_code == 1 and "broken.png" in result.output and not (tmp_path / "b.png").exists()


def test_stylize_makes_every_content_in_every_style(tmp_path, tiny_checkpoint) -> None:
    from dataclasses import asdict

    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from conftest import smooth_image
    from upscale_cli.checkpoint import CheckpointInfo, save_checkpoint
    from upscale_cli.cli import cli
    from upscale_cli.image_io import software_tag

    flow = model(flows=1)
    path = tmp_path / "style_x1.safetensors"
    save_checkpoint(path, flow, CheckpointInfo("artflow", 1, asdict(flow.config), name="style_x1"))
    contents = tmp_path / "photos"
    contents.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(24, 28, i)).save(contents / f"c{i}.png")
    styles = []
    for name, seed in (("wave", 5), ("stars", 6)):
        Image.fromarray(smooth_image(20, 20, seed)).save(tmp_path / f"{name}.png")
        styles += ["--style", str(tmp_path / f"{name}.png")]
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["stylize", str(contents), *styles, "-m", str(path), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["c0_stars.png", "c0_wave.png", "c1_stars.png", "c1_wave.png"]
    result = CliRunner().invoke(cli, ["stylize", str(contents / "c0.png"), *styles[:2], "-m", str(path),
                                      "--strength", "0", "-o", str(tmp_path / "zero"), "-q"])
    assert result.exit_code == 0, result.output
    kept = np.asarray(Image.open(tmp_path / "zero" / "c0_wave.png")).astype(float)
    assert np.abs(kept - smooth_image(24, 28, 0)).max() <= 1  # strength 0: the content itself
    assert "strength 0" in software_tag(tmp_path / "zero" / "c0_wave.png")
    result = CliRunner().invoke(cli, ["stylize", str(contents), *styles[:2], "-m", str(tiny_checkpoint),
                                      "-o", str(tmp_path / "no")])
    assert result.exit_code == 2 and "takes no style image" in result.output


def test_stylize_method_picks_the_transfer_and_size_resizes_the_content_first(tmp_path) -> None:
    """--method wct on AdaIN weights gives what a WCT model with the same weights gives; --size N makes
    the content's shorter side N px before stylising; both are recorded in the provenance tag."""
    from dataclasses import asdict, replace

    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from conftest import smooth_image
    from upscale_cli.checkpoint import CheckpointInfo, save_checkpoint
    from upscale_cli.cli import cli
    from upscale_cli.image_io import software_tag

    flow = model(flows=1)
    path = tmp_path / "style_x1.safetensors"
    save_checkpoint(path, flow, CheckpointInfo("artflow", 1, asdict(flow.config), name="style_x1"))
    Image.fromarray(smooth_image(24, 32, 0)).save(tmp_path / "c.png")
    Image.fromarray(smooth_image(20, 20, 5)).save(tmp_path / "s.png")
    args = ["stylize", str(tmp_path / "c.png"), "--style", str(tmp_path / "s.png"), "-m", str(path), "-q"]
    for method in ("adain", "wct"):
        result = CliRunner().invoke(cli, [*args, "--method", method, "-o", str(tmp_path / f"{method}.png")])
        assert result.exit_code == 0, result.output
    wct = ArtFlow(replace(flow.config, transfer="wct")).eval()
    wct.load_state_dict(flow.state_dict())
    read = lambda p: torch.from_numpy(np.asarray(Image.open(p), dtype=np.float32) / 255).permute(2, 0, 1)[None]  # noqa: E731
    with torch.no_grad():
        expected = wct(read(tmp_path / "c.png"), read(tmp_path / "s.png")).clamp(0, 1)
    assert (read(tmp_path / "wct.png") - expected).abs().max() <= 1 / 255 + 1e-6
    assert not torch.equal(read(tmp_path / "wct.png"), read(tmp_path / "adain.png"))
    assert "method wct" in software_tag(tmp_path / "wct.png")
    result = CliRunner().invoke(cli, [*args, "--size", "12", "-o", str(tmp_path / "small.png")])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "small.png").size == (16, 12)  # 32 x 24, shorter side to 12


# ----- the training recipe -------------------------------------------------------------------------------

def artflow_config(data, style, **overrides):
    from upscale_cli.train.config import TrainConfig, apply_settings

    base = TrainConfig(model="artflow", data=str(data), val=str(style), scale=1, iters=4, batch=2, patch=16,
                       lr=1e-3, val_every=4, log_every=1, precision="fp32", seed=3, ema=0.0,
                       arch={"blocks": 2, "flows": 1, "hidden": 8})
    return apply_settings(base, {"style": str(style), "loss_net": "random", **overrides})


@pytest.fixture
def style_folder(tmp_path):
    from PIL import Image

    from conftest import smooth_image

    folder = tmp_path / "styles"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(40, 56, 10 + i)).save(folder / f"style_{i}.png")
    return folder


def test_the_random_loss_network_is_fixed_frozen_and_multiscale() -> None:
    from upscale_cli.train.recipes.artflow import ArtFlowOptions, loss_network

    a, b = loss_network(ArtFlowOptions(loss_net="random")), loss_network(ArtFlowOptions(loss_net="random"))
    image = torch.rand(1, 3, 32, 32)
    features = a(image)
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4]
    assert all(torch.equal(x, y) for x, y in zip(features, b(image)))  # seeded: the same network every run
    assert not any(p.requires_grad for p in a.parameters())
    with pytest.raises(ValueError, match="loss_net must be one of"):
        loss_network(ArtFlowOptions(loss_net="alexnet"))


def test_style_distance_is_zero_for_equal_statistics_and_grows_with_them() -> None:
    from upscale_cli.train.recipes.artflow import style_distance

    x = torch.randn(2, 4, 8, 8)
    shuffled = x.flatten(2)[..., torch.randperm(64)].reshape(x.shape)  # same per-channel statistics
    assert style_distance([x], [shuffled]).item() == pytest.approx(0.0, abs=1e-6)
    assert style_distance([x], [x * 2 + 1]).item() > style_distance([x], [x * 1.1]).item() > 0


def test_training_initialises_actnorm_first_then_learns_and_validates(image_folder, style_folder, tmp_path) -> None:
    import json

    from upscale_cli.train.loop import Trainer

    trainer = Trainer(artflow_config(image_folder, style_folder), tmp_path / "run", "test")
    recipe = trainer.recipe
    coupling = [p for name, p in recipe.generator.named_parameters() if "coupling" in name or "net" in name]
    before = [p.detach().clone() for p in coupling]
    batch = recipe.batches(seed=0).next_batch()
    assert batch.lr.shape == batch.extras["style"].shape == (2, 3, 16, 16)
    trainer.run()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [record for record in log if "style" in record and "val" not in record]
    assert len(steps) == 3  # the first step only initialised ActNorm
    assert recipe.initialised and not all(torch.equal(a, b) for a, b in zip(before, coupling))
    validation = [record["val"] for record in log if "val" in record][-1]
    assert 0.0 <= validation["style_closer"] <= 1.0 and validation["content"] >= 0 and validation["style"] > 0
    content = recipe.batches(seed=1).next_batch()
    model = recipe.generator.eval()
    with torch.no_grad():  # still exactly invertible after training
        torch.testing.assert_close(model.revert(model.project(content.lr)), content.lr, atol=1e-4, rtol=0)
