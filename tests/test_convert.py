"""`upscale convert` and `--model FILE.pth` (#28): other projects' ESRGAN-family files run as our models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from conftest import SHARED, smooth_image
from upscale_cli.cli import cli
from upscale_cli.errors import ExitCode

REAL_ESRGAN = SHARED / "models" / "RealESRGAN_x4plus.pth"
REAL_ESRGAN_SHA256 = "40901c7da5278bfb3da78e227c2a0f715c4b3ec81b826d6239e3c4c483ff07d2"  # ../shared/models/README.md
needs_real_esrgan = pytest.mark.skipif(not REAL_ESRGAN.is_file(), reason=f"{REAL_ESRGAN} not present (../shared)")


@pytest.fixture(autouse=True)
def private_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Conversions cached and user models written inside the test's folder, never in the real home."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def reference_rrdbnet(state: dict[str, torch.Tensor], lr: torch.Tensor, unshuffle: int = 1) -> torch.Tensor:
    """ESRGAN's forward written from its documented layer order, straight on the BasicSR-named tensors."""
    w = {k: v.double() for k, v in state.items()}

    def conv(name: str, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w[f"{name}.weight"], w[f"{name}.bias"], padding=1)

    x = F.pixel_unshuffle(lr.double(), unshuffle) if unshuffle > 1 else lr.double()
    first = conv("conv_first", x)
    trunk = first
    blocks = sorted({int(k.split(".")[1]) for k in w if k.startswith("body.")})
    for b in blocks:
        block_in = trunk
        for r in (1, 2, 3):
            feats = [trunk]
            for c in (1, 2, 3, 4):
                feats.append(F.leaky_relu(conv(f"body.{b}.rdb{r}.conv{c}", torch.cat(feats, 1)), 0.2))
            trunk = trunk + 0.2 * conv(f"body.{b}.rdb{r}.conv5", torch.cat(feats, 1))
        trunk = block_in + 0.2 * trunk
    feat = first + conv("conv_body", trunk)
    stage = 1
    while f"conv_up{stage}.weight" in w:
        feat = F.leaky_relu(conv(f"conv_up{stage}", F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        stage += 1
    return conv("conv_last", F.leaky_relu(conv("conv_hr", feat), 0.2))


def tiny_state(in_channels: int = 3, stages: int = 2, blocks: int = 2, features: int = 8, growth: int = 4,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in BasicSR's RRDBNet layout, built from the documented names and shapes."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"conv_first": (features, in_channels), "conv_body": (features, features),
              "conv_hr": (features, features), "conv_last": (3, features),
              **{f"conv_up{i}": (features, features) for i in range(1, stages + 1)}}
    for b in range(blocks):
        for r in (1, 2, 3):
            for c in range(1, 6):
                shapes[f"body.{b}.rdb{r}.conv{c}"] = (growth if c < 5 else features, features + (c - 1) * growth)
    state = {}
    for name, (out, inp) in shapes.items():
        state[f"{name}.weight"] = torch.randn(out, inp, 3, 3, generator=generator) * (0.5 / math.sqrt(9 * inp))
        state[f"{name}.bias"] = torch.randn(out, generator=generator) * 0.01
    return state


def to_old_layout(state: dict[str, torch.Tensor], stages: int = 2) -> dict[str, torch.Tensor]:
    """The same tensors under the original ESRGAN release's names (`model.N...`)."""
    blocks = len({k.split(".")[1] for k in state if k.startswith("body.")})
    old = {}
    for key, tensor in state.items():
        name, part = key.rsplit(".", 1)
        if name.startswith("body."):
            _, b, rdb, c = name.split(".")
            old[f"model.1.sub.{b}.RDB{rdb[3:]}.{c}.0.{part}"] = tensor
        else:
            index = {"conv_first": "0", "conv_body": f"1.sub.{blocks}", "conv_hr": str(3 * stages + 2),
                     "conv_last": str(3 * stages + 4), **{f"conv_up{i}": str(3 * i) for i in range(1, stages + 1)}}[name]
            old[f"model.{index}.{part}"] = tensor
    return old


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def run_converted(path: Path, rgb: np.ndarray, tile: str = "none", scale: int = 4) -> np.ndarray:
    from upscale_cli.engine import load_upscaler

    upscaler = load_upscaler(str(path), device="cpu", precision="fp32")
    return upscaler.upscale(rgb, rgb.shape[1] * scale, rgb.shape[0] * scale, tile)


# ----- the real community model ------------------------------------------------------------------------

@needs_real_esrgan
def test_real_esrgan_converts_with_full_metadata_and_matches_an_independent_forward(tmp_path: Path) -> None:
    from upscale_cli.checkpoint import read_info

    out = tmp_path / "realesrgan_x4.safetensors"
    result = invoke("convert", REAL_ESRGAN, "-o", out)
    assert result.exit_code == 0, result.output
    info = read_info(out)
    assert (info.arch, info.scale, info.params) == ("rrdbnet", 4, 16_697_987)
    assert {k: info.config[k] for k in ("features", "blocks", "growth", "unshuffle")} == \
        {"features": 64, "blocks": 23, "growth": 32, "unshuffle": 1}
    measured = info.source.pop("receptive_radius_measured")
    assert info.source == {"file": "RealESRGAN_x4plus.pth", "sha256": REAL_ESRGAN_SHA256,
                           "family": "ESRGAN RRDBNet (BasicSR keys)", "licence": ""}
    # 1 + 15 x 23 + 1 LR convs, then the upsampling and HR convs (under 1 LR px more); the tiler's bound is above
    from upscale_cli.archs import get_architecture

    declared = get_architecture("rrdbnet").receptive_radius(get_architecture("rrdbnet").make_config(info.config))
    assert 347 <= measured <= declared
    rgb = smooth_image(20, 24, 9).astype(np.float32) / 255
    ours = run_converted(out, rgb)
    state = torch.load(REAL_ESRGAN, map_location="cpu", weights_only=True)["params_ema"]
    reference = reference_rrdbnet(state, torch.from_numpy(rgb).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    assert psnr(ours, reference) >= 45


@needs_real_esrgan
def test_real_esrgan_runs_from_the_pth_and_from_its_name(tmp_path: Path) -> None:
    source = tmp_path / "in.png"
    Image.fromarray(smooth_image(16, 12, 2)).save(source)
    direct = invoke(source, "-m", REAL_ESRGAN, "-o", tmp_path / "direct.png", "--precision", "fp32")
    assert direct.exit_code == 0, direct.output
    assert invoke("convert", REAL_ESRGAN).exit_code == 0  # into the user models folder
    named = invoke(source, "-m", "realesrgan_x4plus", "-o", tmp_path / "named.png", "--precision", "fp32")
    assert named.exit_code == 0, named.output
    with Image.open(tmp_path / "direct.png") as a, Image.open(tmp_path / "named.png") as b:
        assert a.size == (48, 64) and np.array_equal(np.asarray(a), np.asarray(b))
    listed = json.loads(invoke("models", "--json").stdout)
    row = next(r for r in listed if r["name"] == "realesrgan_x4plus")
    assert row["about"] == "converted from RealESRGAN_x4plus.pth (ESRGAN RRDBNet (BasicSR keys))"


# ----- layouts, scales and containers, on small random files in the documented layouts ------------------

def to_trunk_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors under the ESRGAN repository's 2019 names (RRDB_trunk, trunk_conv, upconvN, HRconv)."""
    renamed = {}
    for key, tensor in state.items():
        key = key.replace("conv_body.", "trunk_conv.").replace("conv_hr.", "HRconv.").replace("conv_up", "upconv")
        if key.startswith("body."):
            _, b, rdb, rest = key.split(".", 3)
            key = f"RRDB_trunk.{b}.RDB{rdb[3:]}.{rest}"
        renamed[key] = tensor
    return renamed


@pytest.mark.parametrize("layout", ["new", "old", "trunk"])
def test_every_key_layout_gives_the_independent_forward(tmp_path: Path, layout: str) -> None:
    state = tiny_state()
    path = tmp_path / f"esrgan_{layout}.pth"
    torch.save({"new": state, "old": to_old_layout(state), "trunk": to_trunk_layout(state)}[layout], path)
    out = tmp_path / "converted.safetensors"
    assert invoke("convert", path, "-o", out).exit_code == 0
    rgb = smooth_image(11, 9, 4).astype(np.float32) / 255
    reference = reference_rrdbnet(state, torch.from_numpy(rgb).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    assert psnr(run_converted(out, rgb), reference) >= 60


@pytest.mark.parametrize(("in_channels", "scale"), [(12, 2), (48, 1)])
def test_pixel_unshuffle_models_run_at_their_scale_on_odd_sizes(tmp_path: Path, in_channels: int, scale: int) -> None:
    state = tiny_state(in_channels=in_channels)
    path = tmp_path / "x.pth"
    torch.save({"params_ema": state}, path)
    out = tmp_path / "x.safetensors"
    assert invoke("convert", path, "-o", out).exit_code == 0
    unshuffle = 4 // scale
    rgb = smooth_image(8, 12, 1).astype(np.float32) / 255  # a multiple of the unshuffle: compared exactly
    reference = reference_rrdbnet(state, torch.from_numpy(rgb).permute(2, 0, 1)[None], unshuffle)
    assert psnr(run_converted(out, rgb, scale=scale), reference[0].permute(1, 2, 0).numpy()) >= 60
    odd = smooth_image(9, 7, 1).astype(np.float32) / 255  # padded to whole cells, cropped back
    assert run_converted(out, odd, scale=scale).shape == (9 * scale, 7 * scale, 3)


def test_containers_are_unwrapped_in_order(tmp_path: Path) -> None:
    from upscale_cli.convert import read_state_dict

    ema, plain = tiny_state(seed=1), tiny_state(seed=2)
    path = tmp_path / "c.pth"
    torch.save({"params": plain, "params_ema": ema}, path)
    assert torch.equal(read_state_dict(path)["conv_first.weight"], ema["conv_first.weight"])
    torch.save({"state_dict": {f"module.{k}": v for k, v in plain.items()}, "epoch": 3}, path)
    assert set(read_state_dict(path)) == set(plain)
    torch.save({"model": plain}, path)
    assert torch.equal(read_state_dict(path)["conv_last.bias"], plain["conv_last.bias"])


class _Payload:
    """Unpickling this would create a file: the proof that no code ran."""

    marker: Path = Path()

    def __reduce__(self):  # noqa: D105 - the attack itself
        return (Path.touch, (self.marker,))


def test_a_pickle_that_needs_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    path = tmp_path / "evil.pth"
    torch.save({"params_ema": tiny_state(), "extra": payload}, path)
    result = invoke("convert", path, "-o", tmp_path / "out.safetensors")
    assert result.exit_code == ExitCode.MODEL and "never executes a pickle" in result.output
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_partial_and_unknown_files_say_what_was_tried_and_what_does_not_fit(tmp_path: Path) -> None:
    state = tiny_state()
    path = tmp_path / "p.pth"
    torch.save({k: v for k, v in state.items() if k != "conv_hr.bias"} | {"extra.weight": torch.zeros(1)}, path)
    partial = invoke("convert", path, "-o", tmp_path / "o.safetensors")
    assert partial.exit_code == ExitCode.MODEL
    assert "looks like ESRGAN RRDBNet" in partial.output and "missing tensors: conv_hr.bias" in partial.output
    assert "unexpected tensors: extra.weight" in partial.output
    torch.save({"encoder.layer1.weight": torch.zeros(2, 2)}, path)
    unknown = invoke("convert", path, "-o", tmp_path / "o.safetensors")
    assert unknown.exit_code == ExitCode.MODEL and "matches no known family (tried: " in unknown.output
    tried = unknown.output.split("tried: ")[1].split(";")[0].split(", ")
    from upscale_cli.archs import architecture_ids, get_architecture

    assert sorted(tried) == sorted(a for a in architecture_ids() if get_architecture(a).recognise is not None)
    assert {"artflow", "compact", "dasr", "msrresnet", "rrdbnet", "sftgan", "srresnet"} <= set(tried)


def test_model_pth_converts_once_and_caches_by_digest(tmp_path: Path) -> None:
    path = tmp_path / "community_model.pth"
    torch.save({"params_ema": tiny_state()}, path)
    source = tmp_path / "in.png"
    Image.fromarray(smooth_image(10, 10, 0)).save(source)
    assert invoke(source, "-m", path, "-o", tmp_path / "a.png").exit_code == 0
    cached = list((tmp_path / "cache" / "upscale" / "converted").glob("*.safetensors"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    assert invoke(source, "-m", path, "-o", tmp_path / "b.png").exit_code == 0
    assert cached[0].stat().st_mtime_ns == stamp
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "b.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b)) and a.size == (40, 40)


# ----- SRVGGNetCompact ------------------------------------------------------------------------------------

def compact_state(convs: int = 2, features: int = 8, scale: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in Real-ESRGAN's compact layout: body.{2i} convs, body.{2i+1} PReLU slopes."""
    generator = torch.Generator().manual_seed(seed)
    state, index, inputs = {}, 0, 3
    for out in [features] * (convs + 1) + [3 * scale**2]:
        state[f"body.{index}.weight"] = torch.randn(out, inputs, 3, 3, generator=generator) * (0.5 / math.sqrt(9 * inputs))
        state[f"body.{index}.bias"] = torch.randn(out, generator=generator) * 0.01
        if out == features:
            state[f"body.{index + 1}.weight"] = torch.rand(out, generator=generator) * 0.3
        index, inputs = index + 2, out
    return state


def reference_compact(state: dict[str, torch.Tensor], lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The compact forward from its documented order: conv + PReLU pairs, a last conv, shuffle, + nearest."""
    x, index = lr.double(), 0
    while f"body.{index}.weight" in state:
        x = F.conv2d(x, state[f"body.{index}.weight"].double(), state[f"body.{index}.bias"].double(), padding=1)
        if f"body.{index + 1}.weight" in state:
            x = F.prelu(x, state[f"body.{index + 1}.weight"].double())
        index += 2
    return F.pixel_shuffle(x, scale) + F.interpolate(lr.double(), scale_factor=scale, mode="nearest")


@pytest.mark.parametrize("scale", [2, 4])
def test_compact_models_convert_and_match_an_independent_forward(tmp_path: Path, scale: int) -> None:
    from upscale_cli.checkpoint import read_info

    state = compact_state(scale=scale)
    path = tmp_path / "realesr-animevideov3.pth"
    torch.save({"params": state}, path)
    out = tmp_path / "compact.safetensors"
    assert invoke("convert", path, "-o", out).exit_code == 0
    info = read_info(out)
    assert (info.arch, info.scale, info.config["convs"], info.config["features"]) == ("compact", scale, 2, 8)
    rgb = smooth_image(9, 11, 6).astype(np.float32) / 255
    reference = reference_compact(state, torch.from_numpy(rgb).permute(2, 0, 1)[None], scale)
    assert psnr(run_converted(out, rgb, scale=scale), reference[0].permute(1, 2, 0).numpy()) >= 60


# ----- the SRGAN family's official layouts (random values in the documented layouts) -----------------------

def conv_weights(generator: torch.Generator, out: int, inputs: int, size: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.randn(out, inputs, size, size, generator=generator) * (0.5 / math.sqrt(size * size * inputs)),
            torch.randn(out, generator=generator) * 0.01)


def msrresnet_state(scale: int, layout: str, blocks: int = 2, features: int = 8) -> dict[str, torch.Tensor]:
    """MSRResNet in BasicSR's, legacy BasicSR's or MMEditing's key names (official_checkpoints.md 5.1)."""
    names = {"basicsr": ("body", "conv_hr", "upconv{}"), "legacy": ("recon_trunk", "HRconv", "upconv{}"),
             "mmediting": ("generator.trunk_net", "generator.conv_hr", "generator.upsample{}.upsample_conv")}[layout]
    prefix = "generator." if layout == "mmediting" else ""
    generator, state = torch.Generator().manual_seed(scale), {}

    def put(name: str, out: int, inputs: int) -> None:
        state[f"{name}.weight"], state[f"{name}.bias"] = conv_weights(generator, out, inputs)

    put(f"{prefix}conv_first", features, 3)
    for k in range(blocks):
        put(f"{names[0]}.{k}.conv1", features, features)
        put(f"{names[0]}.{k}.conv2", features, features)
    for index, factor in enumerate((2, 2) if scale == 4 else (scale,), start=1):
        put(names[2].format(index), features * factor**2, features)
    put(names[1], features, features)
    put(f"{prefix}conv_last", 3, features)
    return state


def reference_msrresnet(state: dict[str, torch.Tensor], lr: torch.Tensor, scale: int, shuffle_lrelu: bool) -> torch.Tensor:
    """MSRResNet's documented forward in plain torch, on BasicSR's names."""
    def conv(name: str, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, state[f"{name}.weight"].double(), state[f"{name}.bias"].double(), padding=1)

    x = F.leaky_relu(conv("conv_first", lr.double()), 0.1)
    k = 0
    while f"body.{k}.conv1.weight" in state:
        x = x + conv(f"body.{k}.conv2", F.relu(conv(f"body.{k}.conv1", x)))
        k += 1
    for index, factor in enumerate((2, 2) if scale == 4 else (scale,), start=1):
        x = F.pixel_shuffle(conv(f"upconv{index}", x), factor)
        x = F.leaky_relu(x, 0.1) if shuffle_lrelu else x
    x = conv("conv_last", F.leaky_relu(conv("conv_hr", x), 0.1))
    return x + F.interpolate(lr.double(), scale_factor=scale, mode="bilinear", align_corners=False)


@pytest.mark.parametrize(("scale", "layout"), [(4, "basicsr"), (2, "legacy"), (3, "basicsr"), (4, "mmediting")])
def test_msrresnet_layouts_convert_exactly_and_match_the_documented_forward(tmp_path: Path, scale: int, layout: str) -> None:
    from upscale_cli.checkpoint import read_info

    state = msrresnet_state(scale, layout)
    path = tmp_path / "msrresnet.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": state} if layout == "mmediting" else {"params": state}, path)
    out = tmp_path / "msrresnet.safetensors"
    result = invoke("convert", path, "-o", out)
    assert result.exit_code == 0, result.output
    info = read_info(out)
    assert (info.arch, info.scale, info.config["blocks"], info.config["features"]) == ("msrresnet", scale, 2, 8)
    assert info.params == sum(v.numel() for v in state.values())  # every tensor used
    basicsr = msrresnet_state(scale, "basicsr")  # the same values under BasicSR's names
    assert all(torch.equal(a, b) for a, b in zip(basicsr.values(), state.values(), strict=True))
    rgb = smooth_image(9, 11, 7).astype(np.float32) / 255
    reference = reference_msrresnet(basicsr, torch.from_numpy(rgb).permute(2, 0, 1)[None], scale,
                                    shuffle_lrelu=layout != "mmediting").clamp(0, 1)
    assert psnr(run_converted(out, rgb, scale=scale), reference[0].permute(1, 2, 0).numpy()) >= 60


def leftthomas_state(stages: int, bn_tail: bool = False, residual: int = 2, features: int = 8) -> dict[str, torch.Tensor]:
    """leftthomas/SRGAN's generator layout (official_checkpoints.md 5.2): no num_batches_tracked."""
    generator, state = torch.Generator().manual_seed(stages), {}
    state["block1.0.weight"], state["block1.0.bias"] = conv_weights(generator, features, 3, 9)
    state["block1.1.weight"] = torch.tensor([0.16])
    for b in range(2, 2 + residual):
        for n in (1, 2):
            state[f"block{b}.conv{n}.weight"], state[f"block{b}.conv{n}.bias"] = conv_weights(generator, features, features)
            state[f"block{b}.bn{n}.weight"] = 1 + 0.1 * torch.randn(features, generator=generator)
            state[f"block{b}.bn{n}.bias"] = 0.1 * torch.randn(features, generator=generator)
            state[f"block{b}.bn{n}.running_mean"] = 0.1 * torch.randn(features, generator=generator)
            state[f"block{b}.bn{n}.running_var"] = 0.5 + torch.rand(features, generator=generator)
        state[f"block{b}.prelu.weight"] = torch.tensor([0.2])
    tail = 2 + residual
    state[f"block{tail}.0.weight"], state[f"block{tail}.0.bias"] = conv_weights(generator, features, features)
    if bn_tail:
        state[f"block{tail}.1.weight"] = 1 + 0.1 * torch.randn(features, generator=generator)
        state[f"block{tail}.1.bias"] = 0.1 * torch.randn(features, generator=generator)
        state[f"block{tail}.1.running_mean"] = 0.1 * torch.randn(features, generator=generator)
        state[f"block{tail}.1.running_var"] = 0.5 + torch.rand(features, generator=generator)
        state[f"block{tail}.1.num_batches_tracked"] = torch.tensor(1000)
    else:
        state[f"block{tail}.1.weight"] = torch.tensor([0.06])
    for u in range(stages):
        state[f"block8.{u}.conv.weight"], state[f"block8.{u}.conv.bias"] = conv_weights(generator, 4 * features, features)
        state[f"block8.{u}.prelu.weight"] = torch.tensor([0.1])
    state[f"block8.{stages}.weight"], state[f"block8.{stages}.bias"] = conv_weights(generator, 3, features, 9)
    return state


def reference_leftthomas(state: dict[str, torch.Tensor], lr: torch.Tensor, stages: int, residual: int = 2) -> torch.Tensor:
    """leftthomas's documented forward: conv-BN-PReLU-conv-BN blocks, block7, the long skip, (tanh + 1) / 2."""
    s = {k: v.double() for k, v in state.items()}

    def conv(name: str, x: torch.Tensor, pad: int = 1) -> torch.Tensor:
        return F.conv2d(x, s[f"{name}.weight"], s[f"{name}.bias"], padding=pad)

    def bn(name: str, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, s[f"{name}.running_mean"], s[f"{name}.running_var"], s[f"{name}.weight"],
                            s[f"{name}.bias"], training=False, eps=1e-5)

    head = F.prelu(conv("block1.0", lr.double(), 4), s["block1.1.weight"])
    x = head
    for b in range(2, 2 + residual):
        y = F.prelu(bn(f"block{b}.bn1", conv(f"block{b}.conv1", x)), s[f"block{b}.prelu.weight"])
        x = x + bn(f"block{b}.bn2", conv(f"block{b}.conv2", y))
    tail = f"block{2 + residual}"
    y = conv(f"{tail}.0", x)
    y = bn(f"{tail}.1", y) if f"{tail}.1.running_mean" in s else F.prelu(y, s[f"{tail}.1.weight"])
    x = head + y
    for u in range(stages):
        x = F.prelu(F.pixel_shuffle(conv(f"block8.{u}.conv", x), 2), s[f"block8.{u}.prelu.weight"])
    return (torch.tanh(conv(f"block8.{stages}", x, 4)) + 1) / 2


@pytest.mark.parametrize(("stages", "bn_tail"), [(2, False), (1, False), (2, True)])
def test_leftthomas_srgan_maps_onto_our_srresnet(tmp_path: Path, stages: int, bn_tail: bool) -> None:
    from upscale_cli.checkpoint import read_info

    state = leftthomas_state(stages, bn_tail)
    path = tmp_path / f"netG_epoch_{2**stages}_100.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)  # the released files' legacy format
    out = tmp_path / "srgan.safetensors"
    result = invoke("convert", path, "-o", out)
    assert result.exit_code == 0, result.output
    info = read_info(out)
    assert (info.arch, info.scale, info.config["blocks"]) == ("srresnet", 2**stages, 2)
    assert (info.config["trunk_tail"], info.config["output"]) == ("norm" if bn_tail else "prelu", "tanh")
    assert info.params == sum(v.numel() for v in state.values() if v.dtype.is_floating_point)
    rgb = smooth_image(10, 9, 8).astype(np.float32) / 255
    reference = reference_leftthomas(state, torch.from_numpy(rgb).permute(2, 0, 1)[None], stages)
    assert psnr(run_converted(out, rgb, scale=2**stages), reference[0].permute(1, 2, 0).numpy()) >= 60


# ----- DASR's official release (random values in the documented layout) ---------------------------------

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)
ENCODER_LAYERS = ((0, 3, 64, 1), (3, 64, 64, 1), (6, 64, 128, 2), (9, 128, 128, 1), (12, 128, 256, 2), (15, 256, 256, 1))


def dasr_official_state(scale: int, channels: int = 16, groups: int = 2, blocks: int = 2) -> dict[str, torch.Tensor]:
    """LongguangWang/DASR's model_600.pt layout (official_checkpoints.md section 2), random values."""
    generator, state = torch.Generator().manual_seed(10 + scale), {}

    def rand(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    def conv(name: str, out: int, inputs: int, size: int = 3, bias: bool = True) -> None:
        state[f"{name}.weight"] = rand(out, inputs, size, size, std=0.7 / math.sqrt(size * size * inputs))
        if bias:
            state[f"{name}.bias"] = rand(out, std=0.01)

    for index, inputs, out, _ in ENCODER_LAYERS:
        conv(f"E.encoder_q.E.{index}", out, inputs)
        bn = f"E.encoder_q.E.{index + 1}"
        state[f"{bn}.weight"], state[f"{bn}.bias"] = 1 + rand(out, std=0.1), rand(out, std=0.1)
        state[f"{bn}.running_mean"] = rand(out, std=0.1) * (255 if index == 0 else 1)
        state[f"{bn}.running_var"] = (0.5 + torch.rand(out, generator=generator)) * (255**2 if index == 0 else 1)
        state[f"{bn}.num_batches_tracked"] = torch.tensor(600, dtype=torch.int64)
    state["E.encoder_q.mlp.0.weight"], state["E.encoder_q.mlp.0.bias"] = rand(256, 256, std=0.06), rand(256)
    state["E.encoder_q.mlp.2.weight"], state["E.encoder_q.mlp.2.bias"] = rand(256, 256, std=0.06), rand(256)
    mean = 255 * torch.tensor(DIV2K_MEAN)
    state["G.sub_mean.weight"], state["G.sub_mean.bias"] = torch.eye(3).view(3, 3, 1, 1), -mean
    state["G.add_mean.weight"], state["G.add_mean.bias"] = torch.eye(3).view(3, 3, 1, 1), mean.clone()
    conv("G.head.0", channels, 3)
    state["G.compress.0.weight"] = rand(channels, 256, std=1 / 16)
    for g in range(groups):
        for b in range(blocks):
            block = f"G.body.{g}.body.{b}"
            for n in (1, 2):
                da = f"{block}.da_conv{n}"
                state[f"{da}.kernel.0.weight"] = rand(channels, channels, std=1 / math.sqrt(channels))
                state[f"{da}.kernel.2.weight"] = rand(9 * channels, channels, std=0.3 / math.sqrt(channels))
                conv(f"{da}.conv", channels, channels, 1)
                conv(f"{da}.ca.conv_du.0", channels // 8, channels, 1, bias=False)
                conv(f"{da}.ca.conv_du.2", channels, channels // 8, 1, bias=False)
                conv(f"{block}.conv{n}", channels, channels)
        conv(f"G.body.{g}.body.{blocks}", channels, channels)
    conv(f"G.body.{groups}", channels, channels)
    for index, factor in enumerate([3] if scale == 3 else [2] * int(math.log2(scale))):
        conv(f"G.tail.0.{2 * index}", factor**2 * channels, channels)
    conv("G.tail.1", 3, channels)
    return state


def reference_dasr_official(state: dict[str, torch.Tensor], lr255: torch.Tensor, scale: int) -> torch.Tensor:
    """The release's forward on a 0..255 image, in plain torch from the documented numerics."""
    s = {k: v.double() for k, v in state.items() if v.dtype.is_floating_point}
    lrelu = lambda x: F.leaky_relu(x, 0.1)  # noqa: E731

    def conv(name: str, x: torch.Tensor, stride: int = 1, padding: int = 1) -> torch.Tensor:
        return F.conv2d(x, s[f"{name}.weight"], s.get(f"{name}.bias"), stride=stride, padding=padding)

    x = lr255.double()
    e = x
    for index, _, _, stride in ENCODER_LAYERS:
        bn = f"E.encoder_q.E.{index + 1}"
        e = lrelu(F.batch_norm(conv(f"E.encoder_q.E.{index}", e, stride), s[f"{bn}.running_mean"],
                               s[f"{bn}.running_var"], s[f"{bn}.weight"], s[f"{bn}.bias"], training=False))
    d = lrelu(e.mean(dim=(2, 3)) @ s["G.compress.0.weight"].T)

    def da_conv(name: str, h: torch.Tensor) -> torch.Tensor:
        kernel = lrelu(d @ s[f"{name}.kernel.0.weight"].T) @ s[f"{name}.kernel.2.weight"].T
        channels = h.shape[1]
        depthwise = F.conv2d(h, kernel[0].view(channels, 1, 3, 3), padding=1, groups=channels)  # batch of one
        attention = torch.sigmoid(conv(f"{name}.ca.conv_du.2", lrelu(conv(f"{name}.ca.conv_du.0", d[:, :, None, None], padding=0)), padding=0))
        return conv(f"{name}.conv", lrelu(depthwise), padding=0) + h * attention

    head = conv("G.head.0", conv("G.sub_mean", x, padding=0))
    groups = len({k.split(".")[2] for k in s if k.startswith("G.body.")}) - 1
    blocks = len({k.split(".")[4] for k in s if k.startswith("G.body.0.body.")}) - 1
    h = head
    for g in range(groups):
        group_in = h
        for b in range(blocks):
            block = f"G.body.{g}.body.{b}"
            y = lrelu(conv(f"{block}.conv1", lrelu(da_conv(f"{block}.da_conv1", h))))
            h = h + conv(f"{block}.conv2", lrelu(da_conv(f"{block}.da_conv2", y)))
        h = group_in + conv(f"G.body.{g}.body.{blocks}", h)
    h = head + conv(f"G.body.{groups}", h)
    for index, factor in enumerate([3] if scale == 3 else [2] * int(math.log2(scale))):
        h = F.pixel_shuffle(conv(f"G.tail.0.{2 * index}", h), factor)
    return conv("G.add_mean", conv("G.tail.1", h), padding=0)


@pytest.mark.parametrize("scale", [4, 3])
def test_dasr_release_converts_with_its_0_255_convention(tmp_path: Path, scale: int) -> None:
    from upscale_cli.checkpoint import load_model, read_info

    state = dasr_official_state(scale)
    path = tmp_path / "model_600.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)  # PyTorch 1.1's legacy format
    out = tmp_path / "dasr_official.safetensors"
    result = invoke("convert", path, "-o", out)
    assert result.exit_code == 0, result.output
    info = read_info(out)
    assert (info.arch, info.scale) == ("dasr", scale)
    assert {k: info.config[k] for k in ("channels", "groups", "blocks", "reduction", "probe")} == \
        {"channels": 16, "groups": 2, "blocks": 2, "reduction": 8, "probe": False}
    dropped = [k for k in state if k.startswith(("E.encoder_q.mlp.", "G.sub_mean.", "G.add_mean."))]
    assert info.params == sum(v.numel() for k, v in state.items() if v.dtype.is_floating_point and k not in dropped)
    rgb = smooth_image(12, 10, 9).astype(np.float32) / 255
    lr = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    expected = reference_dasr_official(state, 255 * lr, scale) / 255
    model, _ = load_model(out)
    with torch.no_grad():
        got = model.eval()(lr).double()
    assert got.shape == expected.shape and expected.std() > 0.05  # a real signal, not a constant
    assert (got - expected).abs().max() < 1e-4 * float(expected.abs().max())
    run = invoke("-m", out, "-o", tmp_path / "x.png", *save_image(tmp_path / "in.png", rgb), "--json")
    assert run.exit_code == 0, run.output
    assert "estimates" not in run.stdout  # no probe: nothing estimated


def test_dasr_release_with_another_mean_shift_is_refused(tmp_path: Path) -> None:
    state = dasr_official_state(4)
    state["G.add_mean.bias"] = state["G.add_mean.bias"] + 5
    path = tmp_path / "model_600.pt"
    torch.save(state, path)
    result = invoke("convert", path, "-o", tmp_path / "o.safetensors")
    assert result.exit_code == ExitCode.MODEL
    assert "G.add_mean is not the identity + 255 x DIV2K's mean colour" in result.output


def save_image(path: Path, rgb: np.ndarray) -> list[Path]:
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(path)
    return [path]


def test_training_can_start_from_the_dasr_release(tmp_path: Path) -> None:
    """Fine-tuning the authors' model: its encoder and G are loaded, the probe (which it lacks) starts fresh."""
    from upscale_cli.archs.dasr import DASR, DASRConfig
    from upscale_cli.train.recipes.dasr import load_start

    path = tmp_path / "model_600.pt"
    torch.save(dasr_official_state(4), path)
    out = tmp_path / "dasr_official.safetensors"
    assert invoke("convert", path, "-o", out).exit_code == 0
    model = DASR(DASRConfig(channels=16, groups=2, blocks=2))
    probe_before = model.probe[0].weight.clone()
    load_start(model, out)
    converted = dasr_official_state(4)
    torch.testing.assert_close(model.groups[1].conv.weight, converted["G.body.1.body.2.weight"])
    torch.testing.assert_close(model.head.weight, converted["G.head.0.weight"] * 255)
    assert torch.equal(model.probe[0].weight, probe_before)


# ----- ArtFlow's official release (random values in the documented layout) -------------------------------

def artflow_official_state(blocks: int = 2, flows: int = 2, hidden: int = 16) -> dict[str, torch.Tensor]:
    """pkuanjie/ArtFlow's glow.pth layout (official_checkpoints.md section 4), random values; the masked-off
    parts of w_l and w_u hold noise, which the documented numerics ignore."""
    generator, state, channels = torch.Generator().manual_seed(5), {}, 3

    def rand(*shape: int, std: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64) * std

    for b in range(blocks):
        channels *= 4
        for f in range(flows):
            key = f"blocks.{b}.flows.{f}"
            state[f"{key}.actnorm.loc"] = rand(1, channels, 1, 1, std=0.1)
            state[f"{key}.actnorm.scale"] = torch.exp(rand(1, channels, 1, 1, std=0.1))
            state[f"{key}.actnorm.initialized"] = torch.tensor(1, dtype=torch.uint8)
            q, _ = torch.linalg.qr(rand(channels, channels))
            p, lower, upper = torch.linalg.lu(q)
            upper_mask = torch.triu(torch.ones(channels, channels, dtype=torch.float64), 1)
            state[f"{key}.invconv.w_p"] = p
            state[f"{key}.invconv.w_l"] = lower * upper_mask.T + rand(channels, channels) * (1 - upper_mask.T)
            state[f"{key}.invconv.w_u"] = upper * upper_mask + rand(channels, channels) * (1 - upper_mask)
            state[f"{key}.invconv.w_s"] = torch.log(torch.diagonal(upper).abs())
            state[f"{key}.invconv.s_sign"] = torch.sign(torch.diagonal(upper))
            state[f"{key}.invconv.u_mask"], state[f"{key}.invconv.l_mask"] = upper_mask, upper_mask.T.clone()
            state[f"{key}.invconv.l_eye"] = torch.eye(channels, dtype=torch.float64)
            half = channels // 2
            state[f"{key}.coupling.net.0.weight"] = rand(hidden, half, 3, 3, std=0.05)
            state[f"{key}.coupling.net.0.bias"] = rand(hidden, std=0.01)
            state[f"{key}.coupling.net.2.weight"] = rand(hidden, hidden, 1, 1, std=0.05)
            state[f"{key}.coupling.net.2.bias"] = rand(hidden, std=0.01)
            state[f"{key}.coupling.net.4.scale"] = rand(1, half, 1, 1, std=0.1)
            state[f"{key}.coupling.net.4.conv.weight"] = rand(half, hidden, 3, 3, std=0.05)
            state[f"{key}.coupling.net.4.conv.bias"] = rand(half, std=0.01)
    return {k: v.float() if v.dtype == torch.float64 else v for k, v in state.items()}


def reference_artflow_latent(state: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
    """The release's forward flow from the documented numerics: squeeze (c*4 + 2*dy + dx), then per flow
    ActNorm scale*(x + loc), the LU 1x1 conv and additive coupling with a 1-padded zero conv."""
    s = {k: v.double() for k, v in state.items()}
    x = image.double()
    blocks = len({k.split(".")[1] for k in s})
    flows = len({k.split(".")[3] for k in s if k.startswith("blocks.0.")})
    for b in range(blocks):
        batch, channels, height, width = x.shape
        x = x.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 1, 3, 5, 2, 4)
        x = x.reshape(batch, channels * 4, height // 2, width // 2)
        for f in range(flows):
            k = f"blocks.{b}.flows.{f}"
            x = s[f"{k}.actnorm.scale"] * (x + s[f"{k}.actnorm.loc"])
            lower = s[f"{k}.invconv.w_l"] * s[f"{k}.invconv.l_mask"] + s[f"{k}.invconv.l_eye"]
            upper = s[f"{k}.invconv.w_u"] * s[f"{k}.invconv.u_mask"] + torch.diag(s[f"{k}.invconv.s_sign"] * torch.exp(s[f"{k}.invconv.w_s"]))
            x = F.conv2d(x, (s[f"{k}.invconv.w_p"] @ lower @ upper)[:, :, None, None])
            a, rest = x.chunk(2, 1)
            h = F.relu(F.conv2d(a, s[f"{k}.coupling.net.0.weight"], s[f"{k}.coupling.net.0.bias"], padding=1))
            h = F.relu(F.conv2d(h, s[f"{k}.coupling.net.2.weight"], s[f"{k}.coupling.net.2.bias"]))
            h = F.conv2d(F.pad(h, (1, 1, 1, 1), value=1.0), s[f"{k}.coupling.net.4.conv.weight"], s[f"{k}.coupling.net.4.conv.bias"])
            x = torch.cat([a, rest + h * torch.exp(3 * s[f"{k}.coupling.net.4.scale"])], 1)
    return x


def test_artflow_release_converts_and_gives_the_documented_latent(tmp_path: Path) -> None:
    from upscale_cli.checkpoint import load_model, read_info

    state = artflow_official_state()
    path = tmp_path / "glow.pth"
    torch.save({"iter": 12, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    out = tmp_path / "artflow_official.safetensors"
    result = invoke("convert", path, "-o", out)
    assert result.exit_code == 0, result.output
    info = read_info(out)
    assert (info.arch, info.config["blocks"], info.config["flows"], info.config["hidden"]) == ("artflow", 2, 2, 16)
    model, _ = load_model(out)
    image = torch.from_numpy(smooth_image(16, 12, 3).astype(np.float32) / 255).permute(2, 0, 1)[None]
    with torch.no_grad():
        latent = model.eval().project(image)
        torch.testing.assert_close(latent.double(), reference_artflow_latent(state, image), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.revert(latent), image, atol=1e-4, rtol=0)  # still a flow: it inverts
    style = tmp_path / "style.png"
    save_image(style, smooth_image(20, 20, 4).astype(np.float32) / 255)
    run = invoke("stylize", *save_image(tmp_path / "c.png", image[0].permute(1, 2, 0).numpy()),
                 "--style", style, "-m", out, "-o", tmp_path / "s.png")
    assert run.exit_code == 0, run.output


@pytest.mark.parametrize(("tensor", "value", "message"), [
    ("blocks.1.flows.0.actnorm.scale", -1.0, "scales that are not positive"),
    ("blocks.0.flows.1.actnorm.initialized", 0, "never initialised from data"),
    ("blocks.0.flows.0.invconv.l_eye", 2.0, "is not the standard l_eye"),
])
def test_artflow_release_files_our_flow_cannot_hold_are_refused(tmp_path: Path, tensor: str, value: float, message: str) -> None:
    state = artflow_official_state()
    state[tensor] = torch.full_like(state[tensor], value) if state[tensor].dim() < 2 or value != 2.0 else state[tensor] * value
    path = tmp_path / "glow.pth"
    torch.save({"iter": 1, "state_dict": state}, path)
    result = invoke("convert", path, "-o", tmp_path / "o.safetensors")
    assert result.exit_code == ExitCode.MODEL and message in result.output, result.output


# ----- SFT-GAN's official release (random values in the documented layout) ------------------------------

def sftgan_official_state(variant: str, blocks: int = 2, channels: int = 16) -> dict[str, torch.Tensor]:
    """xinntao/SFTGAN's generator layout (official_checkpoints.md section 3.2), random values."""
    generator, state = torch.Generator().manual_seed(3), {}

    def conv(name: str, out: int, inputs: int, size: int) -> None:
        state[f"{name}.weight"] = torch.randn(out, inputs, size, size, generator=generator) * (0.7 / math.sqrt(size * size * inputs))
        state[f"{name}.bias"] = torch.randn(out, generator=generator) * 0.05

    conv("conv0", channels, 3, 3)
    for k in range(blocks + 1):
        for layer in ("sft0", "sft1") if k < blocks else ("",):
            prefix = f"sft_branch.{k}." + (f"{layer}." if layer else "")
            for kind in ("scale", "shift"):
                conv(f"{prefix}SFT_{kind}_conv0", 32, 32, 1)
                conv(f"{prefix}SFT_{kind}_conv1", channels, 32, 1)
        if k < blocks:
            conv(f"sft_branch.{k}.conv0", channels, channels, 3)
            conv(f"sft_branch.{k}.conv1", channels, channels, 3)
    conv(f"sft_branch.{blocks + 1}", channels, channels, 3)
    conv("CondNet.0", 128, 8, 4)
    for index in (2, 4, 6):
        conv(f"CondNet.{index}", 128, 128, 1)
    conv("CondNet.8", 32, 128, 1)
    if variant == "pytorch":
        conv("HR_branch.0", 4 * channels, channels, 3)
        conv("HR_branch.3", 4 * channels, channels, 3)
    else:
        conv("HR_branch.1", channels, channels, 3)
        conv("HR_branch.4", channels, channels, 3)
    conv("HR_branch.6", channels, channels, 3)
    conv("HR_branch.8", 3, channels, 3)
    return state


def reference_sftgan(state: dict[str, torch.Tensor], lr: torch.Tensor, prior: torch.Tensor, variant: str) -> torch.Tensor:
    """The release's forward from the documented numerics (official_checkpoints.md section 3.4)."""
    s = {k: v.double() for k, v in state.items()}
    slope = 0.1 if variant == "pytorch" else 0.01

    def conv(name: str, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
        size = s[f"{name}.weight"].shape[-1]
        return F.conv2d(x, s[f"{name}.weight"], s[f"{name}.bias"], stride=stride, padding=size // 2 if size == 3 else 0)

    cond = prior.double()
    cond = F.leaky_relu(conv("CondNet.0", cond, stride=4), 0.1)
    for index in (2, 4, 6):
        cond = F.leaky_relu(conv(f"CondNet.{index}", cond), 0.1)
    cond = conv("CondNet.8", cond)

    def sft(prefix: str, x: torch.Tensor) -> torch.Tensor:
        scale = conv(f"{prefix}SFT_scale_conv1", F.leaky_relu(conv(f"{prefix}SFT_scale_conv0", cond), slope))
        shift = conv(f"{prefix}SFT_shift_conv1", F.leaky_relu(conv(f"{prefix}SFT_shift_conv0", cond), slope))
        return x * (scale + 1) + shift if variant == "pytorch" else x * scale + shift

    features = conv("conv0", lr.double())
    x = features
    blocks = len({k.split(".")[1] for k in s if k.startswith("sft_branch.")}) - 2
    for k in range(blocks):
        if variant == "pytorch":
            y = conv(f"sft_branch.{k}.conv1", sft(f"sft_branch.{k}.sft1.", F.relu(conv(f"sft_branch.{k}.conv0", sft(f"sft_branch.{k}.sft0.", x)))))
        else:
            y = conv(f"sft_branch.{k}.conv1", F.relu(sft(f"sft_branch.{k}.sft1.", conv(f"sft_branch.{k}.conv0", F.relu(sft(f"sft_branch.{k}.sft0.", x))))))
        x = x + y
    x = features + conv(f"sft_branch.{blocks + 1}", sft(f"sft_branch.{blocks}.", x))
    if variant == "pytorch":
        x = F.relu(F.pixel_shuffle(conv("HR_branch.0", x), 2))
        x = F.relu(F.pixel_shuffle(conv("HR_branch.3", x), 2))
    else:
        x = F.relu(conv("HR_branch.1", F.interpolate(x, scale_factor=2, mode="nearest")))
        x = F.relu(conv("HR_branch.4", F.interpolate(x, scale_factor=2, mode="nearest")))
    return conv("HR_branch.8", F.relu(conv("HR_branch.6", x)))


@pytest.mark.parametrize("variant", ["pytorch", "paper"])
def test_sftgan_release_converts_and_matches_the_documented_forward(tmp_path: Path, variant: str) -> None:
    from upscale_cli.checkpoint import load_model, read_info

    state = sftgan_official_state(variant)
    path = tmp_path / ("SFTGAN_noBN_OST_bg.pth" if variant == "pytorch" else "SFTGAN_torch.pth")
    torch.save(state, path)
    out = tmp_path / "sftgan_official.safetensors"
    result = invoke("convert", path, "-o", out)
    assert result.exit_code == 0, result.output
    info = read_info(out)
    assert (info.arch, info.config["variant"], info.config["blocks"], info.config["channels"]) == ("sftgan", variant, 2, 16)
    assert info.params == sum(v.numel() for v in state.values())
    lr = torch.from_numpy(smooth_image(8, 12, 2).astype(np.float32) / 255).permute(2, 0, 1)[None]
    prior = torch.softmax(torch.randn(1, 8, 32, 48, generator=torch.Generator().manual_seed(1)), dim=1)
    model, _ = load_model(out)
    with torch.no_grad():
        got = model.eval()(lr, prior).double()
    expected = reference_sftgan(state, lr, prior, variant)
    assert expected.std() > 0.01
    torch.testing.assert_close(got, expected, atol=1e-4 * float(expected.abs().max()), rtol=1e-4)


def test_sftgan_segmentation_network_is_refused_with_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "segmentation_OST_bic.pth"
    torch.save({"feature.0.weight": torch.zeros(64, 3, 3, 3), "feature.47.weight": torch.zeros(8, 512, 1, 1),
                "feature.47.bias": torch.zeros(8), "deconv.weight": torch.zeros(8, 1, 16, 16)}, path)
    result = invoke("convert", path, "-o", tmp_path / "o.safetensors")
    assert result.exit_code == ExitCode.MODEL
    assert "segmentation network (OutdoorSceneSeg)" in result.output and "upscale has no network for it" in result.output


# ----- SRFlow's official release (random values in the documented layout) ---------------------------------

def srflow_official_state(blocks: int = 23, features: int = 8, growth: int = 4, steps: int = 1,
                          hidden: int = 8) -> dict[str, torch.Tensor]:
    """andreas128/SRFlow's x4 layout (official_checkpoints.md section 1): RRDB.* in the ESRGAN repository's
    names, then flowUpsamplerNet.layers.{i} (3 levels of squeeze, 2 transition steps, `steps` conditional
    steps; a split after level 1), plus the unused flowUpsamplerNet.f; random values."""
    generator, state = torch.Generator().manual_seed(21), {}

    def rand(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * std

    for name, tensor in to_trunk_layout(tiny_state(blocks=blocks, features=features, growth=growth, seed=4)).items():
        state[f"RRDB.{name}"] = tensor
    cond = 5 * features
    index, channels = 0, 3
    for level in range(3):
        channels *= 4
        index += 1  # the squeeze: no tensors
        for kind in ["transition"] * 2 + ["step"] * steps:
            key = f"flowUpsamplerNet.layers.{index}"
            state[f"{key}.actnorm.bias"], state[f"{key}.actnorm.logs"] = rand(1, channels, 1, 1, std=0.1), rand(1, channels, 1, 1, std=0.1)
            state[f"{key}.invconv.weight"] = torch.linalg.qr(rand(channels, channels, std=1.0))[0]
            if kind == "step":
                for net, inputs, outputs in (("fFeatures", cond, 2 * channels), ("fAffine", channels // 2 + cond, channels)):
                    p = f"{key}.affine.{net}"
                    state[f"{p}.0.weight"] = rand(hidden, inputs, 3, 3, std=0.05)
                    state[f"{p}.0.actnorm.bias"], state[f"{p}.0.actnorm.logs"] = rand(1, hidden, 1, 1, std=0.1), rand(1, hidden, 1, 1, std=0.1)
                    state[f"{p}.2.weight"] = rand(hidden, hidden, 1, 1, std=0.2)
                    state[f"{p}.2.actnorm.bias"], state[f"{p}.2.actnorm.logs"] = rand(1, hidden, 1, 1, std=0.1), rand(1, hidden, 1, 1, std=0.1)
                    state[f"{p}.4.weight"], state[f"{p}.4.bias"] = rand(outputs, hidden, 3, 3, std=0.05), rand(outputs, std=0.05)
                    state[f"{p}.4.logs"] = rand(outputs, 1, 1, std=0.05)
            index += 1
        if level == 0:
            key = f"flowUpsamplerNet.layers.{index}"
            state[f"{key}.conv.weight"], state[f"{key}.conv.bias"] = rand(channels, channels // 2, 3, 3, std=0.05), rand(channels, std=0.05)
            state[f"{key}.conv.logs"] = rand(channels, 1, 1, std=0.05)
            index, channels = index + 1, channels // 2
    state["flowUpsamplerNet.f.0.weight"], state["flowUpsamplerNet.f.0.bias"] = rand(96, cond, 3, 3, std=0.01), rand(96, std=0.01)
    return state


def reference_srflow_latents(state: dict[str, torch.Tensor], hr: torch.Tensor, lr: torch.Tensor) -> list[torch.Tensor]:
    """The release's encode direction (HR -> [split eps, top z]) from the documented numerics."""
    s = {k: v.double() for k, v in state.items()}
    lrelu = lambda x: F.leaky_relu(x, 0.2)  # noqa: E731

    def conv(name: str, x: torch.Tensor, padding: int = 1) -> torch.Tensor:
        return F.conv2d(x, s[f"{name}.weight"], s.get(f"{name}.bias"), padding=padding)

    blocks = len({k.split(".")[2] for k in s if k.startswith("RRDB.RRDB_trunk.")})
    first = conv("RRDB.conv_first", lr.double())
    x, stacked = first, []
    for b in range(blocks):
        block_in = x
        for r in (1, 2, 3):
            rdb_in, features = x, [x]
            for c in range(1, 6):
                out = conv(f"RRDB.RRDB_trunk.{b}.RDB{r}.conv{c}", torch.cat(features, 1))
                features.append(lrelu(out) if c < 5 else out)
            x = rdb_in + 0.2 * features[-1]
        x = block_in + 0.2 * x
        if b in (1, 8, 15, 22):
            stacked.append(x)
    last = first + conv("RRDB.trunk_conv", x)
    stack = torch.cat(stacked, 1)
    up2 = conv("RRDB.upconv1", F.interpolate(last, scale_factor=2, mode="nearest"))
    conds = [torch.cat([up2, F.interpolate(stack, scale_factor=2, mode="nearest")], 1), torch.cat([last, stack], 1),
             torch.cat([F.interpolate(last, scale_factor=0.5, mode="bilinear", align_corners=False),
                        F.interpolate(stack, scale_factor=0.5, mode="nearest")], 1)]

    def actnorm(name: str, z: torch.Tensor) -> torch.Tensor:
        return (z + s[f"{name}.bias"]) * torch.exp(s[f"{name}.logs"])

    def param_net(name: str, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(actnorm(f"{name}.0.actnorm", F.conv2d(z, s[f"{name}.0.weight"], padding=1)))
        h = F.relu(actnorm(f"{name}.2.actnorm", F.conv2d(h, s[f"{name}.2.weight"])))
        return conv(f"{name}.4", h) * torch.exp(3 * s[f"{name}.4.logs"])

    def affine(z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return (z + h[:, 0::2]) * (torch.sigmoid(h[:, 1::2] + 2) + 1e-4)

    z, latents, level = hr.double(), [], -1
    for index in range(max(int(k.split(".")[2]) for k in s if k.startswith("flowUpsamplerNet.layers.")) + 1):
        key = f"flowUpsamplerNet.layers.{index}"
        if f"{key}.actnorm.bias" not in s and f"{key}.conv.weight" not in s:  # squeeze
            batch, channels, height, width = z.shape
            z = z.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 1, 3, 5, 2, 4)
            z = z.reshape(batch, 4 * channels, height // 2, width // 2)
            level += 1
        elif f"{key}.conv.weight" in s:  # split: keep the first half, standardise the rest by the prior
            keep = z.shape[1] // 2
            h = conv(f"{key}.conv", z[:, :keep]) * torch.exp(3 * s[f"{key}.conv.logs"])
            latents.append((z[:, keep:] - h[:, 0::2]) * torch.exp(-h[:, 1::2]))
            z = z[:, :keep]
        else:
            z = F.conv2d(actnorm(f"{key}.actnorm", z), s[f"{key}.invconv.weight"][:, :, None, None])
            if f"{key}.affine.fAffine.0.weight" in s:
                z = affine(z, param_net(f"{key}.affine.fFeatures", conds[level]))
                half = z.shape[1] // 2
                z = torch.cat([z[:, :half], affine(z[:, half:], param_net(f"{key}.affine.fAffine", torch.cat([z[:, :half], conds[level]], 1)))], 1)
    return latents + [z]


def test_srflow_release_converts_and_gives_the_documented_latents(tmp_path: Path) -> None:
    from upscale_cli.checkpoint import load_model, read_info

    state = srflow_official_state()
    path = tmp_path / "SRFlow_DF2K_4X.pth"
    torch.save(state, path)
    out = tmp_path / "srflow_official.safetensors"
    result = invoke("convert", path, "-o", out)
    assert result.exit_code == 0, result.output
    info = read_info(out)
    assert (info.arch, info.scale, info.config["encoder"], info.config["encoder_blocks"]) == ("srflow", 4, "rrdb", 23)
    assert (info.config["levels"], info.config["steps"], info.config["transition_steps"]) == (3, 1, 2)
    assert tuple(info.config["stack_blocks"]) == (1, 8, 15, 22)
    unused = [k for k in state if k.startswith(("RRDB.HRconv.", "RRDB.conv_last.", "RRDB.upconv2.", "flowUpsamplerNet.f."))]
    assert info.params == sum(v.numel() for k, v in state.items() if k not in unused)
    model, _ = load_model(out)
    generator = torch.Generator().manual_seed(2)
    lr, hr = torch.rand(1, 3, 8, 12, generator=generator), torch.rand(1, 3, 32, 48, generator=generator)
    with torch.no_grad():
        latents, _ = model.eval().encode(hr, lr)
        expected = reference_srflow_latents(state, hr, lr)
        assert [tuple(z.shape) for z in latents] == [tuple(z.shape) for z in expected] == [(1, 6, 16, 24), (1, 96, 4, 6)]
        for got, want in zip(latents, expected):
            torch.testing.assert_close(got.double(), want, atol=1e-4 * float(want.abs().max()), rtol=1e-4)
        sample = model.sample(lr, tau=0.7, generator=torch.Generator().manual_seed(0))
    assert sample.shape == (1, 3, 32, 48) and torch.isfinite(sample).all()


# ----- the receptive radius measured at conversion -------------------------------------------------------

def test_the_measured_radius_of_a_compact_model_counts_its_convolutions(tmp_path: Path) -> None:
    """Compact runs all of its convs + 2 3x3 convolutions at LR size: one changed pixel reaches that far."""
    from upscale_cli.checkpoint import read_info

    path = tmp_path / "compact.pth"
    torch.save({"params": compact_state(convs=3)}, path)
    out = tmp_path / "compact.safetensors"
    assert invoke("convert", path, "-o", out).exit_code == 0
    assert read_info(out).source["receptive_radius_measured"] == 3 + 2


def test_a_model_reaching_beyond_its_declared_radius_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import upscale_cli.convert

    monkeypatch.setattr(upscale_cli.convert, "measure_receptive_radius", lambda *args, **kwargs: 10_000)
    path = tmp_path / "compact.pth"
    torch.save({"params": compact_state()}, path)
    result = invoke("convert", path, "-o", tmp_path / "o.safetensors")
    assert result.exit_code == ExitCode.MODEL and "tiles would show seams" in result.output
    assert not (tmp_path / "o.safetensors").exists()
