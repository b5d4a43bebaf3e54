"""The checkpoint format: round trip, metadata, and a clear error for every way a file can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from upscale_cli.archs.srresnet import SRResNet, SRResNetConfig
from upscale_cli.checkpoint import CheckpointInfo, config_dict, load_model, read_info, save_checkpoint
from upscale_cli.errors import CheckpointError, ExitCode


def metadata_of(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def test_round_trip_restores_identical_outputs(tiny_checkpoint: Path) -> None:
    model, info = load_model(tiny_checkpoint)
    assert info.arch == "srresnet" and info.scale == 4 and info.config["channels"] == 8
    torch.manual_seed(0)
    reference = SRResNet(SRResNetConfig(scale=4, channels=8, blocks=1)).eval()
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert not model.training


def test_metadata_records_provenance(tmp_path: Path) -> None:
    config = SRResNetConfig(scale=2, channels=8, blocks=1)
    info = CheckpointInfo("srresnet", 2, config_dict(config), name="mine_x2",
                          training={"command": "upscale train ...", "seed": 0}, metrics={"Set5": {"psnr_y": 30.0}})
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, SRResNet(config), info)
    meta = metadata_of(path)
    assert meta["format"] == "upscale-cli" and meta["format_version"] == "1" and meta["arch"] == "srresnet"
    assert json.loads(meta["config"]) == config_dict(config)
    again = read_info(path)
    assert again.training["seed"] == 0 and again.metrics["Set5"]["psnr_y"] == 30.0
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary file left


def rewrite(path: Path, tensors: dict | None = None, **meta_changes: str | None) -> Path:
    meta = metadata_of(path)
    for key, value in meta_changes.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    save_file(tensors if tensors is not None else load_file(str(path)), str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.write_bytes(b"\x80\x04 not safetensors at all"), "not a safetensors file"),
        (lambda p: p.write_bytes(b""), "not a safetensors file"),
        (lambda p: rewrite(p, arch="esrgan9000"), "unknown architecture 'esrgan9000'"),
        (lambda p: rewrite(p, arch=None), "metadata lacks arch"),
        (lambda p: rewrite(p, format_version="7"), "format version 7 is not supported"),
        (lambda p: rewrite(p, config='{"channels": 8, "blocks": 1, "scale": 4, "bogus": 1}'), "unknown srresnet config keys: bogus"),
        (lambda p: rewrite(p, config="{not json"), "malformed checkpoint metadata"),
        (lambda p: rewrite(p, scale="2"), "disagrees with config scale 4"),
        (lambda p: rewrite(p, {k: v for k, v in load_file(str(p)).items() if k != "tail.weight"}),
         "missing tensors: tail.weight"),
        (lambda p: rewrite(p, {**load_file(str(p)), "extra.weight": torch.zeros(1)}), "unexpected tensors: extra.weight"),
        (lambda p: rewrite(p, {**load_file(str(p)), "tail.bias": torch.zeros(5)}),
         r"shape mismatches \(file vs model\): tail.bias \(5,\) vs \(3,\)"),
    ],
)
def test_each_bad_checkpoint_gets_a_named_error(tiny_checkpoint: Path, change, message: str) -> None:
    change(tiny_checkpoint)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_model(tiny_checkpoint)
    assert str(tiny_checkpoint) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert caught.value.exit_code == ExitCode.MODEL


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        read_info(tmp_path / "nope.safetensors")


def test_pickle_files_are_never_unpickled(tmp_path: Path) -> None:
    """A .pth pickle given as a model is refused as not-safetensors; its payload never runs."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    payload = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('x')"

    class Evil:
        def __reduce__(self):
            return (exec, (payload,))

    import pickle

    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_model(path)
    assert not marker.exists()


def test_weights_digest_names_the_tensors_not_the_metadata(tmp_path: Path) -> None:
    from upscale_cli.checkpoint import record_metrics
    from upscale_cli.models import weights_digest

    config = SRResNetConfig(scale=4, channels=8, blocks=1)
    torch.manual_seed(0)
    a, b = SRResNet(config), SRResNet(config)
    info = CheckpointInfo("srresnet", 4, config_dict(config), name="d_x4")
    save_checkpoint(tmp_path / "a.safetensors", a, info)
    save_checkpoint(tmp_path / "b.safetensors", b, info)
    before = weights_digest(tmp_path / "a.safetensors")
    assert len(before) == 8 and before != weights_digest(tmp_path / "b.safetensors")
    record_metrics(tmp_path / "a.safetensors", "Set5", {"psnr_y": 30.0})
    assert read_info(tmp_path / "a.safetensors").metrics["Set5"]["psnr_y"] == 30.0
    assert weights_digest(tmp_path / "a.safetensors") == before
