"""Records what the shipped models output, so that a change of the core can be checked against it.

Run from the repository root with the code whose outputs are the reference:
    python tests/data/make_reference_outputs.py
It writes tests/data/reference_outputs.safetensors: fp32 outputs on the CPU of a 40x32 crop of
examples/baboon_lr.png (top-left corner at 60,20), untiled and with 24 px tiles, and two SRFlow samples.
The recording CPU is kept in the metadata: bit-identity is only promised on the same kind of CPU.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from upscale_cli.archs.base import RunOptions
from upscale_cli.engine import load_upscaler
from upscale_cli.image_io import read_image

ROOT = Path(__file__).resolve().parents[2]
CASES = (  # (key, model, tile, seed, tau)
    ("srresnet_untiled", "srresnet", "none", 0, None),
    ("srresnet_tile24", "srresnet", "24", 0, None),
    ("srgan_untiled", "srgan", "none", 0, None),
    ("srflow_seed3_tau0.8", "srflow", "none", 3, 0.8),
    ("srflow_seed3_tau0.8_tile40", "srflow", "40", 3, 0.8),
)


def reference_input() -> np.ndarray:
    return read_image(ROOT / "examples" / "baboon_lr.png").rgb[20:52, 60:100]


KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")  # what picks oneDNN's convolution kernels


def cpu_name() -> str:
    """The CPU's model name and the vector extensions that decide which kernels run: one "AMD EPYC" name
    covers AVX2-only and AVX-512 parts, whose fp32 convolutions round differently."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    lines = info.splitlines()
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor())
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    return f"{name} ({', '.join(f for f in KERNEL_FLAGS if f in flags)})"


def main() -> None:
    rgb = reference_input()
    tensors = {"input": torch.from_numpy(np.ascontiguousarray(rgb))}
    for key, model, tile, seed, tau in CASES:
        upscaler = load_upscaler(model, device="cpu", precision="fp32")
        out = upscaler.upscale(rgb, rgb.shape[1] * 4, rgb.shape[0] * 4, tile, options=RunOptions(seed, tau))
        tensors[key] = torch.from_numpy(np.ascontiguousarray(out))
    meta = {"cpu": cpu_name(), "torch": torch.__version__,
            "cases": repr(CASES)}
    save_file(tensors, str(ROOT / "tests" / "data" / "reference_outputs.safetensors"), metadata=meta)


if __name__ == "__main__":
    main()
