"""SRFlow: shapes, exact inverse and log-determinant of the whole flow, NLL training, sampling, tiling.

Models here are tiny (8-channel encoder of 1 block, hidden 8, K <= 2). Random flows are made by
initialising the ActNorms on data and then perturbing every parameter by 0.02 * N(0, 1): enough
that no layer is an identity, small enough that the reverse flow stays well conditioned (an
untrained flow perturbed more strongly explodes in reverse, as SRFlow's pitfalls describe).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.autograd.functional import jacobian

from upscale_cli.archs import get_architecture
from upscale_cli.archs.base import RunOptions
from upscale_cli.archs.srflow import (
    HR_NOISE_STD,
    SRFlow,
    SRFlowConfig,
    build_flow,
    SRFlowRunner,
    default_stack_blocks,
    receptive_radius,
)
from upscale_cli.checkpoint import CheckpointInfo, config_dict, load_model, read_info, save_checkpoint
from upscale_cli.flows import standard_normal_log_prob
from upscale_cli.tiler import TileSpec, make_windows, upscale_tiled
from upscale_cli.train.config import TrainConfig, apply_settings
from upscale_cli.train.loop import Trainer
from upscale_cli.train.recipes import make_recipe

TINY = {"steps": 1, "hidden": 8, "encoder_channels": 8, "encoder_blocks": 1, "stack_blocks": (0,),
        "transition_steps": 1}
TILE_TOLERANCE = 1e-5  # see test_tiled_sample_equals_untiled


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**overrides: object) -> SRFlowConfig:
    return SRFlowConfig(**{**TINY, **overrides})  # type: ignore[arg-type]


@torch.no_grad()
def perturb(module: torch.nn.Module, scale: float = 0.02, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def tiny_model(seed: int = 0, perturbation: float = 0.02, **overrides: object) -> SRFlow:
    """An eval-mode tiny SRFlow with data-initialised ActNorms and every parameter perturbed."""
    torch.manual_seed(seed)
    model = SRFlow(tiny_config(**overrides))
    generator = torch.Generator().manual_seed(seed + 100)
    scale = model.config.scale
    hr = torch.rand(2, 3, 8 * scale, 8 * scale, generator=generator)
    model.initialize(hr, torch.rand(2, 3, 8, 8, generator=generator))
    perturb(model, perturbation, seed)
    return model.eval()


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# --- configuration and shapes -------------------------------------------------------------------------


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="scale must be 4 or 8"):
        SRFlowConfig(scale=2)
    with pytest.raises(ValueError, match="levels"):
        SRFlowConfig(levels=4)
    with pytest.raises(ValueError, match="not blocks"):
        SRFlowConfig(encoder_blocks=8)  # the default stack (1, 5, 10, 15) needs 16 blocks
    with pytest.raises(ValueError, match="steps"):
        tiny_config(steps=0)
    with pytest.raises(ValueError, match="duplicates"):
        tiny_config(encoder_blocks=4, stack_blocks=(1, 1))
    assert default_stack_blocks(16) == (1, 5, 10, 15) and default_stack_blocks(1) == (0,)
    # a config survives the checkpoint's JSON (tuples come back as lists)
    config = get_architecture("srflow").make_config(json.loads(json.dumps(config_dict(tiny_config()))))
    assert config == tiny_config()


def test_paper_size_builds_with_the_papers_flow_parameter_count() -> None:
    model = SRFlow(SRFlowConfig())  # L=3, K=16, hidden 64, 320-channel conditions
    assert sum(p.numel() for p in model.flow.parameters()) == 22_567_248  # spec 2.6 [computed]
    assert model.config.cond_channels == 320
    assert receptive_radius(model.config) >= 16


@pytest.mark.parametrize("scale", [4, 8])
def test_shapes(scale: int) -> None:
    model = tiny_model(scale=scale, levels=3 if scale == 4 else 4)
    lr = rand(2, 3, 6, 4)
    hr = rand(2, 3, 6 * scale, 4 * scale, seed=2)
    conds = model.features(lr)
    assert [tuple(c.shape) for c in conds] == [
        (2, 16, int(6 * scale / 2**lv), int(4 * scale / 2**lv)) for lv in range(1, model.config.levels + 1)]
    latents, logdet = model.encode(hr, lr)
    assert [tuple(z.shape[1:]) for z in latents] == model.latent_shapes(6, 4)
    assert sum(z[0].numel() for z in latents) == hr[0].numel()  # dimension is preserved
    assert logdet.shape == (2,)
    if scale == 4:
        assert model.latent_shapes(6, 4) == [(6, 12, 8), (96, 3, 2)]
    nll = model.nll_bits_per_dim(hr, lr, noise=True)
    assert nll.shape == (2,) and torch.isfinite(nll).all()
    assert model.sample(lr, tau=0.8).shape == (2, 3, 6 * scale, 4 * scale)


def test_nll_is_the_sum_of_logdet_and_every_prior() -> None:
    model = tiny_model()
    hr, lr = rand(1, 3, 16, 16), rand(1, 3, 4, 4, seed=2)
    latents, logdet = model.encode(hr, lr)
    assert len(latents) == 2  # the split's eps and the top z
    log_p = logdet + standard_normal_log_prob(latents[0]) + standard_normal_log_prob(latents[1])
    expected = -log_p / (3 * 16 * 16 * torch.log(torch.tensor(2.0)))
    torch.testing.assert_close(model.nll_bits_per_dim(hr, lr), expected)
    a = model.nll_bits_per_dim(hr, lr, noise=True, generator=torch.Generator().manual_seed(0))
    b = model.nll_bits_per_dim(hr, lr, noise=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, expected)
    assert HR_NOISE_STD == pytest.approx(4 / (3**0.5 * 255))


# --- the whole flow: exact inverse, log-determinant ----------------------------------------------------


def test_whole_flow_round_trip() -> None:
    model = tiny_model(steps=2, transition_steps=2)
    hr, lr = rand(2, 3, 32, 24), rand(2, 3, 8, 6, seed=2)
    conds = model.features(lr)
    with torch.no_grad():
        latents, logdet = model.encode(hr, conds=conds)
        back, logdet_back = model.decode(latents, conds)
    torch.testing.assert_close(back, hr, atol=1e-4, rtol=0)
    torch.testing.assert_close(logdet + logdet_back, torch.zeros(2), atol=1e-3, rtol=0)
    assert (latents[-1].abs().mean() > 0.1) and logdet.abs().min() > 1.0


def test_whole_flow_logdet_matches_autograd_jacobian() -> None:
    torch.manual_seed(0)
    config = tiny_config(steps=2, transition_steps=1)
    flow = build_flow(config).double()
    hr = rand(1, 3, 8, 8).double()
    conds = [torch.randn(1, config.cond_channels, 8 // 2**lv, 8 // 2**lv, dtype=torch.float64)
             for lv in range(1, 4)]
    flow.train()
    with torch.no_grad():  # ActNorm initialisation on a batch (one 8x8 image has a single pixel at LR/2)
        flow(rand(4, 3, 8, 8, seed=3).double(), [torch.randn(4, *c.shape[1:], dtype=torch.float64) for c in conds])
    perturb(flow, 0.05)
    flow.eval()

    def encode(flat: torch.Tensor) -> torch.Tensor:
        latents, _ = flow(flat.view_as(hr), conds)
        return torch.cat([z.flatten() for z in latents])

    matrix = jacobian(encode, hr.flatten())
    assert matrix.shape == (192, 192)
    _, logdet = flow(hr, conds)
    assert logdet.item() == pytest.approx(torch.linalg.slogdet(matrix)[1].item(), abs=1e-7, rel=1e-9)


# --- training -----------------------------------------------------------------------------------------


def train_config(data: Path, init: Path, **overrides: object) -> TrainConfig:
    base = TrainConfig(model="srflow", data=str(data), scale=4, iters=30, batch=4, patch=32, lr=2e-3,
                       val_every=1000, log_every=5, precision="fp32", init=str(init), seed=3,
                       arch={"steps": 2, "hidden": 8, "transition_steps": 1})
    return apply_settings(base, overrides)


def test_nll_falls_in_a_short_training_run(image_folder: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    val = tmp_path / "val"
    val.mkdir()
    (val / "a.png").write_bytes((image_folder / "img_0.png").read_bytes())
    config = train_config(image_folder, tiny_checkpoint, val=str(val), val_every=30)
    trainer = Trainer(config, tmp_path / "run", "upscale train --model srflow")  # the recipe's own validator
    exported = trainer.run()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 6 and all(r["skipped"] == 0 for r in log if "loss" in r)
    assert losses[-1] < losses[0] - 0.3, losses  # bits/dim
    figures = [r["val"] for r in log if "val" in r][0]
    assert set(figures) == {"nll_bpd", "psnr_y_tau0", "lr_psnr_tau0", "psnr_y_tau08", "lr_psnr_tau08",
                            "diversity_tau08"}
    assert all(torch.isfinite(torch.tensor(v)) for v in figures.values())
    assert figures["diversity_tau08"] > 0
    info = read_info(exported)
    assert info.arch == "srflow" and info.training["recipe"] == "srflow"
    model, _ = load_model(exported)
    assert isinstance(model, SRFlow) and model.initialized
    out = model.sample(rand(1, 3, 5, 7), tau=0.8, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 20, 28) and torch.isfinite(out).all()


def test_resume_across_the_unfreezing_is_bit_exact(image_folder: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    import os
    import signal

    from upscale_cli.train.loop import TrainingInterrupted

    config = train_config(image_folder, tiny_checkpoint, iters=6, batch=2, log_every=1)
    straight = Trainer(config, tmp_path / "straight", "test")
    straight.run()
    first = Trainer(config, tmp_path / "halves", "test")
    original = first.recipe.train_step

    def step_then_signal(*args: object, **kwargs: object) -> dict[str, float]:
        result = original(*args, **kwargs)  # type: ignore[arg-type]
        if first.step + 1 == 3:  # the encoder unfreezes at step 3 of 6
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    first.recipe.train_step = step_then_signal  # type: ignore[method-assign]
    with pytest.raises(TrainingInterrupted):
        first.run()
    second = Trainer(config, tmp_path / "halves", "test")
    second.run(resume=True)
    a, b = straight.recipe.generator.state_dict(), second.recipe.generator.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ema_a, ema_b = straight.ema.shadow.state_dict(), second.ema.shadow.state_dict()
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def _frozen_per_step(trainer: Trainer, stop_at: int | None = None) -> list[bool]:
    """Run `trainer` (resuming when it has a state) and list whether the encoder was frozen at each step;
    SIGTERM after step `stop_at - 1`."""
    import os
    import signal

    from upscale_cli.train.loop import TrainingInterrupted

    recipe = trainer.recipe
    frozen: list[bool] = []
    original = recipe.train_step

    def record(*args: object, **kwargs: object) -> dict[str, float]:
        result = original(*args, **kwargs)  # type: ignore[arg-type]
        frozen.append(bool(recipe.frozen))  # type: ignore[attr-defined]
        if trainer.step + 1 == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    recipe.train_step = record  # type: ignore[method-assign]
    if stop_at is None:
        trainer.run(resume=trainer.state_path.exists())
    else:
        with pytest.raises(TrainingInterrupted):
            trainer.run(resume=trainer.state_path.exists())
    return frozen


def test_resume_may_unfreeze_the_encoder_earlier_and_never_freezes_it_again(
        image_folder: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`encoder_frozen_fraction` may change on resume; raising `iters` after the unfreezing (which moves
    the freeze point past the current step) keeps the encoder training."""
    kept_frozen = train_config(image_folder, tiny_checkpoint, iters=4, batch=2, encoder_frozen_fraction=1.0)
    assert _frozen_per_step(Trainer(kept_frozen, tmp_path / "earlier", "test"), stop_at=2) == [True, True]
    earlier = apply_settings(kept_frozen, {"encoder_frozen_fraction": 0.5})
    assert _frozen_per_step(Trainer(earlier, tmp_path / "earlier", "test")) == [False, False]

    halfway = train_config(image_folder, tiny_checkpoint, iters=4, batch=2, encoder_frozen_fraction=0.5)
    assert _frozen_per_step(Trainer(halfway, tmp_path / "longer", "test"), stop_at=3) == [True, True, False]
    longer = apply_settings(halfway, {"iters": 8})  # 0.5 of 8: the freeze point moves to step 4 > 3
    assert _frozen_per_step(Trainer(longer, tmp_path / "longer", "test")) == [False] * 5


def test_bf16_runs_put_the_parameter_networks_in_bf16_unless_told_not_to(
        image_folder: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    from upscale_cli.flows import ParamNet

    def param_net_dtypes(**overrides: object) -> set[object]:
        run_dir = tmp_path / f"run{len(overrides)}"
        config = train_config(image_folder, tiny_checkpoint, iters=1, batch=2, log_every=1, precision="bf16",
                              **overrides)
        trainer = Trainer(config, run_dir, "test")
        trainer.run()
        log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        assert [r["skipped"] for r in log if "loss" in r] == [0]
        return {m.compute_dtype for m in trainer.recipe.generator.modules() if isinstance(m, ParamNet)}

    assert param_net_dtypes() == {torch.bfloat16}
    assert param_net_dtypes(param_nets_fp32=True) == {None}


def test_encoder_frozen_then_trained_and_non_finite_steps_skipped(image_folder: Path, tiny_checkpoint: Path) -> None:
    import contextlib

    from upscale_cli.train.data import PatchSampler

    config = train_config(image_folder, tiny_checkpoint, iters=4, encoder_frozen_fraction=0.5)
    recipe = make_recipe(config, lambda module: module)
    srresnet, _ = load_model(tiny_checkpoint)
    assert torch.equal(recipe.generator.encoder.head[0].weight, srresnet.head[0].weight)  # init loaded
    sampler = PatchSampler(image_folder, config.patch, config.scale, config.batch, seed=0)

    def snapshot() -> tuple[torch.Tensor, torch.Tensor]:
        gen = recipe.generator
        flow_weight = gen.flow.levels[0].steps.layers[0].conv.weight
        return gen.encoder.head[0].weight.detach().clone(), flow_weight.detach().clone()

    def step(index: int) -> dict[str, float]:
        return recipe.train_step(sampler.next_batch(), index, contextlib.nullcontext)

    assert not recipe.generator.initialized
    encoder0, flow0 = snapshot()
    assert step(0)["skipped"] == 0.0
    assert recipe.generator.initialized
    encoder1, flow1 = snapshot()
    assert torch.equal(encoder1, encoder0) and not torch.equal(flow1, flow0)  # frozen encoder, flow learns

    batch = sampler.next_batch()
    batch.hr[0, 0, 0, 0] = float("nan")
    figures = recipe.train_step(batch, 1, contextlib.nullcontext)
    assert figures["skipped"] == 1.0 and recipe.skipped_total == 1
    encoder2, flow2 = snapshot()
    assert torch.equal(flow2, flow1)  # no optimiser step on a non-finite loss

    step(2)
    encoder3, _ = snapshot()
    assert not torch.equal(encoder3, encoder0)  # unfrozen after half of the iterations
    assert recipe.state_dict()["skipped_total"] == 1


def test_the_encoder_warms_up_after_unfreezing(image_folder: Path, tiny_checkpoint: Path) -> None:
    """With `encoder_warmup` N, the first trained step moves the encoder 1/N of the way a run without
    warm-up moves it from the same state, and the flow the same; the ramp reaches 1 after N steps."""
    import contextlib
    import copy

    from upscale_cli.train.data import PatchSampler

    config = train_config(image_folder, tiny_checkpoint, iters=4, encoder_frozen_fraction=0.5)
    at_once = make_recipe(config, lambda module: module)
    sampler = PatchSampler(image_folder, config.patch, config.scale, config.batch, seed=0)
    at_once.train_step(sampler.next_batch(), 0, contextlib.nullcontext)  # frozen; initialises ActNorm
    warmed = make_recipe(apply_settings(config, {"encoder_warmup": 4}), lambda module: module)
    warmed.load_state_dict(copy.deepcopy(at_once.state_dict()))

    def weights(recipe: Any) -> tuple[torch.Tensor, torch.Tensor]:
        gen = recipe.generator
        flow_weight = gen.flow.levels[0].steps.layers[0].conv.weight
        return gen.encoder.head[0].weight.detach().clone(), flow_weight.detach().clone()

    encoder0, flow0 = weights(at_once)
    batch = sampler.next_batch()
    for recipe in (at_once, warmed):
        torch.manual_seed(1)  # the same dequantisation noise
        assert recipe.train_step(batch, 2, contextlib.nullcontext)["skipped"] == 0.0  # step 2: unfrozen
    (encoder_full, flow_full), (encoder_warm, flow_warm) = weights(at_once), weights(warmed)
    assert not torch.equal(encoder_full, encoder0)
    torch.testing.assert_close(encoder_warm - encoder0, (encoder_full - encoder0) / 4, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(flow_warm, flow_full)
    assert [warmed.encoder_update_fraction(s) for s in (2, 3, 4, 5, 9)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert [at_once.encoder_update_fraction(s) for s in (2, 3)] == [1.0, 1.0]
    with pytest.raises(ValueError, match="encoder_warmup"):
        make_recipe(apply_settings(config, {"encoder_warmup": -1}), lambda module: module)


def test_recipe_rejects_patches_off_the_latent_grid(image_folder: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        make_recipe(train_config(image_folder, tiny_checkpoint, patch=20), lambda m: m)
    with pytest.raises(ValueError, match="contradicts"):
        make_recipe(train_config(image_folder, tiny_checkpoint, arch={"encoder_channels": 16}), lambda m: m)


# --- sampling -------------------------------------------------------------------------------------------


def test_uninitialised_model_refuses_to_sample() -> None:
    model = SRFlow(tiny_config()).eval()
    with pytest.raises(RuntimeError, match="untrained"):
        model.sample(rand(1, 3, 4, 4), tau=0.5)


def test_temperature_and_seeds() -> None:
    model = tiny_model()
    lr = rand(1, 3, 8, 8)
    mean = model.sample(lr, tau=0.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mean, model.sample(lr, tau=0.0, generator=torch.Generator().manual_seed(2)))
    assert torch.equal(mean, model(lr))  # forward is the tau = 0 output

    def draw(tau: float, seed: int) -> torch.Tensor:
        return model.sample(lr, tau=tau, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(0.8, 5), draw(0.8, 5))
    assert (draw(0.8, 5) - draw(0.8, 6)).abs().max() > 0.05

    def spread(tau: float) -> float:
        return torch.stack([draw(tau, seed) for seed in range(4)]).std(dim=0).mean().item()

    spreads = [spread(tau) for tau in (0.0, 0.3, 0.6, 0.9)]
    assert spreads[0] == 0.0
    assert spreads == sorted(spreads) and spreads[-1] > 2 * spreads[1], spreads


def test_odd_sized_lr_is_padded_and_cropped() -> None:
    model = tiny_model()
    lr = rand(1, 3, 7, 9)
    out = model.sample(lr, tau=0.8, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 28, 36)
    padded = torch.nn.functional.pad(lr, (0, 1, 0, 1), mode="reflect")
    noise = model.draw_noise(8, 10, 0.8, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, model.sample(padded, noise=noise)[..., :28, :36])
    runner = SRFlowRunner(model, "cpu", "fp32", tau=0.8, seed=0)
    torch.testing.assert_close(upscale_tiled(runner, lr, TileSpec(tile=None, overlap=0, align=2)), out, atol=1e-6, rtol=0)
    assert model.sample(rand(1, 3, 1, 3), tau=0.5).shape == (1, 3, 4, 12)  # too small to reflect


def test_tiled_sample_equals_untiled() -> None:
    """With overlap >= receptive_radius (16 LR px for this config) every tile sees all the LR pixels and
    noise its region depends on, so tiles agree with the whole image up to float32 rounding: convolutions
    over different window sizes sum in a different order (~1e-7 relative), which the reverse flow's
    divisions by scales < 1 amplify. Measured: ~4e-7. The tolerance 1e-5 has a 25x margin and is ~400x
    below one 8-bit step; an overlap below the radius gives errors > 1e-2 (checked below).

    The LR image is 64x64 (above the usual 32x32 test size) because a tiling is only meaningful when
    the image is several receptive radii wide; the 8-channel model keeps this well under a second.
    """
    model = tiny_model()
    radius = receptive_radius(model.config)
    assert radius == 16
    image = rand(1, 3, 64, 64, seed=7)
    runner = SRFlowRunner(model, "cpu", "fp32", tau=0.8, seed=11)
    whole = upscale_tiled(runner, image, TileSpec(tile=None, overlap=radius, align=2))
    direct = model.sample(image, noise=model.draw_noise(64, 64, 0.8, torch.Generator().manual_seed(11)))
    torch.testing.assert_close(whole, direct, atol=1e-6, rtol=0)
    for tile in (32, 40):
        tiled = upscale_tiled(runner, image, TileSpec(tile=tile, overlap=radius, align=2, batch=2))
        assert (tiled - whole).abs().max().item() < TILE_TOLERANCE, tile
    seams = upscale_tiled(runner, image, TileSpec(tile=32, overlap=6, align=2))
    assert (seams - whole).abs().max().item() > 1e-2
    other_seed = upscale_tiled(SRFlowRunner(model, "cpu", "fp32", tau=0.8, seed=12), image, TileSpec(tile=None, overlap=radius, align=2))
    assert (other_seed - whole).abs().max().item() > 0.05


def _counting_features(model: SRFlow, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the encoder's runs on `model` (one entry per call)."""
    calls: list[int] = []
    features = model.features

    def counted(lr: torch.Tensor) -> list[torch.Tensor]:
        calls.append(1)
        return features(lr)

    monkeypatch.setattr(model, "features", counted)
    return calls


def test_samples_of_one_image_run_the_encoder_once_per_tile(monkeypatch: pytest.MonkeyPatch) -> None:
    model, image = tiny_model(), rand(1, 3, 40, 36, seed=3)
    spec = TileSpec(tile=24, overlap=16, align=2)
    fresh = [upscale_tiled(SRFlowRunner(tiny_model(), "cpu", "fp32", tau=0.8, seed=seed), image, spec)
             for seed in (0, 1, 2)]  # separate models: nothing is reused
    calls = _counting_features(model, monkeypatch)
    samples = [upscale_tiled(SRFlowRunner(model, "cpu", "fp32", tau=0.8, seed=seed), image, spec) for seed in (0, 1, 2)]
    assert len(calls) == len(make_windows(40, 36, 24, 16, align=2)) > 1  # the first sample's tiles only
    for sample, expected in zip(samples, fresh):
        assert torch.equal(sample, expected)
    assert (samples[0] - samples[1]).abs().max() > 0.05  # different seeds still differ


def test_the_condition_cache_never_serves_another_image_or_changed_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    model, spec = tiny_model(), TileSpec(tile=None, overlap=0, align=2)
    image = rand(1, 3, 16, 16, seed=4)
    calls = _counting_features(model, monkeypatch)
    first = upscale_tiled(SRFlowRunner(model, "cpu", "fp32", tau=0.0, seed=0), image, spec)
    poked = image.clone()
    poked[..., 5, 5] += 0.5
    changed = upscale_tiled(SRFlowRunner(model, "cpu", "fp32", tau=0.0, seed=0), poked, spec)
    assert len(calls) == 2 and not torch.equal(changed, first)
    with torch.no_grad():
        next(model.encoder.parameters()).mul_(1.5)  # an in-place update, as an optimizer makes
    retrained = upscale_tiled(SRFlowRunner(model, "cpu", "fp32", tau=0.0, seed=0), poked, spec)
    assert len(calls) == 3 and not torch.equal(retrained, changed)


def test_runner_refuses_unaligned_windows() -> None:
    runner = SRFlowRunner(tiny_model(), "cpu", "fp32", tau=0.5, seed=0)
    with pytest.raises(ValueError, match="aligned"):
        upscale_tiled(runner, rand(1, 3, 20, 20), TileSpec(tile=9, overlap=3))  # align=1: odd tile origins


def test_receptive_radius_bounds_the_influence_of_an_lr_pixel() -> None:
    model = tiny_model()
    radius, scale = receptive_radius(model.config), model.config.scale
    lr = rand(1, 3, 48, 48)
    changed = lr.clone()
    changed[..., 24, 24] += 0.5
    diff = (model.sample(changed, tau=0.0) - model.sample(lr, tau=0.0)).abs().amax(dim=(0, 1))
    rows, cols = torch.nonzero(diff > 0, as_tuple=True)
    assert len(rows) > 0
    assert rows.min() >= (24 - radius) * scale and rows.max() < (25 + radius) * scale
    assert cols.min() >= (24 - radius) * scale and cols.max() < (25 + radius) * scale


def test_bf16_encoder_and_parameter_networks_stay_close_to_fp32() -> None:
    model = tiny_model()
    image = rand(1, 3, 16, 16)
    fp32 = upscale_tiled(SRFlowRunner(model, "cpu", "fp32", tau=0.8, seed=0), image, TileSpec(tile=None, overlap=0, align=2))
    bf16 = upscale_tiled(SRFlowRunner(model, "cpu", "bf16", tau=0.8, seed=0), image, TileSpec(tile=None, overlap=0, align=2), precision="bf16")
    assert torch.isfinite(bf16).all()
    assert (bf16 - fp32).abs().mean().item() < 0.02


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = tiny_model()
    path = tmp_path / "srflow_x4.safetensors"
    save_checkpoint(path, model, CheckpointInfo("srflow", 4, config_dict(model.config), name="srflow_x4"))
    loaded, info = load_model(path)
    assert info.arch == "srflow" and loaded.initialized
    lr = rand(1, 3, 6, 6)
    a = model.sample(lr, tau=0.7, generator=torch.Generator().manual_seed(3))
    b = loaded.sample(lr, tau=0.7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_engine_and_cli_sample_srflow_by_seed_and_tau(tmp_path: Path) -> None:
    """`upscale lr.png --model srflow.safetensors --tau T --seed S`: same seed same image, any tile size."""
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from conftest import smooth_image
    from upscale_cli.cli import cli
    from upscale_cli.engine import load_upscaler

    model = tiny_model()
    path = tmp_path / "flow_x4.safetensors"
    save_checkpoint(path, model, CheckpointInfo("srflow", 4, config_dict(model.config), name="flow_x4"))
    upscaler = load_upscaler(str(path), precision="fp32")
    assert upscaler.stochastic and upscaler.default_tau is not None
    rgb = smooth_image(21, 26, 4).astype(np.float32) / 255  # odd height: padded to even, then cropped
    first = upscaler.upscale(rgb, 104, 84, "none", options=RunOptions(5, 0.8))
    assert first.shape == (84, 104, 3)
    assert np.array_equal(first, upscaler.upscale(rgb, 104, 84, "none", options=RunOptions(5, 0.8)))
    assert not np.array_equal(first, upscaler.upscale(rgb, 104, 84, "none", options=RunOptions(6, 0.8)))
    assert np.array_equal(upscaler.upscale(rgb, 104, 84, "none", options=RunOptions(1, 0.0)),
                          upscaler.upscale(rgb, 104, 84, "none", options=RunOptions(2, 0.0)))
    Image.fromarray(smooth_image(21, 26, 4)).save(tmp_path / "lr.png")
    result = CliRunner().invoke(cli, [str(tmp_path / "lr.png"), "-m", str(path), "--tau", "0.8", "--seed", "5",
                                      "--precision", "fp32", "-o", str(tmp_path / "out"),
                                      "--name", "{stem}_t{tau}_s{seed}.{ext}"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out" / "lr_t0.8_s5.png") as written:
        assert np.array_equal(np.asarray(written), (first.clip(0, 1) * 255).round().astype(np.uint8))
        assert written.getexif().get(0x0131).endswith("; 104x84; fp32; seed 5; tau 0.8")


def test_sample_command_writes_seeds_taus_grid_and_std_map(tmp_path: Path) -> None:
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from conftest import smooth_image
    from upscale_cli.cli import cli

    model = tiny_model()
    path = tmp_path / "flow_x4.safetensors"
    save_checkpoint(path, model, CheckpointInfo("srflow", 4, config_dict(model.config), name="flow_x4"))
    Image.fromarray(smooth_image(12, 14, 2)).save(tmp_path / "lr.png")
    args = [str(tmp_path / "lr.png"), "-m", str(path), "-n", "3", "--tau", "0,0.8", "--seed", "0",
            "--precision", "fp32", "-o", str(tmp_path / "s"), "--grid", str(tmp_path / "grid.png"),
            "--std-map", str(tmp_path / "std.png"), "--json"]
    result = CliRunner().invoke(cli, ["sample", *args])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == sorted(f"lr_tau{t}_seed{s}.png" for t in ("0", "0.8") for s in (0, 1, 2))
    def load(name: str) -> np.ndarray:
        with Image.open(tmp_path / "s" / name) as image:
            return np.asarray(image).astype(float)
    assert np.array_equal(load("lr_tau0_seed0.png"), load("lr_tau0_seed2.png"))  # tau 0 is deterministic
    assert not np.array_equal(load("lr_tau0.8_seed0.png"), load("lr_tau0.8_seed1.png"))  # seeds differ
    with Image.open(tmp_path / "s" / "lr_tau0.8_seed2.png") as sample:  # each sample says how to draw it again
        assert sample.getexif().get(0x0131).endswith("; 56x48; fp32; seed 2; tau 0.8")
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.width > 5 * 56 and grid.height > 2 * 48  # 5 columns (3 samples, bicubic, LR), 2 rows
    with Image.open(tmp_path / "std.png") as std:
        assert std.size == (56, 48) and np.asarray(std).std() > 0
    records = [json.loads(l) for l in result.stdout.splitlines()]
    # the std-map's scale: white = the 99th percentile of the per-pixel spread of the tau-0.8 samples
    note = next(r["note"] for r in records if r.get("output") == str(tmp_path / "std.png"))
    spread = np.stack([load(f"lr_tau0.8_seed{s}.png") for s in (0, 1, 2)]).std(axis=0).mean(axis=-1)
    white = float(note.split("white = ")[1].split(" levels")[0])
    assert note.startswith("tau 0.8;") and abs(white - np.percentile(spread, 99)) < 0.5  # 8-bit rounding
    summary = records[-1]["summary"]
    assert summary["ok"] == 8 and summary["failed"] == 0
    again = CliRunner().invoke(cli, ["sample", *args])  # the outputs exist now: nothing is overwritten
    assert again.exit_code == 1 and "exists" in again.output
    resumed = CliRunner().invoke(cli, ["sample", *args[:9], "-o", str(tmp_path / "s"), "--skip-existing"])
    assert resumed.exit_code == 0 and "skipped" in resumed.output  # every sample made alike: nothing to do
    deterministic = CliRunner().invoke(cli, ["sample", str(tmp_path / "lr.png"), "-m", "bicubic"])
    assert deterministic.exit_code == 2 and "deterministic" in deterministic.output


def test_bench_quality_scores_srflow_samples(tmp_path: Path) -> None:
    """bench quality on a real (tiny) SRFlow: diversity is 0 at tau 0, positive at tau 0.8; LR-PSNR reported;
    the NLL is that of the HR cropped to a multiple of 8 px (52x44 -> 48x40) with the seed's noise, at every tau."""
    from click.testing import CliRunner
    from PIL import Image

    from conftest import smooth_image
    from upscale_cli.cli import cli
    from upscale_cli.resize import imresize, quantize

    model = tiny_model()
    path = tmp_path / "flow_x4.safetensors"
    save_checkpoint(path, model, CheckpointInfo("srflow", 4, config_dict(model.config), name="flow_x4"))
    (tmp_path / "set" / "HR").mkdir(parents=True)
    pixels = smooth_image(52, 44, 1)
    Image.fromarray(pixels).save(tmp_path / "set" / "HR" / "a.png")
    result = CliRunner().invoke(cli, ["bench", "quality", "--data", str(tmp_path / "set"), "-m", str(path),
                                      "--tau", "0,0.8", "--samples", "2", "--seed", "5",
                                      "--json", str(tmp_path / "q.json")])
    assert result.exit_code == 0, result.output
    assert "NLL bits/dim" in result.output
    rows = {(r["model"], r["tau"]): r for r in json.loads((tmp_path / "q.json").read_text())["results"]}
    assert rows[("flow_x4", 0.0)]["mean"]["diversity"] == 0
    assert rows[("flow_x4", 0.8)]["mean"]["diversity"] > 0
    assert all(r["mean"]["lr_psnr"] > 0 for r in rows.values())
    assert "nll_bpd" not in rows[("bicubic", None)]["mean"]
    hr = torch.from_numpy(pixels).permute(2, 0, 1).float().div(255)
    lr = quantize(imresize(hr, scale=0.25))
    noise = torch.randn((1, 3, 48, 40), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model.nll_bits_per_dim(hr[None, :, :48, :40] + HR_NOISE_STD * noise, lr[None, :, :12, :10]).item()
    for tau in (0.0, 0.8):
        assert rows[("flow_x4", tau)]["mean"]["nll_bpd"] == pytest.approx(expected, abs=1e-4)
        assert rows[("flow_x4", tau)]["images"]["a"]["nll_bpd"] == pytest.approx(expected, abs=1e-4)


def test_two_process_ddp_srflow_ranks_agree_across_the_encoder_unfreeze(
        image_folder: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """DDP with the encoder frozen for the first half, then trained jointly: both ranks end identical."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from test_train import WORKER

    config = train_config(image_folder, tiny_checkpoint, iters=6, log_every=1, encoder_frozen_fraction=0.5)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    run_dir = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(worker), config.to_json(), str(run_dir)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = load_file(str(run_dir / "rank0.safetensors")), load_file(str(run_dir / "rank1.safetensors"))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    initial = load_file(str(tiny_checkpoint))
    assert not torch.equal(rank0["encoder.head.0.weight"], initial["head.0.weight"])  # the encoder did train
