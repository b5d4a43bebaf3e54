"""Shared fixtures: tiny images and tiny checkpoints made inside the tests (no external files)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def smooth_image(height: int, width: int, seed: int) -> np.ndarray:
    """A natural-ish uint8 RGB image: low-frequency colour waves plus a little texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.02, 0.15, 2).tolist() + [rng.uniform(0, 6.28)]
        channels.append(0.5 + 0.35 * np.sin(fx * x + fy * y + phase))
    image = np.stack(channels, -1) + rng.normal(0, 0.03, (height, width, 3))
    return (image.clip(0, 1) * 255).round().astype(np.uint8)


@pytest.fixture(autouse=True)
def torch_backend_and_a_private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Commands run on torch unless a test asks for another backend (`--backend auto` would pick OpenVINO where
    the test extra installed it), and caches go to this test session's folder, never the user's."""
    monkeypatch.setenv("UPSCALE_BACKEND", "torch")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny convolutions run fastest single-threaded (and leave the other core to other work)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """Three 64x64 RGB PNGs."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(64, 64, i)).save(folder / f"img_{i}.png")
    return folder


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A randomly initialised x4 SRResNet (8 channels, 1 block) saved in the real checkpoint format."""
    import torch

    from upscale_cli.archs.srresnet import SRResNet, SRResNetConfig
    from upscale_cli.checkpoint import CheckpointInfo, config_dict, save_checkpoint

    torch.manual_seed(0)
    config = SRResNetConfig(scale=4, channels=8, blocks=1)
    model = SRResNet(config).eval()
    path = tmp_path / "tiny_x4.safetensors"
    save_checkpoint(path, model, CheckpointInfo("srresnet", 4, config_dict(config), name="tiny_x4"))
    return path


def small_model(arch_id: str, seed: int = 0) -> tuple[Any, Any]:
    """An architecture's descriptor and its small config, built with seeded random weights and initialised
    where it needs data.

    Parameters initialised to exactly zero (a flow's zero-convolutions) get small random values, so that no
    path of the network is switched off and the tests see everything it reads."""
    import torch

    from upscale_cli.archs import get_architecture

    descriptor = get_architecture(arch_id)
    torch.manual_seed(seed)
    model = descriptor.build(descriptor.make_config(dict(descriptor.small_config))).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.02)
    if descriptor.initialize is not None:
        descriptor.initialize(model, torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed)))
    return descriptor, model.eval()


def save_small(arch_id: str, folder: Path, name: str | None = None, seed: int = 0) -> Path:
    """`small_model` saved as a checkpoint in `folder` (named like shipped weights: NAME_xSCALE.safetensors)."""
    from dataclasses import asdict

    from upscale_cli.checkpoint import CheckpointInfo, save_checkpoint

    descriptor, model = small_model(arch_id, seed)
    config = model.config
    scale = descriptor.scale(config)
    path = folder / f"{name or arch_id.replace('_', '')}_x{scale}.safetensors"
    save_checkpoint(path, model, CheckpointInfo(arch_id, scale, asdict(config), name=path.stem))
    return path
