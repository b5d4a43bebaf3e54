"""What the CPU offers and how the core uses it, read without importing torch (the start-up path needs it)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

# The largest tile `--tile auto` picks. On a CPU more than cache-sized tiles buy nothing but memory: the shipped x4
# network on a 928 x 1024 photo, bf16, 2 AMD EPYC cores, took 24.0 s with 384 or 512 px tiles, 26.2 s untiled,
# 28.4 s with 256 (peak RSS 1.15 / 1.34 / 4.05 / 0.81 GiB; benchmarks/NOTES.md). A GPU gains from every pixel it
# gets at once.
CPU_LARGEST_AUTO_TILE = 512
GPU_LARGEST_AUTO_TILE = 1024
# OpenVINO holds more per window (srresnet_x4, bf16, one window of 416 / 544 px: 1.19 / 1.95 GiB peak RSS) and is
# no faster on larger ones (3.66 s / 7.98 s: 24.9 / 30.4 s per useful input megapixel with 16 px overlaps).
OPENVINO_LARGEST_AUTO_TILE = 384


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True on CPUs with AMX-BF16 or AVX-512 BF16, where bf16 matmuls run natively and fast."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def nvidia_gpu_present() -> bool:
    """Whether the NVIDIA driver lists a GPU: `--device auto` may then mean CUDA, which only torch can run."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())
