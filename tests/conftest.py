"""Shared fixtures: tiny images and tiny checkpoints made inside the tests (no external files)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
