"""The model platform: the descriptor's seams, proved by three test-only architectures, and the
registry-driven tests every registered architecture goes through by being registered.

The test architectures stand for the coming models: a deterministic model with a per-image state
(as DASR's degradation representation), a two-input model whose second input lies at output size
(as SFT-GAN's prior), and a scale-1 model that needs a whole-image statistic (as ArtFlow's transfer).
They are registered only for this module, never for users.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import save_small, small_model
from upscale_cli.archs import architecture_ids, get_architecture, register, unregister
from upscale_cli.archs.base import (AT_OUTPUT, IMAGE_TO_IMAGE, WHOLE, ExtraInput,
                                    ModelDescriptor, RunOptions, SizeRequirements)
from upscale_cli.archs.runners import NetworkRunner
from upscale_cli.checkpoint import CheckpointInfo, load_model, save_checkpoint
from upscale_cli.engine import DIHEDRAL_VIEWS, dihedral, load_upscaler, undo_dihedral
from upscale_cli.tiler import IMAGE, TileInput, TileSpec, image_state, region_of, upscale_tiled

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "upscale_cli"


# ----- three test-only architectures ---------------------------------------------------------------


@dataclass(frozen=True)
class TinyConfig:
    scale: int = 2
    channels: int = 4


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class StateNet(nn.Module):
    """x2: a conv net whose output is scaled by a per-image representation (the whole image's mean colour)."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.body = nn.Sequential(_conv(3, config.channels), nn.PReLU(), _conv(config.channels, 3 * config.scale**2))
        self.embed = nn.Linear(3, 3)

    def represent(self, image: torch.Tensor) -> torch.Tensor:
        return self.embed(image.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor, representation: torch.Tensor | None = None) -> torch.Tensor:
        representation = self.represent(x) if representation is None else representation
        out = F.pixel_shuffle(self.body(x), self.config.scale)
        return out * (1 + representation[:, :, None, None])


class StateRunner(NetworkRunner):
    """The representation is computed once per image in `prepare` and shared by every tile."""

    prepared_count = 0

    def prepare(self, inputs, max_pixels):
        StateRunner.prepared_count += 1
        return self.module.represent(inputs[IMAGE].tensor.to(self.device))

    @torch.inference_mode()
    def run_tile(self, tiles, state, windows, precision):
        return self.module(tiles[IMAGE].to(self.device), state.expand(len(windows), -1)).float().cpu()


class GuidedNet(nn.Module):
    """x2: the upscaled image plus a convolution of a spatially varying guide given at output size."""

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.body = nn.Sequential(_conv(3, config.channels), nn.PReLU(), _conv(config.channels, 3 * config.scale**2))
        self.guide = _conv(2, 3)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.body(x), self.config.scale) + self.guide(guide)


@dataclass(frozen=True)
class CentredConfig:
    channels: int = 4


class CentredNet(nn.Module):
    """Scale 1: a conv net whose output has the whole image's mean removed (per channel)."""

    def __init__(self, config: CentredConfig) -> None:
        super().__init__()
        self.config = config
        self.body = nn.Sequential(_conv(3, config.channels), nn.PReLU(), _conv(config.channels, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y - y.mean(dim=(2, 3), keepdim=True)


class CentredRunner(NetworkRunner):
    """Reduce-then-apply: the first pass sums the local output per channel, the second subtracts the mean."""

    def reduce_tile(self, tiles, state, windows, precision):
        y = self.module.body(tiles[IMAGE])
        sums = torch.stack([y[i, :, rows, cols].sum(dim=(1, 2))
                            for i, (rows, cols) in enumerate(region_of(w) for w in windows)])
        counts = torch.tensor([[w.height * w.width] for w in windows], dtype=torch.float64)
        return {"sum": sums, "count": counts}

    def apply_statistics(self, state, totals):
        return (totals["sum"] / totals["count"]).float()

    @torch.inference_mode()
    def run_tile(self, tiles, state, windows, precision):
        return (self.module.body(tiles[IMAGE]) - state[None, :, None, None]).float()


def _runner_factory(runner_type):
    return lambda model, device, precision, options: runner_type(model, model.config.scale if hasattr(
        model.config, "scale") else 1, device, precision)


STATE = ModelDescriptor(
    id="test_state", paper="test", config_type=TinyConfig, build=StateNet, receptive_radius=lambda c: 2,
    bytes_per_input_pixel=lambda c: 400, tile_overlap=2, make_runner=_runner_factory(StateRunner),
    small_config={"scale": 2, "channels": 4})
GUIDED = ModelDescriptor(
    id="test_guided", paper="test", config_type=TinyConfig, build=GuidedNet, receptive_radius=lambda c: 2,
    bytes_per_input_pixel=lambda c: 400, tile_overlap=2,
    extra_inputs=(ExtraInput("guide", 2, AT_OUTPUT, "a 2-channel map at output size"),),
    small_config={"scale": 2, "channels": 4})
CENTRED = ModelDescriptor(
    id="test_centred", paper="test", config_type=CentredConfig, build=CentredNet, receptive_radius=lambda c: 2,
    bytes_per_input_pixel=lambda c: 400, task=IMAGE_TO_IMAGE, tile_overlap=2, size=SizeRequirements(minimum=5),
    make_runner=_runner_factory(CentredRunner), small_config={"channels": 4})
TEST_DESCRIPTORS = (STATE, GUIDED, CENTRED)


@pytest.fixture(scope="module", autouse=True)
def test_architectures():
    for descriptor in TEST_DESCRIPTORS:
        register(descriptor)
    yield
    for descriptor in TEST_DESCRIPTORS:
        unregister(descriptor.id)


ALL_ARCHITECTURES = [*architecture_ids(), *(d.id for d in TEST_DESCRIPTORS)]


# ----- helpers ---------------------------------------------------------------------------------


def extras_for(descriptor: ModelDescriptor, height: int, width: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random values for every extra input the model declares, at the size its placement asks for."""
    generator = torch.Generator().manual_seed(seed)
    scale = descriptor.scale(descriptor.make_config(dict(descriptor.small_config)))
    out = {}
    for extra in descriptor.extra_inputs:
        factor = scale if extra.at == AT_OUTPUT else 1
        size = (37, 23) if extra.at == WHOLE else (height * factor, width * factor)
        out[extra.name] = torch.rand(1, extra.channels, *size, generator=generator)
    return out


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, 3), dtype=np.float32)


def options_for(descriptor: ModelDescriptor, height: int, width: int) -> RunOptions:
    tau = 0.0 if descriptor.stochastic else None
    return RunOptions(seed=0, tau=tau, extras=extras_for(descriptor, height, width))


# ----- nothing changed for users -------------------------------------------------------------------


def test_shipped_models_give_the_outputs_recorded_before_the_redesign() -> None:
    """srresnet and srgan fp32 outputs, untiled and tiled, and srflow samples for a seed, as recorded by
    tests/data/make_reference_outputs.py with the core before the platform redesign. Bit-identical on the CPU
    they were recorded on; elsewhere other convolution kernels may round differently, so within 1e-5."""
    from safetensors import safe_open

    import sys

    sys.path.insert(0, str(ROOT / "tests" / "data"))
    import make_reference_outputs as recorded

    path = ROOT / "tests" / "data" / "reference_outputs.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        reference = {key: handle.get_tensor(key).numpy() for key in handle.keys()}
    same_cpu = meta["cpu"] == recorded.cpu_name() and meta["torch"] == torch.__version__
    rgb = recorded.reference_input()
    assert np.array_equal(rgb, reference["input"])
    for key, model, tile, seed, tau in recorded.CASES:
        upscaler = load_upscaler(model, device="cpu", precision="fp32")
        out = upscaler.upscale(rgb, rgb.shape[1] * 4, rgb.shape[0] * 4, tile, options=RunOptions(seed, tau))
        if same_cpu:
            assert np.array_equal(out, reference[key]), key
        else:
            np.testing.assert_allclose(out, reference[key], atol=1e-5, rtol=0, err_msg=key)


MODEL_WORDS = re.compile(r"srresnet|srgan|srflow|dasr|sftgan|sft-gan|artflow|rrdb", re.IGNORECASE)


def test_generic_code_never_names_a_model() -> None:
    """cli/, the engine, the tiler and bench/ learn everything model-specific from descriptors and the catalog."""
    generic = [*sorted((SRC / "cli").glob("*.py")), SRC / "engine.py", SRC / "tiler.py",
               *sorted((SRC / "bench").glob("*.py")), SRC / "api.py", SRC / "convert.py"]
    hits = [f"{path.relative_to(SRC)}:{number}: {line.strip()}" for path in generic
            for number, line in enumerate(path.read_text().splitlines(), 1) if MODEL_WORDS.search(line)]
    assert hits == []


def test_the_catalog_is_the_one_list_of_models() -> None:
    from upscale_cli.archs.catalog import CATALOG, DEFAULT_MODEL, DEFAULT_RECIPE, DEFAULT_SAMPLER, recipes

    names = [e.name for e in CATALOG]
    assert len(names) == len(set(names))
    assert {DEFAULT_MODEL, DEFAULT_SAMPLER, DEFAULT_RECIPE} <= set(names)
    assert get_architecture(next(e.arch for e in CATALOG if e.name == DEFAULT_SAMPLER)).stochastic
    for e in CATALOG:
        assert get_architecture(e.arch).id == e.arch
        if e.recipe_module:
            import importlib

            assert hasattr(importlib.import_module(e.recipe_module), "RECIPE"), e.recipe_module
    assert set(recipes()) == {e.name for e in CATALOG if e.recipe_module}


# ----- the seams, one test architecture each --------------------------------------------------------


def test_a_per_image_state_is_computed_once_before_tiling_and_tiled_equals_untiled(tmp_path: Path) -> None:
    path = save_small("test_state", tmp_path)
    upscaler = load_upscaler(str(path), device="cpu", precision="fp32")
    assert not upscaler.stochastic  # a per-image state does not make a model stochastic
    rgb = random_rgb(30, 26)
    StateRunner.prepared_count = 0
    whole = upscaler.upscale(rgb, 52, 60, "none")
    assert StateRunner.prepared_count == 1
    StateRunner.prepared_count = 0
    ticks = []
    tiled = upscaler.upscale(rgb, 52, 60, "8", on_tile=lambda done, total: ticks.append(total))
    assert StateRunner.prepared_count == 1 and ticks[-1] > 4  # once, for many tiles
    np.testing.assert_allclose(tiled, whole, atol=1e-6, rtol=0)
    # The state really is the whole image's: run each half alone and it differs.
    model, _ = load_model(path)
    half = torch.from_numpy(rgb[:15].transpose(2, 0, 1).copy())[None]
    assert not torch.allclose(model.represent(half), model.represent(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None]))
    tta = load_upscaler(str(path), device="cpu", precision="fp32", tta=True)  # deterministic: tta is allowed
    assert tta.upscale(rgb, 52, 60, "8").shape == (60, 52, 3)


def test_a_second_input_at_output_size_is_tiled_and_turned_with_the_image(tmp_path: Path) -> None:
    path = save_small("test_guided", tmp_path)
    rgb = random_rgb(20, 28)
    guide = torch.rand(1, 2, 40, 56, generator=torch.Generator().manual_seed(5))
    options = RunOptions(extras={"guide": guide})
    plain = load_upscaler(str(path), device="cpu", precision="fp32")
    whole = plain.upscale(rgb, 56, 40, "none", options=options)
    np.testing.assert_allclose(plain.upscale(rgb, 56, 40, "8", options=options), whole, atol=1e-6, rtol=0)
    # The output depends on where the guide varies, not only on the image.
    flipped = plain.upscale(rgb, 56, 40, "none", options=RunOptions(extras={"guide": guide.flip(-1)}))
    assert np.abs(flipped - whole).max() > 1e-3
    # TTA: the mean over the 8 views of (image, guide) turned together, computed here by hand.
    model, _ = load_model(path)
    image = torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        views = [undo_dihedral(model(dihedral(image, t, f), dihedral(guide, t, f)), t, f) for t, f in DIHEDRAL_VIEWS]
        unturned = [undo_dihedral(model(dihedral(image, t, f), guide if t % 2 == 0 else guide.transpose(-1, -2)), t, f)
                    for t, f in DIHEDRAL_VIEWS]
    expected = torch.stack(views).mean(0)[0].permute(1, 2, 0).numpy()
    tta = load_upscaler(str(path), device="cpu", precision="fp32", tta=True).upscale(rgb, 56, 40, "8", options=options)
    np.testing.assert_allclose(tta, expected, atol=1e-5, rtol=0)
    wrong = torch.stack(unturned).mean(0)[0].permute(1, 2, 0).numpy()
    assert np.abs(tta - wrong).max() > 1e-3  # a tiler that turned only the image would be caught
    with pytest.raises(ValueError, match="needs the input 'guide'"):
        plain.upscale(rgb, 56, 40, "none")
    with pytest.raises(ValueError, match="takes no input named style"):
        plain.upscale(rgb, 56, 40, "none", options=RunOptions(extras={"guide": guide, "style": guide}))


def test_a_scale_one_model_with_a_whole_image_statistic_is_exact_under_tiling(tmp_path: Path) -> None:
    path = save_small("test_centred", tmp_path)
    upscaler = load_upscaler(str(path), device="cpu", precision="fp32")
    assert upscaler.scale == 1 and upscaler.task == IMAGE_TO_IMAGE
    assert upscaler.passes(30, 20, 30, 20) == 1
    rgb = random_rgb(37, 29)
    model, _ = load_model(path)
    with torch.no_grad():
        expected = model(torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None])[0].permute(1, 2, 0).numpy()
    ticks = []
    for tile in ("none", "8", "12"):
        out = upscaler.upscale(rgb, 29, 37, tile, on_tile=lambda done, total: ticks.append((done, total)))
        np.testing.assert_allclose(out, expected, atol=1e-6, rtol=0)
    assert ticks[-1][0] == ticks[-1][1]  # both passes counted as one progress
    # The statistic matters: subtracting each tile's own mean would not give the whole image's output.
    assert np.abs(expected.mean(axis=(0, 1))).max() < 1e-5
    with pytest.raises(ValueError, match="--color-fix is for super-resolution"):
        load_upscaler(str(path), device="cpu", color_fix=True)


def test_a_scale_one_model_runs_end_to_end_and_refuses_super_resolution_options(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from PIL import Image

    from upscale_cli.cli import cli

    path = save_small("test_centred", tmp_path)
    photo = tmp_path / "in.png"
    Image.fromarray((random_rgb(21, 17) * 255).astype(np.uint8)).save(photo)
    result = CliRunner().invoke(cli, [str(photo), "-m", str(path), "-o", str(tmp_path / "out.png"), "-q"])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out.png").size == (17, 21)
    result = CliRunner().invoke(cli, [str(photo), "-m", str(path), "-x", "2", "-o", str(tmp_path / "o2.png")])
    assert result.exit_code == 2 and "image-to-image model" in result.output
    assert not (tmp_path / "o2.png").exists()


def test_prepare_runs_inside_the_out_of_memory_back_off() -> None:
    class Hungry(NetworkRunner):
        budgets: list = []

        def prepare(self, inputs, max_pixels):
            Hungry.budgets.append(max_pixels)
            if max_pixels is None or max_pixels > 10_000:
                raise RuntimeError("CPU: can't allocate memory")
            return None

    _, model = small_model("srresnet")
    warnings = []
    image = torch.rand(1, 3, 200, 160)
    out = upscale_tiled(Hungry(model, 4, torch.device("cpu"), "fp32"), image, TileSpec(tile=100, overlap=12),
                        warn=warnings.append)
    assert out.shape == (1, 3, 800, 640)
    assert Hungry.budgets == [None, 16000, 8000] and len(warnings) == 2


def test_the_statistics_pass_shrinks_its_tiles_on_out_of_memory_and_stays_exact() -> None:
    _, model = small_model("test_centred")

    class Tight(CentredRunner):
        def reduce_tile(self, tiles, state, windows, precision):
            if tiles[IMAGE].shape[-1] > 20:
                raise RuntimeError("CUDA out of memory")
            return super().reduce_tile(tiles, state, windows, precision)

    image = torch.rand(1, 3, 50, 45)
    runner = Tight(model, 1, torch.device("cpu"), "fp32")
    warnings = []
    out = upscale_tiled(runner, image, TileSpec(tile=32, overlap=2, min_tile=4, batch=2), warn=warnings.append)
    with torch.no_grad():
        torch.testing.assert_close(out, model(image), atol=1e-6, rtol=0)
    assert any("out of memory" in w for w in warnings)


# ----- registry-driven tests: every registered architecture, at its small config ---------------------


@pytest.mark.parametrize("arch_id", ALL_ARCHITECTURES)
def test_checkpoints_round_trip(arch_id: str, tmp_path: Path) -> None:
    descriptor, model = small_model(arch_id)
    path = save_small(arch_id, tmp_path)
    loaded, info = load_model(path)
    assert info.arch == arch_id and info.scale == descriptor.scale(model.config)
    saved = model.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in loaded.state_dict().items()) and saved.keys() == loaded.state_dict().keys()
    upscaler = load_upscaler(str(path), device="cpu", precision="fp32")
    rgb = random_rgb(12, 10)
    options = options_for(descriptor, 12, 10)
    first = upscaler.upscale(rgb, 10 * upscaler.scale, 12 * upscaler.scale, "none", options=options)
    assert first.shape == (12 * upscaler.scale, 10 * upscaler.scale, 3) and np.isfinite(first).all()


def _lr_distance(changed: torch.Tensor, scale: int, y: int, x: int) -> int:
    """The farthest input-pixel distance (per axis) from (y, x) of any changed output pixel."""
    ys, xs = torch.nonzero(changed, as_tuple=True)
    return int(max((ys // scale - y).abs().max(), (xs // scale - x).abs().max()))


@pytest.mark.parametrize("arch_id", ALL_ARCHITECTURES)
def test_the_declared_receptive_radius_bounds_what_one_pixel_changes(arch_id: str) -> None:
    """Perturb one input pixel with the per-image state held fixed: no output pixel farther than the declared
    radius may change (the tiler's exactness rests on it), and the change must reach some way."""
    descriptor, model = small_model(arch_id)
    radius = descriptor.receptive_radius(model.config)
    scale = descriptor.scale(model.config)
    side = 2 * radius + 12
    side += side % 2
    image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(2))
    options = options_for(descriptor, side, side)
    runner = descriptor.runner(model, torch.device("cpu"), "fp32", options)
    extras = {e.name: TileInput(options.extras[e.name], None if e.at == WHOLE else (scale if e.at == AT_OUTPUT else 1))
              for e in descriptor.extra_inputs}
    spec = TileSpec(align=descriptor.size.multiple, minimum=descriptor.size.minimum)
    prepared = image_state(runner, image, spec, extras=extras)
    base = upscale_tiled(runner, image, spec, extras=extras, prepared=prepared)
    poked = image.clone()
    centre = side // 2
    poked[..., centre, centre] += 1.0
    changed = (upscale_tiled(runner, poked, spec, extras=extras, prepared=prepared) - base).abs().amax(1)[0] > 0
    measured = _lr_distance(changed, scale, centre, centre)
    assert 1 <= measured <= radius, f"{arch_id}: changes reach {measured} px, declared {radius}"


@pytest.mark.parametrize("arch_id", ALL_ARCHITECTURES)
def test_tiled_equals_untiled_at_the_receptive_radius(arch_id: str, tmp_path: Path) -> None:
    descriptor, model = small_model(arch_id)
    radius = descriptor.receptive_radius(model.config)
    path = save_small(arch_id, tmp_path)
    upscaler = load_upscaler(str(path), device="cpu", precision="fp32", overlap=radius)
    align = descriptor.size.multiple
    tile = -(-(radius + 6) // align) * align
    height, width = 2 * tile + 5, tile + 7
    rgb = random_rgb(height, width, seed=3)
    options = options_for(descriptor, height, width)
    out_size = (width * upscaler.scale, height * upscaler.scale)
    whole = upscaler.upscale(rgb, *out_size, "none", options=options)
    tiled = upscaler.upscale(rgb, *out_size, str(tile), options=options)
    np.testing.assert_allclose(tiled, whole, atol=2e-5, rtol=0)


@pytest.mark.parametrize("arch_id", ALL_ARCHITECTURES)
def test_a_streamed_output_equals_the_whole_float_output_converted(arch_id: str, tmp_path: Path) -> None:
    """With `convert`, rows are quantised as the tiles finish them (#26): the same pixels as quantising the
    float output, for grey and 16-bit planes too."""
    from upscale_cli.image_io import colour_planes

    descriptor, _ = small_model(arch_id)
    upscaler = load_upscaler(str(save_small(arch_id, tmp_path)), device="cpu", precision="fp32")
    align = descriptor.size.multiple
    tile = -(-(upscaler.overlap + 8) // align) * align
    height, width = 2 * tile + 5, tile + 7
    rgb = random_rgb(height, width, seed=4)
    options = options_for(descriptor, height, width)
    out_size = (width * upscaler.scale, height * upscaler.scale)
    assert upscaler.streams(width, height, *out_size)
    whole = upscaler.upscale(rgb, *out_size, str(tile), options=options)
    for grayscale, depth in ((False, 8), (True, 16)):
        convert = partial(colour_planes, grayscale=grayscale, depth=depth)
        streamed = upscaler.upscale(rgb, *out_size, str(tile), options=options, convert=convert)
        assert streamed.dtype == (np.uint16 if depth == 16 else np.uint8)
        np.testing.assert_array_equal(streamed, convert(whole))


@pytest.mark.parametrize("arch_id", ALL_ARCHITECTURES)
def test_inference_rewrites_at_load_change_no_output(arch_id: str, tmp_path: Path, monkeypatch) -> None:
    """`load_upscaler` rewrites the network for inference (#26: BatchNorm folded, activations in place, the
    architecture's own rewrite): the same outputs as the network as trained."""
    import upscale_cli.engine as engine
    from test_rewrite import randomise_statistics

    descriptor, model = small_model(arch_id)
    randomise_statistics(model)
    scale = descriptor.scale(model.config)
    path = tmp_path / f"folded_x{scale}.safetensors"
    save_checkpoint(path, model, CheckpointInfo(arch_id, scale, asdict(model.config), name=path.stem))
    rgb, options = random_rgb(20, 18, seed=5), options_for(descriptor, 20, 18)
    folded = load_upscaler(str(path), device="cpu", precision="fp32")
    assert not any(isinstance(m, nn.BatchNorm2d) and isinstance(prev, nn.Conv2d)
                   for seq in folded.module.modules() if isinstance(seq, nn.Sequential)
                   for prev, m in zip(seq, list(seq)[1:]))
    monkeypatch.setattr(engine, "prepare_for_inference", lambda module, for_inference: None)
    plain = load_upscaler(str(path), device="cpu", precision="fp32")
    size = (18 * folded.scale, 20 * folded.scale)
    np.testing.assert_allclose(folded.upscale(rgb, *size, "none", options=options),
                               plain.upscale(rgb, *size, "none", options=options), atol=2e-5, rtol=0)


@pytest.mark.parametrize("arch_id", ALL_ARCHITECTURES)
def test_odd_sizes_meet_the_size_requirements(arch_id: str, tmp_path: Path) -> None:
    descriptor, _ = small_model(arch_id)
    upscaler = load_upscaler(str(save_small(arch_id, tmp_path)), device="cpu", precision="fp32")
    for height, width in ((13, 11), (3, 5), (1, 1)):
        rgb = random_rgb(height, width)
        out = upscaler.upscale(rgb, width * upscaler.scale, height * upscaler.scale, "none",
                               options=options_for(descriptor, height, width))
        assert out.shape == (height * upscaler.scale, width * upscaler.scale, 3) and np.isfinite(out).all()


@pytest.mark.parametrize("arch_id", ALL_ARCHITECTURES)
def test_bf16_agrees_with_fp32(arch_id: str, tmp_path: Path) -> None:
    descriptor, _ = small_model(arch_id)
    path = save_small(arch_id, tmp_path)
    rgb = random_rgb(24, 20, seed=4)
    options = options_for(descriptor, 24, 20)
    outputs = {}
    for precision in ("fp32", "bf16"):
        upscaler = load_upscaler(str(path), device="cpu", precision=precision)
        outputs[precision] = upscaler.upscale(rgb, 20 * upscaler.scale, 24 * upscaler.scale, "none", options=options)
    error = math.sqrt(float(np.mean((outputs["bf16"] - outputs["fp32"]) ** 2)))
    signal = math.sqrt(float(np.mean(outputs["fp32"] ** 2)))
    assert error <= 0.03 * signal + 1e-3, f"{arch_id}: bf16 differs by {error:.4f} RMS on a signal of {signal:.4f}"


@pytest.mark.parametrize("arch_id", ALL_ARCHITECTURES)
def test_every_architecture_has_its_row_in_upscale_models(arch_id: str, tmp_path: Path, monkeypatch) -> None:
    from upscale_cli.cli.models import describe_models

    descriptor, model = small_model(arch_id)
    path = save_small(arch_id, tmp_path, name="mine")
    monkeypatch.setenv("UPSCALE_WEIGHTS", str(tmp_path))
    rows = [row for row in describe_models() if row["file"] == str(path)]
    assert len(rows) == 1
    row = rows[0]
    params = sum(p.numel() for p in model.parameters())
    assert (row["arch"], row["task"], row["scale"], row["params"], row["status"]) == (
        arch_id, descriptor.task, descriptor.scale(model.config), params, "ok")
