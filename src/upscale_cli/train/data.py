"""Training data: HR photos decoded once into memory, random augmented crops, LR made on the fly.

LR is made with the same MATLAB-compatible bicubic as the benchmark LR files and rounded to 8 bits,
so the network trains on exactly the kind of input it is measured on. Cropping from memory costs
far less than a training step, so the sampler runs inline and never starves it.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from upscale_cli.image_io import read_image
from upscale_cli.resize import imresize, quantize

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name so every run sees the same order."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_rgb(path: Path) -> torch.Tensor:
    """An image file as float RGB (3, H, W) in [0, 1], decoded by the same code `upscale` reads inputs with
    (EXIF orientation applied, 16-bit colour kept, alpha left out), so that benchmarks and training see
    exactly what users' files give."""
    return torch.from_numpy(read_image(path).rgb.transpose(2, 0, 1).copy())


def load_rgb_u8(path: Path) -> torch.Tensor:
    """`load_rgb` rounded to uint8 (3, H, W): a quarter of the memory for photos held in RAM while training."""
    return load_rgb(path).mul(255).round().to(torch.uint8)


@dataclass
class Batch:
    """One training batch: LR and HR in [0, 1], and the extra inputs of models that take more."""

    lr: torch.Tensor
    hr: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device) -> Batch:
        """The batch on `device` (the tensors themselves when they are there already)."""
        return Batch(self.lr.to(device, non_blocking=True), self.hr.to(device, non_blocking=True),
                     {name: t.to(device, non_blocking=True) for name, t in self.extras.items()})


def data_folders(data: str | Path) -> list[Path]:
    """The training folders of a `data` setting: one folder, or several joined by os.pathsep (`--data` repeated)."""
    return [Path(part) for part in str(data).split(os.pathsep) if part]


class PatchSampler:
    """Draws batches of (LR, HR) float patches from in-memory HR images with a private generator.

    The generator state is part of the training state, so a resumed run draws the same patches.
    Images smaller than the patch are left out and listed in `skipped` (an error when none is left).
    """

    def __init__(self, folders: Path | Sequence[Path], patch: int, scale: int, batch: int, seed: int) -> None:
        if patch % scale:
            raise ValueError(f"patch {patch} is not a multiple of scale {scale}")
        folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
        paths = [path for folder in folders for path in list_images(Path(folder))]
        if not paths:
            raise ValueError(f"{', '.join(map(str, folders))}: no training images found")
        images = [load_rgb_u8(p) for p in paths]
        self.images = [image for image in images if min(image.shape[1:]) >= patch]
        self.skipped = [str(p) for p, image in zip(paths, images) if min(image.shape[1:]) < patch]
        if not self.images:
            raise ValueError(f"every training image is smaller than the {patch}px patch")
        self.patch, self.scale, self.batch = patch, scale, batch
        self.generator = torch.Generator().manual_seed(seed)

    def fork(self, seed: int) -> PatchSampler:
        """A sampler over the same in-memory images with its own generator (no second copy of the data)."""
        other = copy.copy(self)
        other.generator = torch.Generator().manual_seed(seed)
        return other

    def _randint(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def _image(self) -> torch.Tensor:
        return self.images[self._randint(len(self.images))]

    def _crop(self, image: torch.Tensor | None = None) -> torch.Tensor:
        """A random augmented patch of `image` (default: a random image)."""
        image = self._image() if image is None else image
        _, h, w = image.shape
        top, left = self._randint(h - self.patch + 1), self._randint(w - self.patch + 1)
        crop = image[:, top : top + self.patch, left : left + self.patch]
        if self._randint(2):
            crop = crop.flip(-1)
        return torch.rot90(crop, self._randint(4), dims=(-2, -1))

    def next_batch(self) -> Batch:
        """LR and HR float tensors in [0, 1], shapes (B, 3, P/s, P/s) and (B, 3, P, P)."""
        hr = torch.stack([self._crop() for _ in range(self.batch)]).float().div(255)
        lr = quantize(imresize(hr, scale=1 / self.scale))
        return Batch(lr, hr)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
