"""DASR: the paper's size, per-sample degradation-aware convolutions, one representation per image."""

from __future__ import annotations

import pytest
import torch

from upscale_cli.archs.dasr import (DASR, REPRESENTATION_PIXELS, DAConv, DASRConfig, DASRRunner, representation,
                                    view_crops)
from upscale_cli.tiler import TileSpec, upscale_tiled

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_papers_configuration_has_its_parameter_count() -> None:
    model = DASR(DASRConfig())  # 64 channels, 5 groups of 5 blocks, x4
    encoder = sum(p.numel() for p in model.encoder.parameters())
    probe = sum(p.numel() for p in model.probe.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert encoder == 1_147_200  # spec 3.2, convs and BatchNorm
    assert total - encoder - probe == 4_690_499  # G, spec 3.4's 4.69 M
    assert round((total - probe) / 1e6, 2) == 5.84  # the paper's Table 3


def test_the_da_conv_applies_each_samples_own_kernel() -> None:
    torch.manual_seed(0)
    layer = DAConv(8, 4)
    features = torch.randn(1, 8, 10, 10).expand(3, -1, -1, -1).contiguous()  # the same features three times
    r = torch.randn(3, 8)
    out = layer(features, r)
    assert not torch.allclose(out[0], out[1], atol=1e-3) and not torch.allclose(out[1], out[2], atol=1e-3)
    one_by_one = torch.cat([layer(features[i : i + 1], r[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(out, one_by_one, atol=1e-6, rtol=0)
    # Against the definition, sample by sample: its own 3x3 kernel per channel, then LReLU and the 1x1 conv,
    # plus the input scaled by its own channel attention.
    for i in range(3):
        kernels = layer.kernel(r[i : i + 1]).view(8, 1, 3, 3)
        depthwise = torch.nn.functional.conv2d(features[i : i + 1], kernels, padding=1, groups=8)
        expected = layer.conv(torch.nn.functional.leaky_relu(depthwise, 0.1))
        expected = expected + features[i : i + 1] * layer.attention(r[i : i + 1, :, None, None])
        torch.testing.assert_close(out[i : i + 1], expected, atol=1e-6, rtol=0)


def small(seed: int = 0) -> DASR:
    torch.manual_seed(seed)
    model = DASR(DASRConfig(channels=16, groups=1, blocks=2)).eval()
    with torch.no_grad():
        model.encoder.train()(torch.rand(2, 3, 24, 24))
    return model.eval()


def test_the_representation_is_computed_once_per_image_and_tiled_equals_untiled(monkeypatch) -> None:
    model = small()
    runner = DASRRunner(model, 4, torch.device("cpu"), "fp32")
    calls = []
    forward = model.encoder.forward
    monkeypatch.setattr(model.encoder, "forward", lambda x: calls.append(tuple(x.shape)) or forward(x))
    image = torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(1))
    whole = upscale_tiled(runner, image, TileSpec())
    tiled = upscale_tiled(runner, image, TileSpec(tile=16, overlap=model.config.groups * 9 + 5))
    assert calls == [(1, 3, 40, 36), (1, 3, 40, 36)]  # once per image, on all of it, for any tiling
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(whole, model(image), atol=1e-5, rtol=0)


def test_a_very_large_image_is_represented_by_a_bounded_view() -> None:
    model = small()
    height, width = 120, 100
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(representation(model, image, height * width), model.encoder(image))  # fits: all of it
        limit = 16 * 16 * 16
        crops = view_crops(height, width, limit)
        assert len(crops) == 16 and sum(side * side for _, _, side in crops) <= limit
        assert {(top, left) for top, left, _ in crops} >= {(0, 0), (height - 16, width - 16)}  # spread to the corners
        bounded = representation(model, image, limit)
        expected = torch.stack([model.encoder(image[..., t : t + s, l : l + s])[0] for t, l, s in crops]).mean(0)
        torch.testing.assert_close(bounded[0], expected)
        whole = model.encoder(image)
        assert torch.cosine_similarity(bounded, whole).item() > 0.99  # a stationary image: the view agrees
    assert REPRESENTATION_PIXELS >= 1024 * 1024


# ----- the recipe ------------------------------------------------------------------------------------


def dasr_config(data, **overrides):
    from upscale_cli.train.config import TrainConfig, apply_settings

    base = TrainConfig(model="dasr", data=str(data), scale=4, iters=6, batch=2, patch=32, lr=1e-3, val_every=1000,
                       log_every=1, precision="fp32", arch={"channels": 8, "groups": 1, "blocks": 1}, seed=3)
    return apply_settings(base, {"queue": 8, "encoder_fraction": 0.5, **overrides})


def test_both_patches_of_a_pair_share_a_degradation_but_not_a_crop(image_folder, monkeypatch) -> None:
    import upscale_cli.train.recipes.dasr as recipe_module
    from upscale_cli.train.recipes.dasr import DegradedPairs

    seen = []
    original = recipe_module.degrade
    monkeypatch.setattr(recipe_module, "degrade", lambda hr, scale, kernels, noise, generator:
                        seen.append((hr, kernels, noise)) or original(hr, scale, kernels, noise, generator))
    sampler = DegradedPairs([image_folder], 32, 4, 3, seed=0, setting="general", sharp_quarters=1)
    batch = sampler.next_batch()
    (query_hr, query_kernels, query_noise), (key_hr, key_kernels, key_noise) = seen
    assert torch.equal(query_kernels, key_kernels) and torch.equal(query_noise, key_noise)
    assert not torch.equal(query_hr, key_hr)  # two crops
    assert batch.lr.shape == batch.extras["key"].shape == (3, 3, 8, 8) and batch.hr.shape == (3, 3, 32, 32)
    assert batch.extras["width"].shape == batch.extras["noise"].shape == (3,)
    with pytest.raises(ValueError, match="unknown degradation setting"):
        DegradedPairs([image_folder], 32, 4, 3, seed=0, setting="motion", sharp_quarters=1)


def test_training_goes_through_both_stages_and_resumes_bit_exactly(image_folder, tmp_path) -> None:
    import json
    import os
    import signal

    from upscale_cli.train.loop import Trainer, TrainingInterrupted

    config = dasr_config(image_folder)
    straight = Trainer(config, tmp_path / "straight", "test")
    key_before = [p.clone() for p in straight.recipe.key_encoder.parameters()]
    straight.run()
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log if "stage" in r] == [1, 1, 1, 2, 2, 2]
    assert all("l1" in r for r in log if r.get("stage") == 2) and not any("l1" in r for r in log if r.get("stage") == 1)
    assert not all(torch.equal(a, b) for a, b in zip(key_before, straight.recipe.key_encoder.parameters()))
    assert straight.recipe.queue_position == (6 * 2) % 8

    first = Trainer(config, tmp_path / "halves", "test")
    original = first.recipe.train_step

    def step_then_signal(*args, **kwargs):
        result = original(*args, **kwargs)
        if first.step + 1 == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    first.recipe.train_step = step_then_signal
    with pytest.raises(TrainingInterrupted):
        first.run()
    second = Trainer(config, tmp_path / "halves", "test")
    second.run(resume=True)
    a, b = straight.recipe.state_dict(), second.recipe.state_dict()
    for name in ("generator", "head", "key_encoder", "key_head"):
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)
    assert torch.equal(a["queue"], b["queue"])


def test_the_key_encoder_follows_the_query_encoder_by_momentum(image_folder) -> None:
    import contextlib

    from upscale_cli.train.recipes import make_recipe

    recipe = make_recipe(dasr_config(image_folder, momentum=0.9), lambda module: module)
    with torch.no_grad():
        for parameter in recipe.key_encoder.parameters():
            parameter.add_(1.0)  # let the two differ before the step
    key = [p.clone() for p in recipe.key_encoder.parameters()]
    query = [p.detach().clone() for p in recipe.generator.encoder.parameters()]
    recipe.train_step(recipe.batches(seed=0).next_batch(), 0, contextlib.nullcontext)
    for k0, q0, k1 in zip(key, query, recipe.key_encoder.parameters()):
        torch.testing.assert_close(k1, 0.9 * k0 + 0.1 * q0)
    assert all(p.grad is None for p in recipe.key_encoder.parameters())


def test_verbose_and_json_report_what_the_encoder_estimates(tmp_path) -> None:
    import json

    from click.testing import CliRunner
    from PIL import Image

    from conftest import smooth_image
    from upscale_cli.checkpoint import CheckpointInfo, config_dict, save_checkpoint
    from upscale_cli.cli import cli

    model = small()
    path = tmp_path / "blind_x4.safetensors"
    save_checkpoint(path, model, CheckpointInfo("dasr", 4, config_dict(model.config), name="blind_x4"))
    Image.fromarray(smooth_image(20, 24, 1)).save(tmp_path / "in.png")
    args = [str(tmp_path / "in.png"), "-m", str(path), "--precision", "fp32", "-o", str(tmp_path / "out"), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.splitlines()[0])
    with torch.no_grad():
        expected = model.estimate(representation(model, torch.from_numpy(
            smooth_image(20, 24, 1).transpose(2, 0, 1).copy()).float().div(255)[None]))
    assert record["estimates"] == pytest.approx({k: float(v[0]) for k, v in expected.items()}, abs=0.006)
    verbose = CliRunner().invoke(cli, [*args[:-1], "--overwrite", "-v"])
    assert "estimates blur width" in verbose.output and "noise level" in verbose.output


def test_a_run_may_start_from_another_runs_encoder(image_folder, tmp_path) -> None:
    from upscale_cli.checkpoint import CheckpointInfo, config_dict, save_checkpoint
    from upscale_cli.train.recipes import make_recipe

    first = small(seed=5)
    path = tmp_path / "encoder_x4.safetensors"
    save_checkpoint(path, first, CheckpointInfo("dasr", 4, config_dict(first.config), name="encoder_x4"))
    recipe = make_recipe(dasr_config(image_folder, init=str(path), encoder_fraction=0.0,
                                     arch={"channels": 8, "groups": 2, "blocks": 1}), lambda module: module)
    for name, tensor in first.encoder.state_dict().items():
        assert torch.equal(recipe.generator.encoder.state_dict()[name], tensor)
        assert torch.equal(recipe.key_encoder.state_dict()[name], tensor)  # the keys start from it too
    assert recipe.generator.config.groups == 2  # its own G
    same = make_recipe(dasr_config(image_folder, init=str(path), encoder_fraction=0.0,
                                   arch={"channels": 16, "groups": 1, "blocks": 2}), lambda module: module)
    for name, tensor in first.state_dict().items():  # the same G configuration: all of it continues
        assert torch.equal(same.generator.state_dict()[name], tensor), name
