"""SFT-GAN: the paper's sizes, the SFT layer's identity, and a prior that acts where it differs."""

from __future__ import annotations

import pytest
import torch

from upscale_cli.archs.sftgan import CLASSES, SFTGAN, SFTGANConfig, SFTLayer, receptive_radius

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("variant", "expected"), [("pytorch", 1_833_763), ("paper", 1_612_195),
                                                  ("srresnet", 1_824_502)])
def test_every_variant_has_its_parameter_count(variant: str, expected: int) -> None:
    """Spec 4.2: 1.83 M and 1.61 M. The srresnet layout swaps the pytorch variant's ends (3x3 head 1,792;
    3x3 64 -> 64 and 64 -> 3 tail 38,659) for SRResNet's 9x9 head (15,616) and tail (15,555), and adds 19
    PReLU slopes: 1,833,763 - 40,451 + 31,171 + 19."""
    model = SFTGAN(SFTGANConfig(variant=variant))
    assert sum(p.numel() for p in model.parameters()) == expected
    assert sum(p.numel() for p in model.condition.parameters()) == 70_176  # "incl. 70k for the condition network"


@pytest.mark.parametrize("variant", ["pytorch", "paper", "srresnet"])
def test_an_sft_layer_with_unit_gamma_and_zero_beta_is_the_identity(variant: str) -> None:
    layer = SFTLayer(16, variant)
    with torch.no_grad():
        for branch, value in ((layer.gamma, 1.0 - layer.offset), (layer.beta, 0.0)):
            branch[2].weight.zero_()
            branch[2].bias.fill_(value)
    features, condition = torch.randn(2, 16, 5, 6), torch.randn(2, 32, 5, 6)
    torch.testing.assert_close(layer(features, condition), features, atol=0, rtol=0)
    with torch.no_grad():
        layer.beta[2].bias.fill_(0.5)
    assert not torch.equal(layer(features, condition), features)


@pytest.mark.parametrize("variant", ["pytorch", "paper", "srresnet"])
def test_a_prior_changed_in_a_region_changes_the_output_only_near_it(variant: str) -> None:
    torch.manual_seed(0)
    config = SFTGANConfig(channels=8, blocks=2, variant=variant)
    model = SFTGAN(config).eval()
    lr = torch.rand(1, 3, 40, 40)
    prior = torch.softmax(torch.randn(1, len(CLASSES), 160, 160), dim=1)
    changed = prior.clone()
    changed[..., 64:76, 72:88] = torch.softmax(torch.randn(1, len(CLASSES), 12, 16), dim=1)
    with torch.no_grad():
        difference = (model(lr, changed) - model(lr, prior)).abs().amax(dim=1)[0] > 0
    reach = 4 * receptive_radius(config) + 3  # output px: the radius in LR px, and the prior's 4x4 cells
    ys, xs = torch.nonzero(difference, as_tuple=True)
    assert reach < 64 and difference[64:76, 72:88].any()
    assert ys.min() >= 64 - reach and ys.max() < 76 + reach and xs.min() >= 72 - reach and xs.max() < 88 + reach
    assert difference.float().mean() < 0.5  # most of the image does not move


def test_the_prior_must_be_four_times_the_lr() -> None:
    model = SFTGAN(SFTGANConfig(channels=8, blocks=1))
    with pytest.raises(ValueError, match="4x the LR"):
        model(torch.rand(1, 3, 8, 8), torch.rand(1, 8, 16, 16))


def test_every_accepted_prior_format_gives_the_same_probabilities(tmp_path) -> None:
    import numpy as np
    from PIL import Image
    from safetensors.torch import save_file

    from upscale_cli.archs.sftgan import class_prior, load_prior

    indices = np.random.default_rng(0).integers(0, 8, (5, 6)).astype(np.uint8)  # LR 5x6
    one_hot = np.eye(8)[indices]  # (5, 6, 8)
    Image.fromarray(indices).save(tmp_path / "lr.png")
    Image.fromarray(indices.repeat(4, 0).repeat(4, 1)).save(tmp_path / "hr.png")
    np.save(tmp_path / "last.npy", one_hot)
    np.save(tmp_path / "first.npy", one_hot.transpose(2, 0, 1).repeat(4, 1).repeat(4, 2))
    save_file({"prior": torch.from_numpy(one_hot.transpose(2, 0, 1).copy()).float()[None]}, str(tmp_path / "p.safetensors"))
    loaded = [load_prior(tmp_path / name, 5, 6) for name in ("lr.png", "hr.png", "last.npy", "first.npy", "p.safetensors")]
    assert loaded[0].shape == (1, 8, 20, 24)
    for other in loaded[1:]:
        assert torch.equal(other, loaded[0])
    assert torch.equal(class_prior("sky", 20, 24)[0, 1], torch.ones(20, 24)) and class_prior("sky", 2, 2).sum() == 4


def test_every_rejected_prior_says_what_is_wrong(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from upscale_cli.archs.sftgan import class_prior, load_prior

    Image.fromarray(np.full((5, 6), 9, np.uint8)).save(tmp_path / "range.png")
    Image.fromarray(np.zeros((7, 7), np.uint8)).save(tmp_path / "size.png")
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "rgb.png")
    np.save(tmp_path / "channels.npy", np.full((5, 6, 3), 1 / 3))
    np.save(tmp_path / "sum.npy", np.full((8, 5, 6), 0.2))
    np.save(tmp_path / "negative.npy", np.eye(8)[np.zeros((5, 6), int)] * 2 - 1)
    (tmp_path / "text.png").write_text("not an image")
    expected = {"range.png": "0..7", "size.png": "LR's size", "rgb.png": "one channel", "channels.npy": "8 channels",
                "sum.npy": "sum to 1", "negative.npy": "[0, 1]", "text.png": "not an image"}
    for name, message in expected.items():
        with pytest.raises(ValueError, match=message) as error:
            load_prior(tmp_path / name, 5, 6)
        assert str(error.value).startswith(str(tmp_path / name)) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="unknown class 'lava'"):
        class_prior("lava", 4, 4)


def test_the_prior_is_given_on_the_command_line(tmp_path) -> None:
    import numpy as np
    from click.testing import CliRunner
    from PIL import Image

    from conftest import smooth_image
    from upscale_cli.checkpoint import CheckpointInfo, config_dict, save_checkpoint
    from upscale_cli.cli import cli
    from upscale_cli.image_io import software_tag

    torch.manual_seed(0)
    model = SFTGAN(SFTGANConfig(channels=8, blocks=1))
    path = tmp_path / "steer_x4.safetensors"
    save_checkpoint(path, model, CheckpointInfo("sftgan", 4, config_dict(model.config), name="steer_x4"))
    Image.fromarray(smooth_image(10, 12, 1)).save(tmp_path / "in.png")

    def run(*args: str):
        return CliRunner().invoke(cli, [str(tmp_path / "in.png"), "-m", str(path), "--precision", "fp32", *args])

    outputs = {}
    for name in ("sky", "grass"):
        result = run("--seg-class", name, "-o", str(tmp_path / f"{name}.png"))
        assert result.exit_code == 0, result.output
        outputs[name] = np.asarray(Image.open(tmp_path / f"{name}.png"))
        assert f"input prior=class:{name}" in software_tag(tmp_path / f"{name}.png")
    assert outputs["sky"].shape == (40, 48, 3) and not np.array_equal(outputs["sky"], outputs["grass"])
    indices = np.full((10, 12), 1, np.uint8)  # all sky, as an index image at LR size
    Image.fromarray(indices).save(tmp_path / "seg.png")
    assert run("--seg", str(tmp_path / "seg.png"), "-o", str(tmp_path / "file.png")).exit_code == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "file.png")), outputs["sky"])
    np.save(tmp_path / "bad.npy", np.full((8, 10, 12), 0.5))
    result = run("--seg", str(tmp_path / "bad.npy"), "-o", str(tmp_path / "bad.png"))
    assert result.exit_code == 1 and "sum to 1" in result.output and not (tmp_path / "bad.png").exists()
    assert run("-o", str(tmp_path / "auto.png")).exit_code == 0  # no prior given: the automatic one
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "auto.png")), outputs["grass"])
    result = run("--input", "style=x.png", "-o", str(tmp_path / "x.png"))
    assert result.exit_code == 2 and "takes no --input style" in result.output


def test_the_automatic_prior_is_deterministic_and_reads_the_scene() -> None:
    from upscale_cli.archs.sftgan import estimate_prior

    generator = torch.Generator().manual_seed(0)
    lr = torch.empty(1, 3, 16, 20)
    lr[:, :, :8] = torch.tensor([0.55, 0.7, 0.95])[:, None, None]  # a flat blue sky above
    lr[:, :, 8:] = torch.tensor([0.2, 0.5, 0.15])[:, None, None] + 0.25 * torch.rand(3, 8, 20, generator=generator)
    prior = estimate_prior(lr)
    assert prior.shape == (1, 8, 64, 80) and torch.equal(prior, estimate_prior(lr.clone()))
    torch.testing.assert_close(prior.sum(dim=1), torch.ones(1, 64, 80))
    labels = prior[0].argmax(dim=0)
    assert (labels[:24] == CLASSES.index("sky")).float().mean() > 0.9
    assert (labels[40:] == CLASSES.index("plant")).float().mean() > 0.5  # textured green


def test_the_automatic_prior_keeps_tiled_equal_to_untiled(tmp_path) -> None:
    from conftest import smooth_image
    from upscale_cli.checkpoint import CheckpointInfo, config_dict, save_checkpoint
    from upscale_cli.engine import load_upscaler

    torch.manual_seed(0)
    model = SFTGAN(SFTGANConfig(channels=8, blocks=1))
    path = tmp_path / "steer_x4.safetensors"
    save_checkpoint(path, model, CheckpointInfo("sftgan", 4, config_dict(model.config), name="steer_x4"))
    upscaler = load_upscaler(str(path), device="cpu", precision="fp32", overlap=receptive_radius(model.config))
    rgb = smooth_image(30, 26, 2).astype("float32") / 255
    whole = upscaler.upscale(rgb, 104, 120, "none")
    tiled = upscaler.upscale(rgb, 104, 120, "12")
    torch.testing.assert_close(torch.from_numpy(tiled), torch.from_numpy(whole), atol=1e-5, rtol=0)


# ----- the training recipe -------------------------------------------------------------------------------

def sftgan_config(data, init="", **overrides):
    from upscale_cli.train.config import TrainConfig, apply_settings

    base = TrainConfig(model="sftgan", data=str(data), scale=4, iters=4, batch=2, patch=32, lr=1e-3, val_every=1000,
                       log_every=1, precision="fp32", arch={"channels": 8, "blocks": 2}, seed=3, init=init)
    return apply_settings(base, {"hold_fraction": 0.5, **overrides})


def small_srresnet_checkpoint(path, prelu_slope: float | None = None):
    """A small x4 SRResNet (8 channels, 2 blocks) with random BatchNorm statistics, saved as a checkpoint."""
    from upscale_cli.archs.srresnet import SRResNet, SRResNetConfig
    from upscale_cli.checkpoint import CheckpointInfo, config_dict, save_checkpoint

    torch.manual_seed(1)
    model = SRResNet(SRResNetConfig(channels=8, blocks=2)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
                module.bias.normal_()
            if isinstance(module, torch.nn.PReLU) and prelu_slope is not None:
                module.weight.fill_(prelu_slope)
    save_checkpoint(path, model, CheckpointInfo("srresnet", 4, config_dict(model.config), name="small_x4"))
    return model


def test_folding_batchnorm_into_a_convolution_gives_the_same_output() -> None:
    from upscale_cli.train.recipes.sftgan import fold_batchnorm

    torch.manual_seed(0)
    conv, norm = torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        norm.running_mean.normal_(), norm.running_var.uniform_(0.5, 2), norm.weight.normal_(), norm.bias.normal_()
    weight, bias = fold_batchnorm(conv, norm)
    x = torch.randn(2, 4, 7, 5)
    torch.testing.assert_close(torch.nn.functional.conv2d(x, weight, bias, padding=1), norm(conv(x)))


def test_the_generator_starts_from_srresnet_convolutions(tmp_path) -> None:
    """With the SFT layers at the identity and SRResNet's PReLU slopes at 0 (a ReLU), each copied residual
    block computes what SRResNet's block (conv, BN, activation, conv, BN, + input) computes."""
    from upscale_cli.train.recipes.sftgan import copy_srresnet_convolutions

    source = small_srresnet_checkpoint(tmp_path / "small_x4.safetensors", prelu_slope=0.0)
    target = SFTGAN(SFTGANConfig(channels=8, blocks=2, variant="pytorch"))
    copied = copy_srresnet_convolutions(target, tmp_path / "small_x4.safetensors")
    assert "blocks.1.conv2.weight" in copied and "upsample.3.bias" in copied and "head.weight" not in copied
    identity_sft(target)
    features, condition = torch.randn(1, 8, 6, 6), torch.randn(1, 32, 6, 6)
    for block, reference in zip(target.blocks, source.trunk):
        torch.testing.assert_close(block(features, condition), reference(features), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="need an srresnet"):
        copy_srresnet_convolutions(target, save_sft(tmp_path, target))


def identity_sft(model: SFTGAN) -> None:
    """Every SFT layer of a pytorch-convention model to F * (0 + 1) + 0."""
    with torch.no_grad():
        for layer in [m for m in model.modules() if isinstance(m, SFTLayer)]:
            for branch in (layer.gamma, layer.beta):
                branch[2].weight.zero_(), branch[2].bias.zero_()


def test_the_srresnet_variant_starts_as_the_checkpoint_it_copies(tmp_path) -> None:
    """Spec 4.3's start made exact: with its SFT layers at the identity, the srresnet variant copied from an
    SRResNet (random BatchNorm statistics and PReLU slopes) gives that SRResNet's output, whatever the prior."""
    from upscale_cli.train.recipes.sftgan import copy_srresnet_convolutions

    source = small_srresnet_checkpoint(tmp_path / "small_x4.safetensors")
    with torch.no_grad():
        for module in source.modules():
            if isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(-0.5, 1.0)
    from upscale_cli.checkpoint import CheckpointInfo, config_dict, save_checkpoint

    save_checkpoint(tmp_path / "small_x4.safetensors", source, CheckpointInfo("srresnet", 4, config_dict(source.config)))
    target = SFTGAN(SFTGANConfig(channels=8, blocks=2, variant="srresnet")).eval()
    copied = set(copy_srresnet_convolutions(target, tmp_path / "small_x4.safetensors"))
    assert {name for name, _ in target.named_parameters()} - copied == {
        name for name, _ in target.named_parameters() if ".sft" in name or "trunk_sft" in name or "condition" in name}
    identity_sft(target)
    lr = torch.rand(1, 3, 12, 10)
    prior = torch.softmax(torch.randn(1, len(CLASSES), 48, 40), dim=1)
    with torch.no_grad():
        torch.testing.assert_close(target(lr, prior), source(lr), atol=1e-5, rtol=1e-5)


def save_sft(tmp_path, model):
    from upscale_cli.checkpoint import CheckpointInfo, config_dict, save_checkpoint

    path = tmp_path / "sft_x4.safetensors"
    save_checkpoint(path, model, CheckpointInfo("sftgan", 4, config_dict(model.config), name="sft_x4"))
    return path


def test_patches_carry_the_crop_of_their_whole_images_prior(tmp_path) -> None:
    """Images exactly one patch in size: each patch is its image turned or flipped, and its prior is the
    whole image's automatic prior (from the whole LR) turned alike, to the 8-bit storage's precision."""
    from PIL import Image

    from conftest import smooth_image
    from upscale_cli.archs.sftgan import estimate_prior
    from upscale_cli.resize import imresize, quantize
    from upscale_cli.train.recipes.sftgan import SemanticPatches

    folder = tmp_path / "patches"
    folder.mkdir()
    images = [smooth_image(32, 32, i) for i in range(2)]
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    batch = SemanticPatches([folder], 32, 4, 6, seed=0).next_batch()
    assert batch.extras["prior"].shape == (6, len(CLASSES), 32, 32)
    torch.testing.assert_close(batch.extras["prior"].sum(dim=1), torch.ones(6, 32, 32))
    for hr, prior in zip(batch.hr, batch.extras["prior"]):
        matched = False
        for image in images:
            whole = torch.from_numpy(image.transpose(2, 0, 1).copy()).float().div(255)
            whole_prior = estimate_prior(quantize(imresize(whole[None], scale=1 / 4)))[0]
            for flip in (False, True):
                for turns in range(4):
                    def view(x):
                        return torch.rot90(x.flip(-1) if flip else x, turns, dims=(-2, -1))
                    if torch.equal(view(whole), hr):
                        torch.testing.assert_close(view(whole_prior), prior, atol=3 / 255, rtol=0)
                        matched = True
        assert matched


def test_training_holds_the_copied_convolutions_then_trains_them_with_a_class_head(image_folder, tmp_path) -> None:
    import json

    from upscale_cli.train.loop import Trainer

    small_srresnet_checkpoint(tmp_path / "small_x4.safetensors")
    config = sftgan_config(image_folder, init=str(tmp_path / "small_x4.safetensors"), hold_fraction=0.5)
    trainer = Trainer(config, tmp_path / "run", "test")
    recipe = trainer.recipe
    assert recipe.discriminator.class_head is not None
    named = dict(recipe.generator.named_parameters())
    start = {name: p.detach().clone() for name, p in named.items()}
    held = []
    original = recipe.train_step

    def step_and_look(batch, step, autocast):
        result = original(batch, step, autocast)
        held.append(torch.equal(named["blocks.0.conv1.weight"], start["blocks.0.conv1.weight"]))
        return result

    recipe.train_step = step_and_look
    trainer.run()
    assert held == [True, True, False, False]  # hold_fraction 0.5 of 4 steps
    assert not torch.equal(named["blocks.0.sft1.gamma.0.weight"], start["blocks.0.sft1.gamma.0.weight"])
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [record for record in log if "d_loss" in record]
    assert len(steps) == 4 and all("g_class" in record and "d_class" in record for record in steps)


def test_a_patch_is_of_its_most_probable_class_and_background_patches_of_none() -> None:
    from upscale_cli.train.recipes.sftgan import patch_category

    prior = torch.zeros(3, len(CLASSES), 4, 4)
    prior[0, CLASSES.index("sky")] = 1
    prior[1, CLASSES.index("background")] = 1
    prior[2, CLASSES.index("plant"), :3] = 1  # three rows of plant, one of water
    prior[2, CLASSES.index("water"), 3:] = 1
    assert patch_category(prior).tolist() == [CLASSES.index("sky"), -1, CLASSES.index("plant")]
